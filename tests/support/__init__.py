"""Plain helpers the test suites share: builders, constants, waiting and reading helpers.

tests/ is on sys.path, so a test imports them by name (`from support.journals import ev`).
Fixtures stay in the conftest.py files, and tests take them as fixtures, never by import.
"""

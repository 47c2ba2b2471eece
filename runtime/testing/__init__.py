"""Testing a Memoir app: testkits, fixtures (the `memoir` pytest plugin) and waits for the
eventually-consistent parts, in their own namespace as `trio.testing` is.

`EntityTestKit`, `ViewTestKit` and `ConsumerTestKit` test one entity, view or consumer with
no I/O; `served` and `caught_up` test the app as `memoir run` serves it. The top layer: it
uses the whole runtime, and nothing in the runtime uses it. The plugin module alone imports
pytest; everything else here works in any test runner.
"""

from .entity_kit import EntityTestKit
from .harness import served
from .own_task import InOwnTask
from .stream_kits import ConsumerTestKit, SentCommand, ViewTestKit
from .waits import caught_up

__all__ = ["ConsumerTestKit", "EntityTestKit", "InOwnTask", "SentCommand", "ViewTestKit", "caught_up", "served"]

# Reprs, docs and tracebacks say `runtime.testing.X`, as trio.testing's do.
for _name in __all__:
    globals()[_name].__module__ = "runtime.testing"
del _name

"""`memoir run` as a process: settings, the data directory and its identity, logs, the event loop.

It assembles the embeddable service (`runtime.serve.service`) the way a deployment runs it.
"""

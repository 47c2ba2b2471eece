"""The serve layer, in three rooms, each above the last.

- `service`: the embeddable service — the runtime with its publisher, views, consumers and
  timers; the front doors for NATS and HTTP; the client; admin, auth, metrics; the cluster.
- `process`: `memoir run` as a process — settings, the data dir, its identity, logs, the loop.
- `cli`: the `memoir` command line, one module per command group.

A room imports only from itself and the rooms below it; CI checks it (import-linter).
"""

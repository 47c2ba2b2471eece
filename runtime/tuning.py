"""Process tuning for a long-running runtime.

CPython's cyclic collector runs a young-generation pass every 700 allocations and,
every so often, a full pass over every live object. A runtime holds up to
`max_live_actors` actors with their states and command-id tables, so those full
passes grow with the number of entities and land on random commands as latency
spikes. Freezing what exists after start-up and collecting far less often keeps
the collector for what it is for (cycles), not for scanning actors.

`memoir run` calls this; an application embedding the runtime can call it once
after start-up. It changes process-wide settings, so it is never called implicitly.
"""

from __future__ import annotations

import gc


def tune_gc(young: int = 50_000) -> None:
    gc.collect()
    gc.freeze()  # everything alive now (imports, the app, connections) is never scanned again
    gc.set_threshold(young, 50, 100)

"""Views that keep running until asked to rebuild: a replay stops one, rebuilds it, and it runs again.

One keeper serves a service's views and a region's. A replay asked while the view is between
runs (failed, waiting to be restarted) is kept for the next run, which rebuilds first: a cancel
of a scope that no longer runs would otherwise be lost, and the replay would wait for ever.
"""

from __future__ import annotations

import anyio

from ...streams.view import ViewRunner


class ViewKeeper:
    def __init__(self) -> None:
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._rebuilds: dict[str, anyio.Event] = {}

    def running(self, name: str) -> bool:
        """Whether the view runs here now (not between a failure and its restart)."""
        return name in self._scopes

    async def keep(self, runner: ViewRunner) -> None:
        """Run the view; rebuild it whenever `rebuild` asks, and run it again."""
        name = runner.view.name
        try:
            while True:
                if name not in self._rebuilds:  # a replay asked between runs: rebuild first
                    scope = self._scopes[name] = anyio.CancelScope()
                    with scope:
                        await runner.run()
                rebuilt = self._rebuilds.pop(name, None)  # reached only when `rebuild` cancelled `scope`
                if rebuilt is None:
                    return
                try:
                    await runner.rebuild()
                finally:
                    rebuilt.set()
        finally:
            self._scopes.pop(name, None)

    async def rebuild(self, name: str) -> None:
        """Stop the view, rebuild it and let it run again; returns once rebuilt. Between runs, the
        next run rebuilds first."""
        rebuilt = self._rebuilds.get(name)
        if rebuilt is None:
            rebuilt = self._rebuilds[name] = anyio.Event()
            scope = self._scopes.get(name)
            if scope is not None:
                scope.cancel()
        await rebuilt.wait()

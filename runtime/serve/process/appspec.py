"""`module:attribute` -> the App it names, found the way `python -m` and uvicorn find it.

A console script's import path holds the script's own directory, not the one the user
stands in, so `memoir run shop:app` beside shop.py would not find shop. `cwd_on_path()`
puts the working directory first, as `python -m` does; an import that still fails says
where it looked and what to do.
"""

from __future__ import annotations

import importlib
import os
import sys

from ...model.app import App
from ...model.errors import ConfigError


def cwd_on_path() -> None:
    """Put the working directory first on sys.path, once."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_app(spec: str) -> App:
    """The App `spec` (`module:attribute`) names; ConfigError saying what to do if it cannot be found."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"app must be given as module:attribute (e.g. shop:app), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):  # the app's own module
            raise ConfigError(
                f"cannot import {module_name!r} for app {spec!r}: no module {exc.name!r} in {os.getcwd()} or the"
                f" installed packages (run memoir in the directory that holds {module_name.replace('.', '/')}.py,"
                " or add its directory to PYTHONPATH)"
            ) from None
        raise ConfigError(f"cannot import {module_name!r} for app {spec!r}: {exc} (a dependency it imports)") from None
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for app {spec!r}: {exc}") from None
    except ConfigError as exc:  # the App was built at import time and found a mistake in an entity
        raise ConfigError(f"app {spec!r}: {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{spec!r} is not a memoir App: module {module_name!r} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise ConfigError(f"{spec!r} is not a memoir App (got {type(app).__name__})")
    return app

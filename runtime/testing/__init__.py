"""Testing a Memoir app with pytest: fixtures (the `memoir` pytest plugin) and waits for the
eventually-consistent parts.

The top layer: it uses the whole runtime, and nothing in the runtime uses it. The plugin
module alone imports pytest; everything else here works in any test runner.
"""

from .harness import served
from .held import Held
from .waits import caught_up

__all__ = ["Held", "caught_up", "served"]

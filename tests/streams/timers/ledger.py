"""What the transfer tests of `entities/bank.py` expect once every transfer has ended."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def expected_balances(
    outcomes: Mapping[int, Any], transfer: Callable[[int], dict[str, object]], accounts: int, opening: int
) -> dict[str, int]:
    """The balances the transfers in `outcomes` leave, after checking each ended as it must:
    refunded when its target was the closed account, done otherwise."""
    expected = {f"a{n}": opening for n in range(accounts)} | {"closed": 0}
    for i, out in outcomes.items():
        t = transfer(i)
        refunded = t["target"] == "closed"
        assert (out["status"], out["state"]["outcome"]) == ("ended", "refunded" if refunded else "done"), i
        if not refunded:
            expected[str(t["source"])] -= int(t["amount"])  # type: ignore[call-overload]
            expected[str(t["target"])] += int(t["amount"])  # type: ignore[call-overload]
    return expected

"""Scripted changes of the simulated exchange, each undoable so every run starts from the same pre-state."""

from __future__ import annotations

import random
import urllib.request
from typing import Any

from tokenwatch.simulator import Simulator

STEADY_FRACTION = 0.01  # contracts whose listing metadata changes in a steady sync
CHURN_FRACTION = 0.02  # new listings, and as many delistings, in a churn sync
ACTIVE_PATH = "/api/v1/contracts/active"


def _pick(symbols: list[str], fraction: float, seed: int) -> list[str]:
    count = max(1, round(len(symbols) * fraction))
    return sorted(random.Random(seed).sample(sorted(symbols), count))


def warm_body(sim: Simulator) -> None:
    """GET the active list once, so the simulator has encoded it before a measured fetch."""
    with urllib.request.urlopen(sim.url + ACTIVE_PATH, timeout=60) as answer:  # noqa: S310 - our local server
        answer.read()


class SteadyChange:
    """1 % of contracts get new listing metadata (tickSize on half, takerFeeRate on the other half)."""

    def __init__(self, sim: Simulator, seed: int) -> None:
        self.sim = sim
        self.symbols = _pick(sim.symbols(), STEADY_FRACTION, seed)
        self.original: dict[str, dict[str, Any]] = {}
        for index, symbol in enumerate(self.symbols):
            contract = sim.contract(symbol)
            key = "tickSize" if index % 2 == 0 else "takerFeeRate"
            self.original[symbol] = {key: contract[key]}

    def apply(self, step: int = 0) -> None:
        """Change the metadata (a different value for each step, so consecutive steps all change it)."""
        for symbol, fields in self.original.items():
            ((key, value),) = fields.items()
            if key == "tickSize":
                new = float(value) * (10.0 if step % 2 == 0 else 100.0)
            else:
                new = round(float(value) + 0.0001 * (1 + step % 5), 6)
            self.sim.set_params(symbol, **{key: new})
        self.sim.tick(1.0)

    def revert(self) -> None:
        """Put the original metadata back (market data stays moved: the registry does not store it)."""
        for symbol, fields in self.original.items():
            self.sim.set_params(symbol, **fields)


class ChurnChange:
    """2 % new listings and 2 % delistings."""

    def __init__(self, sim: Simulator, seed: int) -> None:
        self.sim = sim
        self.gone = _pick(sim.symbols(), CHURN_FRACTION, seed + 1)
        self.listed: list[str] = []

    def apply(self, step: int = 0) -> None:
        """List new contracts and remove others (step is unused: each run lists fresh symbols)."""
        self.listed = self.sim.list_new(len(self.gone))
        self.sim.delist(self.gone)

    def revert(self) -> None:
        """Remove the new listings again and bring the delisted ones back."""
        self.sim.delist(self.listed)
        self.sim.relist(self.gone)
        self.listed = []

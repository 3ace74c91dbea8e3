"""A local KuCoin-futures-compatible exchange: realistic contracts, scripted listings and faults."""

from tokenwatch.simulator.generator import generate_contracts, market_tick, new_contract
from tokenwatch.simulator.server import Simulator, SimulatorError, serve_forever_cli

__all__ = ["Simulator", "SimulatorError", "generate_contracts", "market_tick", "new_contract", "serve_forever_cli"]

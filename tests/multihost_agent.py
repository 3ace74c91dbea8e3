"""The multi-host test's hands on the store host: the simulator, and reads of PostgreSQL and Redis from there.

The test's own process cannot reach the namespaces' addresses, so it runs this inside the store namespace
(`python -m tests.multihost_agent ADDRESS REDIS_URL DATABASE_URL`) and talks to it in JSON lines on stdin/stdout.
Requests: {"op": "url"}, {"op": "list_new", "count": N}, {"op": "delist", "symbols": [...]}, {"op": "state"}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import redis
import sqlalchemy as sa

from tokenwatch.cache import keys
from tokenwatch.simulator import Simulator


def observe(client: redis.Redis, engine: sa.Engine, simulator: Simulator) -> dict[str, Any]:
    """Everything the test checks: the registry, its history, the stream, the cache, the syncs, the exchange."""
    with engine.connect() as connection:
        active = [row[0] for row in connection.execute(sa.text("SELECT symbol FROM tokens WHERE status = 'active'"))]
        history = [list(row) for row in connection.execute(sa.text(
            "SELECT id, symbol, event_type, sync_id FROM token_history ORDER BY id"))]
        syncs = [list(row) for row in connection.execute(sa.text(
            "SELECT sync_id, started_at, status, error FROM sync_runs ORDER BY started_at"))]
        registry = connection.execute(sa.text("SELECT registry_id FROM registry_state")).scalar_one()
    stream = [[fields[b"registry"].decode(), int(fields[b"history_id"])]
              for _, fields in client.xrange(keys.EVENTS)]
    cache = sorted(symbol.decode() for symbol in client.hkeys(keys.TOKENS))
    return {"active": sorted(active), "history": history, "syncs": syncs, "registry": registry, "stream": stream,
            "cache": cache, "exchange": sorted(simulator.symbols())}


def main() -> None:
    """Serve requests until stdin closes."""
    address, redis_url, database_url = sys.argv[1:4]
    simulator = Simulator(port=0, contracts=60, seed=7, host=address).start()
    client = redis.Redis.from_url(redis_url)
    engine = sa.create_engine(database_url)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request["op"]
            reply: Any
            if op == "url":
                reply = simulator.url
            elif op == "list_new":
                reply = simulator.list_new(count=int(request["count"]))
            elif op == "delist":
                simulator.delist(list(request["symbols"]))
                reply = request["symbols"]
            elif op == "tick":
                reply = simulator.tick()
            elif op == "state":
                reply = observe(client, engine, simulator)
            else:
                raise ValueError(f"unknown op {op}")
            print(json.dumps(reply), flush=True)
    finally:
        simulator.stop()
        engine.dispose()


if __name__ == "__main__":
    main()

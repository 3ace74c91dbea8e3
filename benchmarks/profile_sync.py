"""Profile one warm sync with cProfile: ``python -m benchmarks.profile_sync [--size N] [--scenario steady|churn]``.

A baseline sync and an unchanged sync warm this process like a running worker; the exchange is then scripted
(benchmarks/exchange.py) and the next sync runs under cProfile. Prints the top functions by cumulative and by
own time, and the sync's timings. Uses a private Redis and a temp dir, like benchmarks.run.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import exchange
from tokenwatch import pipeline, process
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator

SEED = 20261126


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--scenario", choices=("steady", "churn"), default="steady")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    logging.getLogger("tokenwatch").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="twprof-"))
    try:
        with EmbeddedRedis(str(workdir / "redis.sock"), str(workdir)) as server, \
                Simulator(port=0, contracts=args.size, seed=SEED) as sim:
            client = process.current().redis(server.url)  # the client the workers use
            client.config_set("save", "")
            settings = Settings(kucoin_url=sim.url, database_url=f"sqlite:///{workdir / 'tokens.db'}",
                                redis_url=server.url, http_retries=0)
            for _ in range(2):
                pipeline.sync_inline(settings)
            change = exchange.SteadyChange(sim, SEED) if args.scenario == "steady" else exchange.ChurnChange(sim, SEED)
            change.apply(0)
            exchange.warm_body(sim)
            profiler = cProfile.Profile()
            profiler.enable()
            outcome = pipeline.sync_inline(settings)
            profiler.disable()
        print(f"{args.scenario} sync of {args.size:,} contracts under cProfile: {outcome.to_json()['timings_ms']}")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

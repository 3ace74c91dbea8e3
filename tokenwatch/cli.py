"""The `tokenwatch` command: run, sync, tokens, history, events, status, db check, simulate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import redis

from tokenwatch.clock import HOUR_MS, now_ms
from tokenwatch.errors import ConfigError, TokenwatchError, one_line
from tokenwatch.outcome import Outcome, SyncStatus
from tokenwatch.process import current
from tokenwatch.settings import Settings, get_settings
from tokenwatch.syncstate import new_sync_id

log = logging.getLogger("tokenwatch")


def _configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )


def _iso(ms: Any) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str, sort_keys=False))


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from tokenwatch.runner import Runner  # noqa: PLC0415

    return Runner(settings).run()


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch import pipeline  # noqa: PLC0415 - keep `tokenwatch --help` fast

    outcome = pipeline.sync_inline(settings) if args.inline else _sync_through_broker(settings, args.timeout)
    if args.json:
        _print_json(outcome.to_json())
    else:
        t = outcome.timings_ms
        print(f"sync {outcome.sync_id}: {outcome.status} in {t.get('total', 0):.1f} ms")
        print("  " + ", ".join(f"{k} {v}" for k, v in outcome.counts.items()))
        if outcome.error:
            print(f"  {outcome.error}")
    return 1 if outcome.status == "failed" else 0


def _sync_through_broker(settings: Settings, timeout_s: float) -> Outcome:
    from celery.exceptions import TimeoutError as CeleryTimeout  # noqa: PLC0415

    from tokenwatch.cache.redis_client import make_redis  # noqa: PLC0415
    from tokenwatch.tasks.sync import sync_chain, wait_for_outcome  # noqa: PLC0415

    sync_id = new_sync_id()
    # Celery's own client retries an unreachable broker for about 20 s whatever our timeout; ask first.
    probe = make_redis(settings.redis_config(), timeout_s=2)
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        error = f"broker unreachable ({type(exc).__name__}): start tokenwatch run, or use --inline"
        return Outcome(sync_id, SyncStatus.FAILED, error=error)
    finally:
        probe.close()
    try:
        result = sync_chain(sync_id).apply_async(expires=timeout_s)
        payload = wait_for_outcome(result, timeout_s)
    except CeleryTimeout:
        error = f"no outcome within {timeout_s:g} s: is a worker running (tokenwatch run)?"
        return Outcome(sync_id, SyncStatus.FAILED, error=error, timings_ms={"total": float(timeout_s * 1000)})
    except (redis.RedisError, OSError) as exc:
        error = f"broker unreachable ({type(exc).__name__}): start tokenwatch run, or use --inline"
        return Outcome(sync_id, SyncStatus.FAILED, error=error)
    except Exception as exc:  # a task raised: its message is the operator's one line
        return Outcome(sync_id, SyncStatus.FAILED, error=one_line(exc))
    return Outcome.from_json(payload)


def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.db.queries import list_tokens  # noqa: PLC0415

    rows = list_tokens(current().engine(settings.database_url), args.status, now_ms=now_ms(),
                       window_ms=int(settings.new_listing_window_h * HOUR_MS))
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'SYMBOL':<16} {'STATUS':<9} {'CONTRACT':<12} {'TYPE':<7} {'BASE':<10} {'QUOTE':<6} NEW  LISTED")
    for r in rows:
        print(f"{r['symbol']:<16} {r['status']:<9} {r['contract_status']:<12} {r['contract_type'] or '':<7} "
              f"{r['base_currency'] or '':<10} {r['quote_currency'] or '':<6} {'yes' if r['is_new'] else 'no ':<4} "
              f"{_iso(r['listed_at'])}")
    print(f"{len(rows)} tokens")
    return 0


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.db.queries import history  # noqa: PLC0415

    rows = history(current().engine(settings.database_url), args.symbol, args.limit)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"{_iso(r['event_time'])}  {r['symbol']:<16} {r['event_type']:<20} "
              f"{json.dumps(r['details'], sort_keys=True)}")
    print(f"{len(rows)} events")
    return 0


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.cache import keys  # noqa: PLC0415

    client = current().redis(settings.redis_config())

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def show(entry_id: Any, fields: Any) -> str:
        event: dict[str, Any] = {text(k): text(v) for k, v in fields.items()}
        event["details"] = json.loads(event.get("details") or "null")
        # Redis keeps text; the JSON gives numbers as numbers, like `history --json` (README: The registry).
        for key in ("event_time", "history_id"):
            if str(event.get(key, "")).isdigit():
                event[key] = int(event[key])
        event["id"] = text(entry_id)
        if args.json:
            _print_json(event)
        else:
            print(f"{_iso(event['event_time'])}  {event['symbol']:<16} {event['event_type']:<20} "
                  f"{json.dumps(event['details'], sort_keys=True)}", flush=True)
        return str(event["id"])

    try:
        last = "$"
        recent: Any = client.xrevrange(keys.EVENTS, count=args.limit)
        for entry_id, fields in reversed(recent):
            last = show(entry_id, fields)
        while args.follow:
            answer: Any = client.xread({keys.EVENTS: last}, block=1000)
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    last = show(entry_id, fields)
    except (redis.RedisError, OSError) as exc:
        print(f"tokenwatch: Redis unreachable ({type(exc).__name__}): is tokenwatch run running?", file=sys.stderr)
        return 1
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.status import run_status  # noqa: PLC0415

    return run_status(settings, current(), as_json=args.json, ack=args.ack)


def cmd_db_check(settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.db_check import run_db_check  # noqa: PLC0415

    return run_db_check(settings, as_json=args.json)


def cmd_db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    from tokenwatch.db.engine import upgrade_registry  # noqa: PLC0415

    before, after = upgrade_registry(settings.database_url)
    if before == after:
        print(f"registry schema already at {after}: nothing to do")
    elif before is None:
        print(f"registry created at schema {after}")
    else:
        print(f"registry schema upgraded {before} -> {after}")
    return Exit.OK


def cmd_simulate(_settings: Settings, args: argparse.Namespace) -> int:
    from tokenwatch.simulator.server import SimulatorError, serve_forever_cli  # noqa: PLC0415

    try:
        serve_forever_cli(port=args.port, contracts=args.contracts, seed=args.seed)
    except SimulatorError as exc:
        print(f"tokenwatch: {exc}", file=sys.stderr)
        return Exit.FAILED
    return 0


class Exit(IntEnum):
    """The exit status of every command (README: Command line)."""

    OK = 0
    FAILED = 1  # the command could not do its job: a sync failed, the registry or Redis could not be read
    ALERT = 2  # `status` only: the registry was read and an alert stands
    USAGE = 64  # the command line is wrong (sysexits' EX_USAGE)
    CONFIG = 78  # a TOKENWATCH_* setting is invalid (sysexits' EX_CONFIG)


class Parser(argparse.ArgumentParser):
    """argparse, exiting with Exit.USAGE on a wrong command line (argparse's own 2 would read as an alert)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(Exit.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="tokenwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="Redis (embedded if needed), a worker, beat and Flower")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sync", help="one sync now")
    p.add_argument("--inline", action="store_true", help="run every stage in this process")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers' outcome")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("tokens", help="list tokens from the registry")
    p.add_argument("--status", choices=["active", "delisted", "new", "all"], default="active")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("history", help="history events, newest first")
    p.add_argument("symbol", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("events", help="the event stream tokenwatch:events, oldest of the last N first")
    p.add_argument("--follow", action="store_true", help="keep printing new events as they are committed")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("status", help="last syncs, timings, counts, queues and alerts (exit 2 while one stands)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ack", action="store_true",
                   help="acknowledge the failures so far: failure_rate counts only the syncs after now")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("db", help="database upkeep: schema upgrade and checks")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("upgrade", help="bring the registry's schema to this release's (creates it if missing)")
    p.set_defaults(func=cmd_db_upgrade)
    p = db_sub.add_parser("check", help="integrity, file sizes, row counts and the plan of every query")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_db_check)

    p = sub.add_parser("simulate", help="a local KuCoin-compatible server for offline use")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--contracts", type=int, default=530)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokenwatch` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = get_settings()
        return int(args.func(settings, args))
    except ConfigError as exc:
        print(f"tokenwatch: {exc}", file=sys.stderr)
        return Exit.CONFIG
    except TokenwatchError as exc:
        print(f"tokenwatch: {exc}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # whatever it is, the operator gets one line; -v shows the traceback
        log.debug("%s failed", args.command, exc_info=True)
        print(f"tokenwatch: {describe_failure(exc)}", file=sys.stderr)
        return Exit.FAILED


def describe_failure(exc: BaseException) -> str:
    """An unexpected failure of a command as one line that says where it came from and what to do."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415 - keep `tokenwatch --help` fast

    if isinstance(exc, SQLAlchemyError):
        return (f"registry database unreadable: {one_line(getattr(exc, 'orig', None) or exc)} "
                "(`tokenwatch db check` tells more; restore a backup if the file is damaged)")
    if isinstance(exc, redis.RedisError | ConnectionError):
        return f"Redis unreachable: {one_line(exc)} (is `tokenwatch run` running, or TOKENWATCH_REDIS_URL right?)"
    return f"{type(exc).__name__}: {one_line(exc)} (run with -v for the traceback)"


if __name__ == "__main__":
    sys.exit(main())

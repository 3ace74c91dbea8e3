"""What `tokenwatch run` checks before it starts anything: its data folder and registry are its own, no earlier
run's processes live on, and the ports it will listen on are free.

The claim is an exclusive `flock` on ``<data folder>/run.lock`` (and, for SQLite, on ``<database>.run.lock``),
held for the run's life: the kernel drops it when the run dies, however it dies, so a stale lock cannot block the
next run. On PostgreSQL the registry's claim is a session advisory lock instead: shared among nodes (runs that
share one Redis), exclusive for a run with an embedded Redis. The data folder's lock file also records the
run's children, so the next run can tell that an earlier run's processes are still alive (and which) instead of
colliding with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tokenwatch.db.engine import PG_CONNECT_TIMEOUT_S, PG_KEEPALIVE_OPTIONS, sqlite_path
from tokenwatch.errors import RunRefusedError, one_line
from tokenwatch.settings import Settings

RUN_LOCK = "run.lock"
# PostgreSQL's advisory lock key for `tokenwatch run` on a registry (advisory keys are per database).
RUN_ADVISORY_KEY = 0x74776E6F6465  # "twnode"
# An earlier run's children get this long to finish exiting (they are told to when it dies) before we refuse.
LEFTOVER_WAIT_S = 10.0
HOLDER_WAIT_S = 1.0  # the holder writes its pid right after it takes the lock


@dataclass
class Claim:
    """The run's hold on its data folder and registry; released when the run exits, however it exits."""

    record: IO[str]
    held: list[IO[str]] = field(default_factory=list)
    session: sa.Connection | None = None  # PostgreSQL: the connection holding the registry's advisory lock

    def note_children(self, children: Mapping[str, int]) -> None:
        """Record the run's live children (name: pid), for the next run to find any it leaves behind."""
        entry = {"pid": os.getpid(), "started": start_time(os.getpid()),
                 "children": {name: [pid, start_time(pid)] for name, pid in children.items()}}
        self.record.seek(0)
        self.record.truncate()
        self.record.write(json.dumps(entry))
        self.record.flush()

    def release(self) -> None:
        """Drop the locks (closing the files does it); the record stays for the next run to read."""
        for handle in (*self.held, self.record):
            handle.close()
        if self.session is not None:
            self.session.close()
            self.session.engine.dispose()


def claim(settings: Settings) -> Claim:
    """Lock the data folder (and an SQLite registry) for this run, or raise RunRefusedError naming the holder."""
    os.makedirs(settings.data_dir, exist_ok=True)
    record = _lock(os.path.join(settings.data_dir, RUN_LOCK), f"the data folder {settings.data_dir!r}")
    previous = _read(record)
    held: list[IO[str]] = []
    try:
        database = sqlite_path(settings.database_url)
        if database is not None:
            # Two runs on two data folders must not share one SQLite registry: each would bring its own Redis,
            # so their sync locks could not see each other.
            registry = _lock(database + ".run.lock", f"the registry {os.path.basename(database)!r}")
            held.append(registry)
            registry.seek(0)
            registry.truncate()
            registry.write(json.dumps({"pid": os.getpid()}))
            registry.flush()
        _refuse_leftovers(previous)
        session = None if database is not None else _claim_server_registry(settings)
    except BaseException:
        for handle in (*held, record):
            handle.close()
        raise
    taken = Claim(record, held, session)
    taken.note_children({})
    return taken


def _claim_server_registry(settings: Settings) -> sa.Connection:
    """Hold PostgreSQL's session advisory lock on the registry: shared by nodes (runs on one shared Redis),
    exclusive for a run with an embedded Redis, whose sync lock no other run could see."""
    url = sa.make_url(settings.database_url)
    where = f"the registry {url.database!r} on {url.host or 'localhost'}:{url.port or 5432}"
    # The server notices a vanished node within about 25 s and drops its lock; AUTOCOMMIT keeps the session
    # out of any transaction for the run's life.
    engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={
        "connect_timeout": PG_CONNECT_TIMEOUT_S, "options": PG_KEEPALIVE_OPTIONS})
    try:
        session = engine.connect()
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise RunRefusedError(f"cannot reach {where}: {one_line(exc.orig or exc)}") from None
    alone = settings.redis_url is None
    taken = session.execute(sa.text(f"SELECT pg_try_advisory_lock{'' if alone else '_shared'}(:key)"),
                            {"key": RUN_ADVISORY_KEY}).scalar_one()
    if taken:
        return session
    session.close()
    engine.dispose()
    if alone:
        raise RunRefusedError(
            f"{where} is in use by another tokenwatch run, and a run with an embedded Redis must have its registry "
            "to itself: to run several nodes, set TOKENWATCH_REDIS_URL to one Redis that every node shares")
    raise RunRefusedError(
        f"{where} is in use by a tokenwatch run with an embedded Redis, whose sync lock no node can see: set "
        "TOKENWATCH_REDIS_URL on that run too, to the Redis this node uses")


def _lock(path: str, what: str) -> IO[str]:
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        who = f"pid {holder}" if holder else "another process"
        raise RunRefusedError(
            f"{what} is in use by another tokenwatch run ({who}): stop that run first, or give this one its own "
            "TOKENWATCH_DATA_DIR and TOKENWATCH_DATABASE_URL"
        ) from None
    return handle


def _holder(handle: IO[str]) -> int | None:
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        pid = _read(handle).get("pid")
        if isinstance(pid, int) or time.monotonic() > deadline:
            return pid if isinstance(pid, int) else None
        time.sleep(0.05)


def _read(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        value = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def start_time(pid: int) -> int | None:
    """When pid started (clock ticks since boot): with the pid, it names one process, not a reused number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(children: Mapping[str, Any]) -> dict[str, int]:
    alive = {}
    for name, entry in children.items():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and entry[1] is not None:
            pid, started = entry
            if start_time(pid) == started and "zombie" not in _state(pid):
                alive[name] = pid
    return alive


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    return ""


def _refuse_leftovers(previous: Mapping[str, Any]) -> None:
    children = previous.get("children")
    if not isinstance(children, dict):
        return
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    alive = _alive(children)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = _alive(children)
    if alive:
        named = ", ".join(f"{name} (pid {pid})" for name, pid in alive.items())
        pids = " ".join(str(pid) for pid in alive.values())
        raise RunRefusedError(
            f"processes of an earlier tokenwatch run on this data folder are still alive: {named}; "
            f"stop them (`kill {pids}`) and start again"
        )


@dataclass(frozen=True)
class Port:
    """A port the run will listen on, and the setting that moves it."""

    label: str
    address: str
    port: int
    setting: str


def ports(settings: Settings) -> list[Port]:
    """The TCP ports `tokenwatch run` listens on."""
    from tokenwatch.metrics import ADDRESS  # noqa: PLC0415 - keeps prometheus_client out of the CLI's start

    wanted = [Port("Flower", settings.flower_address, settings.flower_port, "TOKENWATCH_FLOWER_PORT")]
    if settings.metrics_port:
        wanted.append(Port("the metrics endpoint", ADDRESS, settings.metrics_port, "TOKENWATCH_METRICS_PORT"))
    return wanted


def check_ports(settings: Settings) -> None:
    """Raise RunRefusedError naming the first port that is taken, and what holds it when this host can tell."""
    for wanted in ports(settings):
        if not _free(wanted.address, wanted.port):
            holder = listener(wanted.port)
            by = f" by pid {holder[0]} ({holder[1]})" if holder else ""
            raise RunRefusedError(
                f"port {wanted.port} on {wanted.address} for {wanted.label} is taken{by}: stop what holds it, "
                f"or set {wanted.setting} to a free port"
            )


def _free(address: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RunRefusedError(f"cannot listen on {address}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers themselves bind: a port left in TIME_WAIT by a stopped run is free to them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError:
            return False
    return True


def listener(port: int) -> tuple[int, str] | None:
    """The pid and command of a process listening on TCP port, when /proc shows it (Linux, same user)."""
    inodes = set(_listening_inodes(port))
    if not inodes:
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        pid = int(fd_dir.parent.name)
                        return pid, _command(pid)
    return None


def _command(pid: int) -> str:
    """What a process runs, shortly: its program's name and first arguments (no directories)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    text = " ".join(" ".join([os.path.basename(argv[0]), *argv[1:6]]).split())  # one line, whatever the args hold
    return text if len(text) <= 80 else text[:79] + "…"


def _listening_inodes(port: int) -> Iterator[str]:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    yield fields[9]

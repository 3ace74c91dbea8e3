"""Process state a measurement needs: memory readings, and the write statements' first-use warm-up."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import orjson

from tokenwatch.clock import Timer, now_ms
from tokenwatch.db.queries import load_head
from tokenwatch.db.writer import _apply
from tokenwatch.domain.contracts import METADATA_COLUMNS
from tokenwatch.domain.diff import Event, Plan
from tokenwatch.domain.registry import ACTIVE, RegistryRow
from tokenwatch.outcome import SyncStatus, zero_counts
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings


def vm_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile... of a process in kB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
                found[name] = int(value.split()[0])
    return found


def warm_writer(settings: Settings, state: ProcessState) -> float:
    """Run every statement of the write once, in transactions rolled back; returns the milliseconds it took.

    SQLAlchemy compiles a statement on its first use in an engine (the upsert has 54 columns and a 53-term
    WHERE). A worker that has synced before has them compiled; a fresh child would pay it inside the measured
    write (a no-change previous sync compiles no upsert).
    """
    absent = "BENCHWARMUP"
    row = RegistryRow(absent, ACTIVE, "Open", False, None, 0, 0, None, (None,) * len(METADATA_COLUMNS))
    timer = Timer()
    engine = state.engine(settings.database_url, writer=True)
    revision = load_head(engine).revision
    for missing in ([], [absent]):
        plan = Plan(
            sync_id="bench-warmup", now_ms=now_ms(), base_revision=revision, status=SyncStatus.OK,
            upserts=[row], delist=[absent], pending=[absent], missing=missing,
            events=[Event(absent, "listed", {})], counts=zero_counts(),
        )
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                _apply(conn, plan, settings.batch_size, plan.now_ms, {})
            finally:
                transaction.rollback()
    return timer.ms()


class JsonTimer:
    """Stands in for the orjson module inside one pipeline module and adds up the time spent in ``loads``.

    Only ``loads`` is wrapped (called once per sync there); every other attribute is orjson's own, so the
    per-contract ``dumps`` calls cost exactly what they cost without it.
    """

    def __init__(self) -> None:
        self.ms = 0.0
        self.dumps = orjson.dumps
        self.JSONDecodeError = orjson.JSONDecodeError

    def loads(self, data: Any) -> Any:
        """orjson.loads, timed."""
        started = time.perf_counter()
        try:
            return orjson.loads(data)
        finally:
            self.ms += (time.perf_counter() - started) * 1000.0

    def __getattr__(self, name: str) -> Any:
        return getattr(orjson, name)

    @classmethod
    def install(cls, module: ModuleType) -> JsonTimer:
        """Replace the module's ``orjson`` with a new timer (in this process only)."""
        timer = cls()
        vars(module)["orjson"] = timer
        return timer


class CallTimer:
    """Wraps module-level functions of one module and adds up the time spent in them (in this process only).

    Used on domain.contracts' JSON decoders: the envelope split (once per sync) and the per-contract decode
    (once per contract; the wrapper adds well under a microsecond to each call), including the decoders that
    ``fields_decoder`` makes for the answer's key order (``factories``: functions whose results are timed).
    """

    def __init__(self) -> None:
        self.ms = 0.0

    def _wrap(self, function: Any) -> Any:
        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                self.ms += (time.perf_counter() - started) * 1000.0
        return timed

    @classmethod
    def install(cls, module: ModuleType, *names: str, factories: tuple[str, ...] = ()) -> CallTimer:
        """Replace each named function of the module with a timed one, and each factory with one whose
        functions are timed."""
        timer = cls()
        for name in names:
            vars(module)[name] = timer._wrap(getattr(module, name))
        for name in factories:
            factory = getattr(module, name)
            vars(module)[name] = lambda *args, factory=factory: timer._wrap(factory(*args))
        return timer

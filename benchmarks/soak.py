"""Memory soak: many consecutive steady syncs in one process (the child), RSS tracked after each.

The simulator lives in the parent; this process scripts it through its control API (`/_sim/...`).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import requests

from benchmarks.child import Pause
from benchmarks.warm import vm_status
from tokenwatch import pipeline
from tokenwatch.settings import Settings

WARMUP_SYNCS = 20
# Growth compares the median RSS of a window after the warm-up with that of the last window: one reading
# can land on a transient buffer (a 15 MB one came and went between consecutive syncs of 5,000 contracts).
WINDOW_SYNCS = 50
CONTROL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class SoakJob:
    """N steady syncs of the simulator's contracts; `changes` maps symbol to the metadata key to move."""

    syncs: int
    sim_url: str
    redis_url: str
    db_path: str
    changes: dict[str, tuple[str, float]]


@dataclass(slots=True)
class SoakResult:
    """RSS after each sync (MB) and the syncs' outcomes."""

    rss_mb: list[float] = field(default_factory=list)
    anon_mb: list[float] = field(default_factory=list)  # RssAnon: heap and anonymous maps, no mapped files
    totals_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    def growth(self, series: list[float] | None = None) -> tuple[float, float, float]:
        """(median of the first window after the warm-up, median of the last window, growth in %) of series
        (default: RSS); shorter runs use windows of a quarter of the syncs after the warm-up."""
        after = after_warmup(self.rss_mb if series is None else series)
        window = window_size(len(after))
        start, end = statistics.median(after[:window]), statistics.median(after[-window:])
        return start, end, 100.0 * (end - start) / start


def after_warmup(values: list[float]) -> list[float]:
    """The readings after the warm-up syncs (all of them in a run no longer than the warm-up)."""
    return values[WARMUP_SYNCS:] if len(values) > WARMUP_SYNCS else values


def window_size(readings: int) -> int:
    """How many readings each end of the growth comparison takes."""
    return max(1, min(WINDOW_SYNCS, readings // 4))


def _script(session: requests.Session, job: SoakJob, step: int) -> None:
    for symbol, (key, original) in job.changes.items():
        value = original * (10.0 if step % 2 == 0 else 100.0) if key == "tickSize" else original + 1e-4 * (
            1 + step % 5)
        answer = session.post(f"{job.sim_url}/_sim/set_params", json={"symbol": symbol, key: value},
                              timeout=CONTROL_TIMEOUT_S)
        answer.raise_for_status()
    session.post(f"{job.sim_url}/_sim/tick", json={"fraction": 1.0}, timeout=CONTROL_TIMEOUT_S).raise_for_status()


def soak(job: SoakJob, pause: Pause) -> SoakResult:
    """A baseline, then job.syncs - 1 steady syncs through sync_inline, the CLI's in-process path."""
    logging.getLogger("tokenwatch").setLevel(logging.ERROR)
    settings = Settings(
        kucoin_url=job.sim_url, database_url=f"sqlite:///{job.db_path}", redis_url=job.redis_url, http_retries=0,
    )
    session = requests.Session()
    result = SoakResult()
    del pause  # nothing to wait for: this process scripts the exchange itself
    for step in range(job.syncs):
        if step:
            _script(session, job, step)
        outcome = pipeline.sync_inline(settings)
        result.statuses[outcome.status.value] = result.statuses.get(outcome.status.value, 0) + 1
        result.totals_ms.append(outcome.timings_ms.get("total", 0.0))
        status = vm_status()
        result.rss_mb.append(status["VmRSS"] / 1024)
        result.anon_mb.append(status.get("RssAnon", 0) / 1024)
    result.peak_rss_mb = vm_status()["VmHWM"] / 1024
    session.close()
    return result

"""Summaries, targets and the printed table: everything here works on the report dict that --json prints."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.chain import ChainResult
from benchmarks.coldwarm import TARGET as COLD_TARGET
from benchmarks.nodes_soak import TWO_NODE_LIMIT
from benchmarks.scenarios import PHASES, REFERENCES, SCENARIOS, Measurement
from benchmarks.soak import WARMUP_SYNCS, SoakResult, after_warmup, window_size

PEAK_RSS_100K_MB = 400.0  # issue 15: a steady sync at 100,000 contracts

REF_TITLES = {
    "a": "(a) source 'before': SELECT + upsert per token, commit per statement; + cache as (c)",
    "b": "(b) source 'after': SELECT all, execute per row, commit per 100; + cache as (c)",
    "c": "(c) floor: raw executemany, one transaction + one pipelined Redis write",
}
# The source system's published figures (1-vCPU cloud machine, SQLite WAL): theirs, not measured here.
SOURCE_FIGURES: list[tuple[str, str]] = [
    ("530 tokens, initial load", "2-5 s (25-30 s before batching)"),
    ("sync update", "1-3 s"),
    ("DB writes", "1-2 s"),
    ("cache update", "0.1-0.2 s"),
    ("new-listing detection", "0.05-0.1 s"),
    ("memory", "~80 MB"),
    ("load test 100 tokens", "0.5 s / 25 MB"),
    ("load test 500 tokens", "2.3 s / 75 MB"),
    ("load test 1,000 tokens", "4.1 s / 140 MB"),
    ("load test 5,000 tokens", "18.7 s / 680 MB"),
]


@dataclass(slots=True)
class SizeResult:
    """All measurements of one size."""

    size: int
    runs: int
    measurements: dict[str, list[Measurement]]
    ref_notes: dict[str, str]
    chain: ChainResult | None = None
    chain_note: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def stat(values: Iterable[float]) -> dict[str, float] | None:
    """Median and min-max of the values; None when there are none."""
    found = [float(v) for v in values]
    if not found:
        return None
    return {"median": statistics.median(found), "min": min(found), "max": max(found), "n": len(found)}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _write_ms(m: Measurement) -> float:
    return m.phases["batch_write"] + m.phases["cache"]


def _work_ms(m: Measurement) -> float:
    return m.phases["total"] - m.phases["api"]


def _refs(runs: list[Measurement], note: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in REFERENCES:
        paired = [(m, m.refs[name]) for m in runs if name in m.refs]
        if not paired:
            out[name] = {"plan": note.get(name, "not run")}
            continue
        totals = [r.db_ms + r.cache_ms for _, r in paired]
        checked = [r.same_rows for _, r in paired if r.same_rows is not None]
        out[name] = {
            "plan": note.get(name, "every run"), "db_ms": stat(r.db_ms for _, r in paired),
            "cache_ms": stat(r.cache_ms for _, r in paired), "total_ms": stat(totals),
            # Paired per run: each ratio compares figures taken seconds apart, in the same process.
            "x_write": _median([(r.db_ms + r.cache_ms) / _write_ms(m) for m, r in paired]),
            "x_work": _median([(r.db_ms + r.cache_ms) / _work_ms(m) for m, r in paired]),
            "same_rows": all(checked) if checked else None,
        }
    return out


def _scenario(name: str, runs: list[Measurement], note: dict[str, str]) -> dict[str, Any]:
    first = runs[0]
    warm = all(m.db_load_warm for m in runs)
    return {
        "phases": {p: stat(m.phases[p] for m in runs) for p in PHASES},
        "write_ms": stat(_write_ms(m) for m in runs),
        "total_minus_api": stat(_work_ms(m) for m in runs),
        "db_load_mode": "warm (in-process snapshot)" if warm else (
            "cold (empty registry)" if name == "cold" else "cold (full load)"),
        "db_load_cold": stat(m.db_load_cold_ms for m in runs if m.db_load_cold_ms is not None),
        "decode_ms": {phase: stat(m.decode_ms.get(phase, 0.0) for m in runs) for phase in ("api", "process")},
        "warmup_ms": stat(m.warmup_ms for m in runs),
        "peak_rss_mb": stat(m.peak_rss_mb for m in runs),
        "sync_peak_rss_mb": stat(m.sync_peak_rss_mb for m in runs),
        "rss_before_mb": stat(m.rss_before_mb for m in runs),
        "status": first.status, "counts": first.counts, "upserts": first.upserts, "history": first.history,
        "pending": first.pending, "db_bytes": first.db_bytes, "wal_bytes": first.wal_bytes,
        "redis_used_bytes": first.redis_used_bytes, "redis_hash_bytes": first.redis_hash_bytes,
        "refs": _refs(runs, note),
        "raw": [asdict(m) for m in runs],
    }


def _chain(result: SizeResult) -> dict[str, Any]:
    chain = result.chain
    if chain is None:
        return {"skipped": result.chain_note}
    timings = [o["timings_ms"] for o in chain.outcomes]
    api = [t.get("api", 0.0) for t in timings]
    inner = [sum(t.get(p, 0.0) for p in PHASES if p != "total") for t in timings]
    return {
        "runs": len(chain.e2e_ms), "e2e_ms": stat(chain.e2e_ms), "api_ms": stat(api),
        "e2e_minus_api_ms": stat(e - a for e, a in zip(chain.e2e_ms, api, strict=True)),
        "phases_sum_ms": stat(inner),
        "overhead_ms": stat(e - i for e, i in zip(chain.e2e_ms, inner, strict=True)),
        "phases": {p: stat(t.get(p, 0.0) for t in timings) for p in PHASES},
        "noop_chain_ms": stat(chain.noop_ms),
        "cold_ms": chain.cold_ms, "pool_hwm_mb": chain.pool_hwm_mb, "pool_hwm_steady_mb": chain.pool_hwm_steady_mb,
        "main_hwm_mb": chain.main_hwm_mb,
        "note": result.chain_note,
    }


def build(results: list[SizeResult], soak: SoakResult | None, soak_syncs: int, meta: dict[str, Any],
          cold_warm: dict[str, Any] | None = None, two_nodes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole report as one JSON-able dict."""
    sizes = []
    for result in results:
        sizes.append({
            "size": result.size, "runs": result.runs, "seconds": result.seconds, "ref_notes": result.ref_notes,
            "scenarios": {s: _scenario(s, result.measurements[s], result.ref_notes) for s in SCENARIOS},
            "chain": _chain(result), **result.extra,
        })
    report: dict[str, Any] = {"machine": meta, "sizes": sizes, "source_figures": dict(SOURCE_FIGURES)}
    if soak is not None:
        start, end, growth = soak.growth()
        anon_start, anon_end, anon_growth = soak.growth(soak.anon_mb)
        after = after_warmup(soak.rss_mb)
        slope = statistics.linear_regression(range(len(after)), after).slope if len(after) > 1 else 0.0
        report["soak"] = {
            "syncs": soak_syncs, "size": 5000, "warmup_syncs": WARMUP_SYNCS,
            "window_syncs": window_size(len(after)),
            "rss_start_mb": start, "rss_end_mb": end, "growth_pct": growth,
            "anon_start_mb": anon_start, "anon_end_mb": anon_end, "anon_growth_pct": anon_growth,
            "rss_min_after_warmup_mb": min(after), "rss_max_after_warmup_mb": max(after),
            "rss_trend_mb_per_100_syncs": slope * 100,
            "peak_rss_mb": soak.peak_rss_mb, "statuses": soak.statuses, "total_ms": stat(soak.totals_ms),
            "rss_mb": soak.rss_mb, "anon_mb": soak.anon_mb,
        }
    if cold_warm is not None:
        report["cold_warm"] = cold_warm
    if two_nodes is not None:
        report["two_nodes"] = two_nodes
    report["targets"] = targets(report)
    return report


def _size(report: dict[str, Any], size: int) -> dict[str, Any] | None:
    return next((s for s in report["sizes"] if s["size"] == size), None)


def _target(name: str, value: float | None, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"name": name, "value": value, "pass": ok, "detail": detail}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on medians (network excluded); None: not measured in this run."""
    out: list[dict[str, Any]] = []
    s5 = _size(report, 5000)
    steady = s5["scenarios"]["steady"] if s5 else None
    for name, need, text in (("a", 10.0, ">= 10x faster than (a)"), ("b", 2.0, ">= 2x faster than (b)")):
        ref = steady["refs"][name] if steady else None
        x = ref.get("x_write") if ref else None
        out.append(_target(
            f"steady 5,000: batch_write+cache {text}", x, None if x is None else x >= need,
            "not measured" if x is None else f"{x:.1f}x (total-api: {ref['x_work']:.1f}x) [refs: DB + cache as (c)]"
            if ref else "not measured",
        ))
    ref_c = steady["refs"]["c"] if steady else None
    x_c = ref_c.get("x_write") if ref_c else None
    out.append(_target(
        "steady 5,000: batch_write+cache within 2x of (c)", None if x_c is None else 1 / x_c,
        None if x_c is None else 1 / x_c <= 2.0,
        "not measured" if x_c is None or ref_c is None else
        f"ours is {1 / x_c:.2f}x the floor (total-api: {1 / ref_c['x_work']:.1f}x the floor)",
    ))
    for size, limit in ((530, 30.0), (5000, 200.0)):
        entry = _size(report, size)
        chain = entry["chain"] if entry else None
        value = chain["e2e_minus_api_ms"]["median"] if chain and "e2e_ms" in chain else None
        out.append(_target(
            f"Celery chain {size:,}: e2e - api < {limit:g} ms", value, None if value is None else value < limit,
            "not measured" if value is None or chain is None else
            f"{value:.1f} ms (with api: {chain['e2e_ms']['median']:.1f} ms)",
        ))
    chain5 = s5["chain"] if s5 else None
    hwm = chain5.get("pool_hwm_mb") if chain5 else None
    steady_hwm = chain5.get("pool_hwm_steady_mb") if chain5 else None
    out.append(_target(
        "worker peak RSS at 5,000 < 150 MB", hwm, None if hwm is None else hwm < 150.0,
        "not measured (chain skipped)" if hwm is None else
        f"{hwm:.0f} MB (pool child VmHWM over its baseline and steady syncs"
        + (f"; steady syncs alone: {steady_hwm:.0f} MB)" if steady_hwm is not None else ")"),
    ))
    soak = report.get("soak")
    out.append(_target(
        "soak: RSS growth < 5%", soak["growth_pct"] if soak else None,
        None if not soak else soak["growth_pct"] < 5.0,
        "not run (use --soak N)" if not soak else
        f"{soak['growth_pct']:+.1f}% ({soak['rss_start_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB over "
        f"{soak['syncs']} syncs)",
    ))
    pg = s5.get("postgresql") if s5 else None
    ratio_pg = pg["steady_total_ratio"] if pg else None
    out.append(_target(
        "steady 5,000 on PostgreSQL within 2x of SQLite (same run)", ratio_pg,
        None if ratio_pg is None else ratio_pg <= 2.0,
        "not measured (use --database URL)" if ratio_pg is None or pg is None else
        f"{ratio_pg:.2f}x ({pg['steady_phases']['total']['median']:.0f} vs "
        f"{pg['sqlite_steady_phases']['total']['median']:.0f} ms total)",
    ))
    cold_warm = report.get("cold_warm")
    shared = cold_warm["shared"] if cold_warm else None
    ratio = shared["ratio"] if shared else None
    out.append(_target(
        f"cold sync within {COLD_TARGET:g}x of warm at 5,000", ratio,
        None if ratio is None or cold_warm is None or cold_warm["size"] != 5000 else ratio <= COLD_TARGET,
        "not measured (--cold-warm-size 5000)" if ratio is None or shared is None or cold_warm is None else
        f"{ratio:.2f}x at {cold_warm['size']:,} (CPU time: {shared['cpu_ratio']:.2f}x): "
        f"{shared['cold_ms']['median']:.0f} against "
        f"{cold_warm['warm_ms']['median']:.0f} ms (db_load+process+batch_write; reading the database instead of "
        f"the shared snapshot: {cold_warm['database']['ratio']:.2f}x)",
    ))
    two = report.get("two_nodes")
    ratios = {p: two["two"][p] / two["one"][p] for p in ("total", "work")} if two else {}
    out.append(_target(
        f"steady 5,000 through two nodes within {TWO_NODE_LIMIT:g}x of one node", max(ratios.values(), default=None),
        None if not two else bool(two["held"]) and two["contracts"] == 5000,
        "not measured (use --database URL)" if not two else
        f"total {ratios['total']:.2f}x, work {ratios['work']:.2f}x ({two['two']['total']:.0f} vs "
        f"{two['one']['total']:.0f} ms total; medians of {two['syncs'] - two['warmup']} syncs each"
        f"{'' if two['checks_passed'] else '; a soak check FAILED'})",
    ))
    big, small = _size(report, 100_000), s5
    steady_big = big["scenarios"]["steady"]["peak_rss_mb"] if big else None
    own_big = big["scenarios"]["steady"].get("sync_peak_rss_mb") if big else None
    out.append(_target(
        f"peak RSS of a steady sync at 100,000 < {PEAK_RSS_100K_MB:g} MB", steady_big and steady_big["max"],
        None if steady_big is None else steady_big["max"] < PEAK_RSS_100K_MB,
        "not measured (--sizes 100000)" if steady_big is None else
        f"{steady_big['max']:.0f} MB at most over {steady_big['n']:.0f} runs: a fresh child's whole life, its first "
        f"sync (which loads the registry) and the steady one; the steady sync's own peak "
        f"{own_big['max'] if own_big else float('nan'):.0f} MB",
    ))
    if big and small:
        per_big = big["scenarios"]["steady"]["total_minus_api"]["median"] / 100_000 * 1000
        per_small = small["scenarios"]["steady"]["total_minus_api"]["median"] / 5000 * 1000
        ratio = per_big / per_small
        out.append(_target(
            "linear scaling: steady (total-api)/contract at 100,000 within 2x of 5,000", ratio, ratio <= 2.0,
            f"{per_big:.1f} vs {per_small:.1f} us per contract ({ratio:.2f}x)",
        ))
    else:
        out.append(_target("linear scaling: 100,000 vs 5,000 per contract", None, None, "not measured"))
    return out

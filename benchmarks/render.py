"""The readable table, rendered from the report dict (so the table and --json never disagree)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import REF_TITLES
from benchmarks.scenarios import PHASES, REFERENCES, SCENARIOS

LABEL = 27
CELL = 34


def _n(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 else f"{value:,.0f}"


def _s(st: dict[str, float] | None) -> str:
    if not st:
        return "-"
    if st["n"] == 1:
        return f"{_n(st['median'])} (1 run)"
    return f"{_n(st['median'])} [{_n(st['min'])}-{_n(st['max'])}]"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<{LABEL}}" + "".join(f"{c:<{CELL - 2}}  " for c in cells).rstrip()


def _counts(sc: dict[str, Any]) -> str:
    c = sc["counts"]
    if sc["status"] == "baseline":
        return f"baseline: {c['active']:,} stored"
    shown = [f"{k} {v:,}" for k in ("listed", "delisted", "params_changed") if (v := c[k])]
    if sc["pending"]:
        shown.append(f"pending {sc['pending']:,}")
    return ", ".join(shown) or "no change"


def _ref_cell(ref: dict[str, Any]) -> str:
    if "total_ms" not in ref:
        return str(ref["plan"])
    same = " ROWS DIFFER" if ref["same_rows"] is False else ""
    return f"{_s(ref['total_ms'])} {ref['x_write']:.1f}x/{ref['x_work']:.1f}x{same}"


def _size_block(size: dict[str, Any]) -> list[str]:
    sc = size["scenarios"]
    lines = [
        "",
        f"== {size['size']:,} contracts: {size['runs']} run{'s' if size['runs'] > 1 else ''} per scenario, "
        f"each sync in a fresh child process ({size['seconds']:.0f} s) ==",
        _row("ms: median [min-max]", list(SCENARIOS)),
    ]
    for phase in PHASES:
        lines.append(_row(phase, [_s(sc[s]["phases"][phase]) for s in SCENARIOS]))
        if phase in ("api", "process"):
            lines.append(_row("  of which JSON decode", [_s(sc[s]["decode_ms"][phase]) for s in SCENARIOS]))
        if phase == "db_load":
            lines.append(_row("  db_load is", [sc[s]["db_load_mode"] for s in SCENARIOS]))
            lines.append(_row("  cold full load", [_s(sc[s]["db_load_cold"]) for s in SCENARIOS]))
    lines += [
        _row("total - api", [_s(sc[s]["total_minus_api"]) for s in SCENARIOS]),
        _row("batch_write + cache", [_s(sc[s]["write_ms"]) for s in SCENARIOS]),
        _row("1st-use statement warm-up", [_s(sc[s]["warmup_ms"]) for s in SCENARIOS]),
        _row("peak RSS MB", [_s(sc[s]["peak_rss_mb"]) for s in SCENARIOS]),
        _row("  the sync's own", [_s(sc[s].get("sync_peak_rss_mb")) for s in SCENARIOS]),
        _row("  RSS before sync", [_s(sc[s]["rss_before_mb"]) for s in SCENARIOS]),
        _row("changes", [_counts(sc[s]) for s in SCENARIOS]),
        _row("rows written", [f"{sc[s]['upserts']:,} upserts, {sc[s]['history']:,} events" for s in SCENARIOS]),
        _row("DB + WAL", [f"{_mb(sc[s]['db_bytes'])} + {_mb(sc[s]['wal_bytes'])}" for s in SCENARIOS]),
        _row("Redis hash / used", [
            f"{_mb(sc[s]['redis_hash_bytes'])} / {_mb(sc[s]['redis_used_bytes'])}" for s in SCENARIOS]),
        "references, same rows (ms, median [min-max]; Nx/Mx = reference / our batch_write+cache, / our total-api):",
    ]
    for name in REFERENCES:
        lines.append(_row(f"  ({name})", [_ref_cell(sc[s]["refs"][name]) for s in SCENARIOS]))
    lines.append(_row("  (c) = db + cache", [_split(sc[s]["refs"]["c"]) for s in SCENARIOS]))
    pg = size.get("postgresql")
    if pg:
        lines.append(f"steady on PostgreSQL (--database) beside SQLite, same run (ms, median [min-max]); total "
                     f"{pg['steady_total_ratio']:.2f}x SQLite's:" if pg["steady_total_ratio"] else
                     "steady on PostgreSQL (--database):")
        for phase, st in pg["steady_phases"].items():
            lines.append(_row(f"  {phase}", [f"PG {_s(st)}", f"SQLite {_s(pg['sqlite_steady_phases'][phase])}"]))
    return lines


def _split(ref: dict[str, Any]) -> str:
    if "db_ms" not in ref or not ref["db_ms"] or not ref["cache_ms"]:
        return "-"
    return f"{_n(ref['db_ms']['median'])} + {_n(ref['cache_ms']['median'])}"


def _chain_block(sizes: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "== Celery chain: real worker (-Q fetch,db -c 1), steady syncs, timed from apply_async() to get() ==",
        f"{'size':>8}  {'runs':>4}  {'e2e':<20}{'api':<18}{'e2e - api':<20}{'in-task phases':<18}"
        f"{'chain overhead':<18}{'no-op chain':<16}{'cold e2e':>9}  {'pool peak RSS: all / steady':>28}",
    ]
    for size in sizes:
        chain = size["chain"]
        if "e2e_ms" not in chain:
            lines.append(f"{size['size']:>8,}  skipped: {chain['skipped']}")
            continue
        lines.append(
            f"{size['size']:>8,}  {chain['runs']:>4}  {_s(chain['e2e_ms']):<20}{_s(chain['api_ms']):<18}"
            f"{_s(chain['e2e_minus_api_ms']):<20}{_s(chain['phases_sum_ms']):<18}{_s(chain['overhead_ms']):<18}"
            f"{_s(chain['noop_chain_ms']):<16}"
            f"{_n(chain['cold_ms']):>9}  {chain['pool_hwm_mb']:>17.0f} / "
            + ("-" if chain["pool_hwm_steady_mb"] is None else f"{chain['pool_hwm_steady_mb']:.0f} MB")
        )
    lines.append("  in-task phases: api+db_load+process+batch_write+cache as the chain's own outcome reports them; "
                 "chain overhead = e2e - that sum")
    lines.append("  (broker hops, staging the snapshot and the plan through Redis, result backend, finish()).")
    lines.append("  no-op chain: three celery.accumulate tasks on the same queue and worker, the floor any three-task "
                 "chain pays here.")
    notes = {size["chain"].get("note") for size in sizes} - {None}
    lines.extend(f"  per size: {note}" for note in sorted(notes))
    return lines


def _cold_warm_block(cw: dict[str, Any] | None) -> list[str]:
    if not cw:
        return []
    kinds = ("warm", "cold, shared snapshot", "cold, database read")
    cells = {"warm": cw["warm_phases"], "cold, shared snapshot": cw["shared"]["phases"],
             "cold, database read": cw["database"]["phases"]}
    lines = [
        "",
        f"== Cold vs warm: {cw['size']:,} contracts, {cw['runs']} fresh processes per cold kind, market data moving "
        "on every call ==",
        _row("ms: median [min-max]", list(kinds)),
    ]
    for phase in cw["warm_phases"]:
        label = "cpu (whole sync)" if phase == "cpu" else phase
        lines.append(_row(label, [_s(cells[k][phase]) for k in kinds]))
    lines.append(_row("work (no api, no cache)", [_s(cw["warm_ms"]), _s(cw["shared"]["cold_ms"]),
                                                     _s(cw["database"]["cold_ms"])]))
    lines.append(_row("cold / warm (work)", ["1.00x", f"{cw['shared']['ratio']:.2f}x",
                                              f"{cw['database']['ratio']:.2f}x"]))
    lines.append(_row("cold / warm (cpu)", ["1.00x", f"{cw['shared']['cpu_ratio']:.2f}x",
                                             f"{cw['database']['cpu_ratio']:.2f}x"]))
    lines.append("  cold: the first sync of a freshly spawned process, prepared as a worker's pool process is when it "
                 "starts (tokenwatch.prepare: registry engines opened, write statements compiled); 'database read': "
                 "the shared registry snapshot deleted first, as before it existed. warm: the same process's third "
                 "sync. work = db_load + process + batch_write; cpu: the process's CPU time over the whole sync")
    return lines


def _two_nodes_block(two: dict[str, Any] | None) -> list[str]:
    if not two:
        return []
    return [
        "",
        f"== One node against two: {two['contracts']:,} contracts, {two['syncs']} steady syncs each on PostgreSQL "
        f"({two['churn_pct']:g}% listing metadata moved before each, {two['warmup']} warm-up syncs left out; "
        "benchmarks.nodes_soak --compare-nodes) ==",
        *two["lines"],
        "  work = db_load + process + batch_write; wall: trigger to outcome. Each node's worker runs one pool "
        "process; with two, every step lands on either node.",
    ]


def render(report: dict[str, Any]) -> str:
    """The report as the table the command prints."""
    m = report["machine"]
    lines = [
        f"tokenwatch benchmark: {m['cpus']} CPUs, Python {m['python']}, SQLite {m['sqlite']}, Redis {m['redis']}, "
        f"Celery {m['celery']}; code {m['code']}; {m['elapsed_s']:.0f} s in all",
        "Each sync is tokenwatch.pipeline.run_inline (the chain's own steps fetch, diff, write, run in one process) "
        "with the phase timings it reports,",
        "against the local simulator over real HTTP, a fresh SQLite file and a real Redis, in a fresh child process. "
        "steady: 1% of contracts get new listing",
        "metadata and market data moves on all; churn: 2% listed + 2% delisted. Every steady/churn run starts from "
        "the same baseline (DB file copy, Redis hash copy,",
        "simulator changes undone); its child first runs one unmeasured sync of the unchanged exchange (a running "
        "worker's previous sync: registry snapshot,",
        "parse memo, engines) and pre-compiles the write statements, then the exchange is scripted and the "
        "measured sync runs. JSON decode: time inside the JSON decoders (api: the fetch's envelope check, "
        "orjson; process: the split of the answer and the per-contract decode, msgspec).",
        "Reference notes:",
        *(f"  {k}: {v}" for k, v in m["reference_notes"].items()),
    ]
    for size in report["sizes"]:
        lines += _size_block(size)
    lines.append("")
    lines += [f"  {title}" for title in REF_TITLES.values()]
    lines += _chain_block(report["sizes"])
    lines += _cold_warm_block(report.get("cold_warm"))
    lines += _two_nodes_block(report.get("two_nodes"))
    soak = report.get("soak")
    if soak:
        lines += [
            "",
            f"== Soak: {soak['syncs']} consecutive steady syncs of 5,000 contracts in one process (sync_inline) ==",
            f"RSS (median of {soak['window_syncs']} syncs) after the {soak['warmup_syncs']} warm-up syncs: "
            f"{soak['rss_start_mb']:.1f} MB, at the end: {soak['rss_end_mb']:.1f} MB, "
            f"growth {soak['growth_pct']:+.2f}% "
            f"(RssAnon {soak['anon_start_mb']:.1f} -> {soak['anon_end_mb']:.1f} MB, {soak['anon_growth_pct']:+.2f}%);",
            f"after the warm-up between {soak['rss_min_after_warmup_mb']:.1f} and "
            f"{soak['rss_max_after_warmup_mb']:.1f} MB, linear trend {soak['rss_trend_mb_per_100_syncs']:+.2f} MB per "
            "100 syncs;",
            f"peak {soak['peak_rss_mb']:.1f} MB; statuses {soak['statuses']}; sync total ms {_s(soak['total_ms'])}",
        ]
    lines += ["", "== The source system's published figures (THEIRS: 1-vCPU cloud machine, SQLite WAL; not measured "
              "here) =="]
    lines += [f"  {k:<26} {v}" for k, v in report["source_figures"].items()]
    lines += ["", "== Targets (medians, network excluded) =="]
    for t in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        lines.append(f"  {verdict}  {t['name']}: {t['detail']}")
    return "\n".join(lines)

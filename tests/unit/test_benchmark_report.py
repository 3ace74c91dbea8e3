"""The benchmark report's verdicts on issue 15's two-node and memory targets, from the figures a run found."""

from __future__ import annotations

from typing import Any

from benchmarks.render import render
from benchmarks.report import targets


def _verdict(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(t for t in targets(report) if t["name"].startswith(prefix))


def _two_nodes(one_total: float, two_total: float, one_work: float, two_work: float, held: bool,
               checks_passed: bool = True) -> dict[str, Any]:
    return {"contracts": 5000, "syncs": 60, "warmup": 5, "churn_pct": 1.0, "held": held, "limit": 1.25,
            "checks_passed": checks_passed, "one": {"total": one_total, "work": one_work},
            "two": {"total": two_total, "work": two_work}, "lines": ["  (table)", "PASS: ..."]}


def test_two_nodes_pass_on_the_run_s_own_verdict_and_show_both_ratios() -> None:
    two = _two_nodes(156.0, 191.5, 76.3, 85.6, held=True)
    found = _verdict({"sizes": [], "two_nodes": two}, "steady 5,000 through")
    assert found["pass"] is True
    assert "total 1.23x, work 1.12x" in found["detail"] and abs(found["value"] - 191.5 / 156.0) < 1e-9


def test_two_nodes_over_the_limit_fail_and_a_failed_soak_check_is_said() -> None:
    found = _verdict({"sizes": [], "two_nodes": _two_nodes(142.0, 175.5, 64.7, 84.4, held=False,
                                                             checks_passed=False)}, "steady 5,000 through")
    assert found["pass"] is False and "work 1.30x" in found["detail"] and "check FAILED" in found["detail"]
    assert _verdict({"sizes": []}, "steady 5,000 through")["pass"] is None


def test_peak_rss_at_100000_is_judged_on_the_largest_steady_run() -> None:
    def report(peaks: list[float]) -> dict[str, Any]:
        peak = {"median": sorted(peaks)[len(peaks) // 2], "min": min(peaks), "max": max(peaks), "n": len(peaks)}
        own = {**peak, "max": min(peaks)}  # the steady sync's own peak is shown, not judged
        return {"sizes": [{"size": 100_000, "scenarios": {"steady": {"peak_rss_mb": peak, "sync_peak_rss_mb": own}}}]}

    assert _verdict(report([682.0, 650.0]), "peak RSS")["pass"] is False
    assert "the steady sync's own peak 650 MB" in _verdict(report([682.0, 650.0]), "peak RSS")["detail"]
    assert _verdict(report([390.0, 399.0]), "peak RSS")["pass"] is True
    assert _verdict(report([390.0, 401.0]), "peak RSS")["pass"] is False
    assert _verdict({"sizes": []}, "peak RSS")["pass"] is None


def test_the_two_node_section_is_printed_with_the_comparison_s_own_lines() -> None:
    meta = {"cpus": 2, "python": "3.11", "sqlite": "3", "redis": "7", "celery": "5", "code": "abc", "elapsed_s": 1.0,
            "reference_notes": {}}
    report = {"machine": meta, "sizes": [], "source_figures": {},
              "two_nodes": _two_nodes(156.0, 191.5, 76.3, 85.6, held=True)}
    report["targets"] = targets(report)
    text = render(report)
    assert "== One node against two: 5,000 contracts, 60 steady syncs each" in text
    assert "  (table)\nPASS: ..." in text
    assert "PASS  steady 5,000 through two nodes within 1.25x of one node: total 1.23x" in text

"""The soak's growth figure: window medians, so one reading on a transient buffer does not decide it."""

from __future__ import annotations

import pytest

from benchmarks.soak import WARMUP_SYNCS, WINDOW_SYNCS, SoakResult


def _result(rss: list[float]) -> SoakResult:
    return SoakResult(rss_mb=rss, anon_mb=[value - 20.0 for value in rss])


def test_a_transient_last_reading_is_not_growth() -> None:
    rss = [90.0] * WARMUP_SYNCS + [120.0] * 400
    rss[-1] = 135.6  # a 15 MB buffer still mapped when the last reading was taken
    start, end, growth = _result(rss).growth()
    assert (start, end, growth) == (120.0, 120.0, 0.0)


def test_steady_growth_is_reported() -> None:
    rss = [90.0] * WARMUP_SYNCS + [120.0 + 0.02 * step for step in range(480)]
    start, end, growth = _result(rss).growth()
    assert start == pytest.approx(120.0 + 0.02 * (WINDOW_SYNCS - 1) / 2)
    assert end == pytest.approx(120.0 + 0.02 * (480 - (WINDOW_SYNCS + 1) / 2))
    assert growth == pytest.approx(100.0 * (end - start) / start)
    assert growth > 5.0


def test_the_warm_up_is_left_out_and_a_short_run_uses_smaller_windows() -> None:
    result = _result([50.0] * WARMUP_SYNCS + [100.0, 100.0, 110.0, 110.0])
    assert result.growth() == (100.0, 110.0, pytest.approx(10.0))
    assert result.growth(result.anon_mb) == (80.0, 90.0, pytest.approx(12.5))

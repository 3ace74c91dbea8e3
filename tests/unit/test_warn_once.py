"""An answer's invalid records and doubled symbols are warned about when they change, not every sync."""

from __future__ import annotations

import logging

import pytest

from tokenwatch.domain.contracts import ParseResult
from tokenwatch.process import ProcessState
from tokenwatch.steps import warn_invalid


def result(reasons: tuple[str, ...], duplicated: frozenset[str] = frozenset()) -> ParseResult:
    return ParseResult(contracts={}, invalid=len(reasons), reasons=reasons, unusable=duplicated,
                       duplicated=duplicated)


def test_the_same_invalid_records_and_doubled_symbols_are_warned_about_once(
    process_state: ProcessState, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenwatch.sync")
    twice = result(("duplicate symbol XBTUSDTM (2 copies): kept as registered",), frozenset({"XBTUSDTM"}))
    for _ in range(3):
        warn_invalid(process_state, twice)
    assert [r.getMessage() for r in caplog.records] == [
        "skipped 1 invalid contracts, first: duplicate symbol XBTUSDTM (2 copies): kept as registered",
        "the exchange lists XBTUSDTM more than once: ambiguous, kept as registered until it lists them once",
    ]
    caplog.clear()
    warn_invalid(process_state, result(()))  # gone: nothing to say
    warn_invalid(process_state, twice)  # back: said again
    assert len(caplog.records) == 2

"""The nodes soak's pure parts: the churn it plans, the events it expects, and a verification that catches a lost,
doubled or invented event and a registry that is not the exchange's last answer."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from benchmarks.nodes_soak import (
    PARAM,
    PARAM_AT,
    SETTLE_SYNCS,
    Churn,
    Ledger,
    Observed,
    Sample,
    apply_churn,
    compare_lines,
    memory_lines,
    parse_args,
    phase_medians,
    plan_churn,
    verify,
)
from tokenwatch.domain.contracts import parse_contract
from tokenwatch.simulator import Simulator


def test_the_churn_is_the_share_asked_for_split_four_ways_on_disjoint_symbols() -> None:
    symbols = [f"S{i}USDTM" for i in range(1000)]
    churn = plan_churn(random.Random(1), symbols[:990], symbols[990:], 1000, 2.0)
    assert churn.size() == 20
    assert churn.new == len(churn.delist) == len(churn.params) == 5
    assert len(churn.resume) == 2 and len(churn.pause) == 3  # half the flips resume paused ones
    assert set(churn.resume) <= set(symbols[990:])
    touched = [*churn.delist, *churn.pause, *churn.params]
    assert len(set(touched)) == len(touched) and set(touched) <= set(symbols[:990])


def test_with_nothing_paused_every_flip_is_a_pause() -> None:
    churn = plan_churn(random.Random(2), [f"S{i}" for i in range(200)], [], 200, 3.0)
    assert (churn.new, len(churn.delist), len(churn.pause), len(churn.resume), len(churn.params)) == (2, 2, 1, 0, 1)


def test_applied_churn_is_booked_as_the_events_a_sync_must_record() -> None:
    sim = Simulator(contracts=120, seed=3)  # scripted in memory: no server needed
    symbols = sim.symbols()
    churn = Churn(new=2, delist=symbols[:2], pause=symbols[2:4], resume=[], params=[symbols[4]])
    before = float(sim.contract(symbols[4])[PARAM])
    ledger = Ledger()
    apply_churn(sim, churn, ledger)
    apply_churn(sim, Churn(new=0, delist=[], pause=[], resume=symbols[2:3], params=[symbols[4]]), ledger)
    listed = [s for s in sim.symbols() if s not in symbols]
    assert len(listed) == 2 and not set(symbols[:2]) & set(sim.symbols())
    assert sim.contract(symbols[2])["status"] == "Open" and sim.contract(symbols[3])["status"] == "Paused"
    assert ledger.events == Counter({
        **{(s, "listed"): 1 for s in listed}, **{(s, "delisted"): 1 for s in symbols[:2]},
        (symbols[2], "status_changed"): 2, (symbols[3], "status_changed"): 1, (symbols[4], "params_changed"): 2,
    })
    assert ledger.params == {symbols[4]: before + 2.0} and float(sim.contract(symbols[4])[PARAM]) == before + 2.0
    assert ledger.total() == 9


def _world() -> tuple[Ledger, Observed]:
    """A ledger and the stores exactly as the soak must find them: every check passes."""
    sim = Simulator(contracts=110, seed=4)
    answer = {}
    for symbol in sim.symbols():
        contract = parse_contract(sim.contract(symbol))
        answer[symbol] = (contract.status, contract.meta)
    listed = sim.symbols()[:3]
    moved = sim.symbols()[3]
    ledger = Ledger(events=Counter({(s, "listed"): 1 for s in listed} | {(moved, "params_changed"): 1}),
                    params={moved: answer[moved][1][PARAM_AT]})
    history = [(i + 1, s, "listed") for i, s in enumerate(listed)] + [(4, moved, "params_changed")]
    seen = Observed(history=history, stream=[1, 2, 3, 4], stream_maxlen=100, cache=set(answer),
                    active=dict(answer), answer=dict(answer))
    return ledger, seen


def test_the_stores_as_scripted_pass() -> None:
    ledger, seen = _world()
    assert verify(ledger, seen) == []


def test_a_lost_event_fails() -> None:
    ledger, seen = _world()
    seen.history = seen.history[1:]
    seen.stream = [2, 3, 4]
    problems = verify(ledger, seen)
    assert len(problems) == 1 and "1 scripted events missing" in problems[0]


def test_a_duplicated_event_fails_even_when_the_stream_follows_it() -> None:
    ledger, seen = _world()
    seen.history.append((5, seen.history[0][1], "listed"))
    seen.stream.append(5)
    problems = verify(ledger, seen)
    assert len(problems) == 1 and "recorded more than once" in problems[0]


def test_an_event_nothing_scripted_fails() -> None:
    ledger, seen = _world()
    seen.history.append((5, seen.history[0][1], "delisted"))
    seen.stream.append(5)
    assert any("nothing scripted" in p for p in verify(ledger, seen))


def test_a_stream_that_lost_or_doubled_an_entry_fails() -> None:
    ledger, seen = _world()
    seen.stream = [1, 2, 2, 4]
    assert any("the event stream is not the history" in p for p in verify(ledger, seen))
    seen.stream = [1, 2, 4]
    assert any("the event stream is not the history" in p for p in verify(ledger, seen))


def test_a_stream_trimmed_past_its_maxlen_keeps_the_newest_events() -> None:
    ledger, seen = _world()
    seen.stream, seen.stream_maxlen = [3, 4], 2
    assert verify(ledger, seen) == []
    seen.stream_maxlen = 3  # trimmed shorter than it may be: entries lost
    assert any("trimmed only past 3" in p for p in verify(ledger, seen))


def test_a_registry_or_cache_that_is_not_the_last_answer_fails() -> None:
    ledger, seen = _world()
    moved = next(iter(ledger.params))
    status, meta = seen.active[moved]
    seen.active[moved] = (status, (*meta[:PARAM_AT], meta[PARAM_AT] - 1.0, *meta[PARAM_AT + 1:]))
    problems = verify(ledger, seen)
    assert any("differ from the exchange's last answer" in p for p in problems)
    assert any(f"do not hold the {PARAM} last scripted" in p for p in problems)

    ledger, seen = _world()
    seen.cache.discard(next(iter(seen.cache)))
    assert any("not cached" in p for p in verify(ledger, seen))


def _life(node: str, generation: int, tree: list[float], pool: list[float], rows: list[int] | None = None,
          ) -> list[Sample]:
    """Settled readings of one life of a node, ten syncs apart."""
    return [Sample(1000 * generation + 10 * i, node, generation, SETTLE_SYNCS + 10 * i, t, p,
                   rows[i] if rows else 0) for i, (t, p) in enumerate(zip(tree, pool, strict=True))]


def test_memory_is_judged_within_each_life_of_a_node_on_settled_readings() -> None:
    warm_up = [Sample(10 * i, "a", 1, 10 * i, 900.0, 900.0) for i in range(SETTLE_SYNCS // 10)]
    flat = _life("a", 1, [300.0] * 38, [120.0] * 38)
    growing = _life("b", 1, [300.0 + 2.0 * i for i in range(38)], [120.0] * 38)
    lines, problems = memory_lines([*warm_up, *flat, *growing], ["a", "b"])
    assert len(lines) == 8
    assert problems == [problems[0]] and problems[0].startswith("b tree RSS grew")


def test_a_later_life_settling_higher_is_not_a_leak_but_growth_within_one_is() -> None:
    first = _life("a", 1, [300.0] * 8, [120.0] * 8)
    second = _life("a", 2, [340.0] * 8, [150.0] * 8)
    assert memory_lines([*first, *second], ["a"])[1] == []
    leaking = _life("a", 2, [340.0] * 8, [150.0 + 5.0 * i for i in range(8)])
    problems = memory_lines([*first, *leaking], ["a"])[1]
    assert len(problems) == 1 and problems[0].startswith("a pool RSS grew") and "life #2" in problems[0]


def test_growth_no_faster_than_the_registry_rows_is_allowed() -> None:
    tree = [300.0 + 10.0 * i for i in range(28)]
    assert memory_lines(_life("a", 1, tree, [120.0] * 28, [5000 + 500 * i for i in range(28)]), ["a"])[1] == []
    assert memory_lines(_life("a", 1, tree, [120.0] * 28, [5000] * 28), ["a"])[1] != []


def _sync(db_load: float, process: float, batch_write: float, total: float) -> dict[str, float]:
    return {"api": 50.0, "db_load": db_load, "process": process, "batch_write": batch_write, "cache": 10.0,
            "total": total, "wall": total + 5.0}


def test_phase_medians_leave_out_the_warm_up_and_take_the_median_sync_s_work() -> None:
    warm_up = [_sync(900.0, 900.0, 900.0, 3000.0)] * 2
    syncs = [_sync(10.0, 50.0, 5.0, 150.0), _sync(40.0, 20.0, 5.0, 140.0), _sync(30.0, 30.0, 30.0, 200.0)]
    medians = phase_medians([*warm_up, *syncs], warmup=2)
    # work is per sync (65, 65, 90), not the sum of the phases' medians (30 + 30 + 5)
    assert medians["work"] == 65.0 and medians["db_load"] == 30.0 and medians["total"] == 150.0
    assert medians["wall"] == 155.0 and medians["api"] == 50.0


def test_phase_medians_need_a_sync_past_the_warm_up() -> None:
    with pytest.raises(ValueError, match="warm-up of 3"):
        phase_medians([_sync(1.0, 1.0, 1.0, 3.0)] * 3, warmup=3)


def test_two_nodes_within_the_limit_on_total_and_work_pass() -> None:
    one = phase_medians([_sync(20.0, 50.0, 10.0, 160.0)], 0)
    two = phase_medians([_sync(30.0, 55.0, 10.0, 190.0)], 0)
    lines, held = compare_lines(one, two, (55, 55))
    assert held and lines[-1].startswith("PASS") and "total 1.19x, work 1.19x" in lines[-1]
    assert lines[0].split()[2:] == ["api", "db_load", "process", "batch_write", "cache", "total", "work", "wall"]
    assert lines[3].split()[4] == "1.50x"  # db_load's ratio, shown though not judged


def test_either_total_or_work_over_the_limit_fails() -> None:
    one = phase_medians([_sync(20.0, 50.0, 10.0, 160.0)], 0)
    slower_work = phase_medians([_sync(60.0, 50.0, 10.0, 190.0)], 0)  # work 1.5x, total 1.19x
    lines, held = compare_lines(one, slower_work, (55, 55))
    assert not held and lines[-1].startswith("FAIL") and "work 1.50x" in lines[-1]
    slower_total = phase_medians([_sync(20.0, 50.0, 10.0, 210.0)], 0)
    assert not compare_lines(one, slower_total, (55, 55))[1]


def test_compare_nodes_defaults_to_the_steady_scenario_without_restarts() -> None:
    compared = parse_args(["--compare-nodes", "--syncs", "60"])
    assert (compared.churn_pct, compared.restart_every, compared.kinds, compared.warmup) == (1.0, 0, ("params",), 5)
    soak = parse_args([])
    assert (soak.churn_pct, soak.restart_every, soak.nodes) == (2.0, 100, 2)
    assert parse_args(["--nodes", "1", "--churn-pct", "3"]).nodes == 1

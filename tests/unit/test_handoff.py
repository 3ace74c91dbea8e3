"""The handoff between steps (memory, and Redis with the same-process shortcut) and the process state behind it."""

from __future__ import annotations

import os
from typing import Any

import fakeredis
import pytest
import redis

from tokenwatch import process
from tokenwatch.cache import keys, staging
from tokenwatch.domain.diff import Plan
from tokenwatch.errors import StagingError
from tokenwatch.fetch.spool import Spool
from tokenwatch.handoff import MemoryHandoff, RedisHandoff
from tokenwatch.outcome import SyncStatus
from tokenwatch.process import ProcessState

TTL_S = 60


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that counts the commands it receives, pipelined or not."""

    commands = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).commands += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        type(self).commands += 1
        return super().pipeline(transaction, shard_hint)


@pytest.fixture
def client() -> redis.Redis:
    CountingRedis.commands = 0
    return CountingRedis()


def a_plan(sync_id: str = "s1") -> Plan:
    return Plan(sync_id, 1_800_000_000_000, 4, SyncStatus.OK, delist=["GONEUSDTM"], counts={"delisted": 1})


def test_memory_handoff_hands_each_thing_over_once() -> None:
    handoff = MemoryHandoff()
    handoff.put_answer("s1", b"body")
    assert handoff.take_answer("s1") == b"body"
    with pytest.raises(StagingError):
        handoff.take_answer("s1")
    handoff.put_plan("s1", a_plan())
    assert handoff.take_plan("s1") == a_plan()
    handoff.discard("s1")
    with pytest.raises(StagingError):
        handoff.take_plan("s1")


def test_a_kept_answer_is_taken_without_asking_redis(client: redis.Redis, process_state: ProcessState) -> None:
    handoff = RedisHandoff(client, process_state, TTL_S)
    body = bytearray(b"x" * 1000)
    handoff.put_answer("s1", body)
    assert 0 < client.ttl(keys.snapshot_key("s1")) <= TTL_S  # Redis has it too, for any other process
    before = CountingRedis.commands
    assert handoff.take_answer("s1") is body
    assert CountingRedis.commands == before
    # Taken once: a second take (a redelivered message) reads Redis, the source of truth.
    client.delete(keys.snapshot_key("s1"))
    with pytest.raises(StagingError):
        handoff.take_answer("s1")


def test_another_process_reads_the_plan_from_redis(client: redis.Redis) -> None:
    RedisHandoff(client, ProcessState(), TTL_S).put_plan("s1", a_plan())
    assert RedisHandoff(client, ProcessState(), TTL_S).take_plan("s1") == a_plan()


def test_handing_the_plan_on_drops_the_answer(client: redis.Redis, process_state: ProcessState) -> None:
    handoff = RedisHandoff(client, process_state, TTL_S)
    handoff.put_answer("s1", b"body")
    handoff.put_plan("s1", a_plan())
    assert not client.exists(keys.snapshot_key("s1"))
    handoff.discard("s1")
    assert not client.exists(keys.plan_key("s1"))


def test_only_the_latest_payload_is_kept(client: redis.Redis, process_state: ProcessState) -> None:
    handoff = RedisHandoff(client, process_state, TTL_S)
    handoff.put_answer("a", b"first")
    handoff.put_answer("b", b"second")
    client.delete(keys.snapshot_key("a"))
    with pytest.raises(StagingError):
        handoff.take_answer("a")  # no longer kept, and gone from Redis


def test_a_kept_payload_past_its_ttl_is_not_used(process_state: ProcessState) -> None:
    process_state.keep("k", b"old", ttl_s=0)
    assert process_state.take_kept("k") is None


def test_a_forked_child_starts_with_a_fresh_state_and_the_worker_name() -> None:
    state = process.current()
    state.worker_name = "tokenwatch@box"
    state.keep("k", b"parent", TTL_S)
    state.memo.validated["XBTUSDTM"] = (None, ())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running any test machinery
        child = process.current()
        seen = (f"{child is state}|{child.worker_name}|{child.take_kept('k')}|{len(child.memo.validated)}|"
                f"{child.engines}")
        os.write(write, seen.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read()
    os.waitpid(pid, 0)
    assert seen == "False|tokenwatch@box|None|0|{}"
    assert state.take_kept("k") == b"parent"  # the parent's own state is untouched


def test_a_large_answer_goes_through_redis_in_parts_and_comes_back_in_parts(client: redis.Redis) -> None:
    body = os.urandom(3 * staging.READ_CHUNK + 123)
    spool = Spool(limit=1000)
    for at in range(0, len(body), 70_000):
        spool.write(body[at:at + 70_000])
    RedisHandoff(client, ProcessState(), TTL_S, whole_limit=1000).put_answer("s1", spool)
    assert client.get(keys.snapshot_key("s1")) == body  # staged whole under its key ...
    assert not client.exists(keys.snapshot_key("s1") + ":partial")  # ... and only there
    assert 0 < client.ttl(keys.snapshot_key("s1")) <= TTL_S
    other = RedisHandoff(client, ProcessState(), TTL_S, whole_limit=1000).take_answer("s1")
    assert isinstance(other, staging.StagedParts)  # another process reads it a slice at a time
    assert b"".join(other.parts()) == body
    small = RedisHandoff(client, ProcessState(), TTL_S, whole_limit=len(body)).take_answer("s1")
    assert small == body  # below its limit, whole


def test_a_spooled_answer_left_behind_is_closed_when_the_plan_is_handed_on() -> None:
    spool = Spool(limit=0)
    spool.write(b"x" * 100)
    handoff = MemoryHandoff()
    handoff.put_answer("s1", spool)  # the diff step failed: the answer was never taken
    handoff.put_plan("s1", a_plan())
    assert (spool.size, spool.spooled) == (0, False)  # its file is closed

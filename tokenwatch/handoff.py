"""How one step hands the exchange's answer and the plan to the next: through Redis in the Celery chain,
in memory for ``tokenwatch sync --inline``. The steps are the same either way (tokenwatch/steps.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import orjson
import redis

from tokenwatch.cache import keys, staging
from tokenwatch.domain.diff import Plan
from tokenwatch.errors import StagingError
from tokenwatch.fetch.spool import Spool
from tokenwatch.process import ProcessState


class InParts(Protocol):
    """An answer too large to hold whole: read a part at a time (a Spool, or one left in Redis)."""

    def parts(self) -> Iterator[bytes]:
        """Every byte of the answer, in order."""

    def close(self) -> None:
        """Free what holds it here."""


# The exchange's answer as the fetch step read it: whole in memory, or in parts (fetch/spool.py).
Answer = bytes | bytearray | InParts


def close(answer: Answer) -> None:
    """Free an answer that is held in parts (its spool's file); a whole one is left to the collector."""
    if not isinstance(answer, bytes | bytearray):
        answer.close()


class Handoff(Protocol):
    """Where a sync's answer and plan wait between its steps."""

    def put_answer(self, sync_id: str, body: Answer) -> None:
        """Leave the exchange's answer for the diff step."""

    def take_answer(self, sync_id: str) -> Answer:
        """The answer the fetch step left; StagingError when it is gone."""

    def put_plan(self, sync_id: str, plan: Plan) -> None:
        """Leave the plan for the write step (the answer is no longer needed)."""

    def take_plan(self, sync_id: str) -> Plan:
        """The plan the diff step left; StagingError when it is gone (expired, or consumed by a first delivery)."""

    def discard(self, sync_id: str) -> None:
        """Drop what is left of the sync's handoff (after its write)."""


class MemoryHandoff:
    """In this process only: the inline path, where every step runs here."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.plans: dict[str, Plan] = {}

    def put_answer(self, sync_id: str, body: Answer) -> None:
        self.answers[sync_id] = body

    def take_answer(self, sync_id: str) -> Answer:
        try:
            return self.answers.pop(sync_id)
        except KeyError:
            raise StagingError(f"no answer was handed over for sync {sync_id}") from None

    def put_plan(self, sync_id: str, plan: Plan) -> None:
        self._drop_answer(sync_id)
        self.plans[sync_id] = plan

    def take_plan(self, sync_id: str) -> Plan:
        try:
            return self.plans[sync_id]
        except KeyError:
            raise StagingError(f"no plan was handed over for sync {sync_id}") from None

    def discard(self, sync_id: str) -> None:
        self._drop_answer(sync_id)
        self.plans.pop(sync_id, None)

    def _drop_answer(self, sync_id: str) -> None:
        answer = self.answers.pop(sync_id, None)
        if answer is not None:
            close(answer)


class RedisHandoff:
    """Through Redis keys with a TTL, for steps that run in other processes (the Celery chain).

    The process that stages a payload also keeps it (ProcessState.keep), so that when the next step runs in the
    same process (one worker, as ``tokenwatch run`` starts) it is not read back. Redis stays the source for any
    other process, and for a redelivered message.
    """

    def __init__(self, client: redis.Redis, process: ProcessState, ttl_s: int, whole_limit: int | None = None,
                 ) -> None:
        self.client = client
        self.process = process
        self.ttl_s = ttl_s
        self.whole_limit = whole_limit  # a larger answer taken from Redis is read a slice at a time

    def put_answer(self, sync_id: str, body: Answer) -> None:
        key = keys.snapshot_key(sync_id)
        if isinstance(body, bytes | bytearray):
            staging.put(self.client, key, body, self.ttl_s)
        else:
            staging.put_parts(self.client, key, body.parts, self.ttl_s)
        self.process.keep(key, body, self.ttl_s)

    def take_answer(self, sync_id: str) -> Answer:
        key = keys.snapshot_key(sync_id)
        kept = self.process.take_kept(key)
        if isinstance(kept, bytes | bytearray | Spool):
            return kept
        return staging.take_or_parts(self.client, key, self.whole_limit)

    def put_plan(self, sync_id: str, plan: Plan) -> None:
        key = keys.plan_key(sync_id)
        pipe = self.client.pipeline(transaction=False)  # the plan and the answer's deletion: one round trip
        pipe.set(key, orjson.dumps(plan.to_json()), ex=self.ttl_s)
        pipe.delete(keys.snapshot_key(sync_id))
        pipe.execute()
        self.process.keep(key, plan, self.ttl_s)

    def take_plan(self, sync_id: str) -> Plan:
        key = keys.plan_key(sync_id)
        kept = self.process.take_kept(key)  # taken once: a redelivered write reads Redis, where it is gone
        if isinstance(kept, Plan):
            return kept
        return Plan.from_json(orjson.loads(staging.take(self.client, key)))

    def discard(self, sync_id: str) -> None:
        self.client.unlink(keys.snapshot_key(sync_id), keys.plan_key(sync_id))

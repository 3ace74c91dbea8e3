"""The registry a diff expects its commit to leave, shared through Redis with every other process.

With several processes the diff lands on any of them, and one that did not build the last plan would read every
row of the database and validate every contract again. The diff step shares what it holds instead: the rows its
plan leaves, and a digest of the values each contract's validation was given (domain.contracts.fingerprint). The
snapshot is trusted only under the rule the in-process registry follows (ProcessState.trusted_registry): its
head is the registry's head now, the same registry id, revision and sync id. A sync id is never reused, so a
plan that was not committed, another registry, another writer's commit or a restored backup all leave another
head, and the database is read.
"""

from __future__ import annotations

import msgspec
import redis

from tokenwatch.cache import staging
from tokenwatch.domain.contracts import Meta, ParseMemo
from tokenwatch.domain.registry import RegistryHead, RegistryRow, RegistryState
from tokenwatch.errors import StagingError

FORMAT = 2  # bumped whenever the layout, or what a fingerprint stands for, changes
TTL_S = 3600  # a snapshot not replaced for an hour is of no use: nothing syncs this registry
# A larger registry is not shared: msgspec decodes every string and float of the metadata anew (a registry read
# from the database shares them with the parse), which at 100,000 contracts keeps a worker that took a snapshot
# at 430 MB, against 300 MB reading the database (benchmarks/README.md). The cold sync it saves matters at the
# sizes of a real exchange (5,000 and under), not there.
MAX_ROWS = 20_000


class _Snapshot(msgspec.Struct, array_like=True):
    format: int
    registry_id: str
    revision: int
    last_sync_id: str
    last_fetched_at: int | None
    pending_change: str | None
    rows: list[RegistryRow]
    # Per row: the digest of the values its metadata was validated from (domain.contracts.fingerprint),
    # or None when this process did not validate its metadata (a delisted row, say).
    fingerprints: list[bytes | None]


_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(_Snapshot).decode

Validations = list[tuple[str, Meta, bytes]]


def snapshot_key(registry_id: str) -> str:
    """Where one registry's snapshot lives (one per registry: each diff replaces it)."""
    return f"tokenwatch:registry:{registry_id}:snapshot:v{FORMAT}"


def publish(client: redis.Redis, registry: RegistryState, memo: ParseMemo, ttl_s: int = TTL_S) -> bool:
    """Share registry (as a plan will leave it) and the validations of memo that produced its rows' metadata;
    False when the registry has no identity yet, or more than MAX_ROWS rows. Written whole, or not at all."""
    head = registry.head
    if head.registry_id is None or head.last_sync_id is None or len(registry.rows) > MAX_ROWS:
        return False
    rows = list(registry.rows.values())
    validated = memo.validated
    fingerprints = [
        known[0] if (known := validated.get(row.symbol)) is not None and known[1] == row.meta else None
        for row in rows
    ]
    # Into one buffer grown in place: encode() would build the payload and then copy it (twice its size at once).
    payload = bytearray()
    _encoder.encode_into(_Snapshot(FORMAT, head.registry_id, head.revision, head.last_sync_id,
                                   head.last_fetched_at, registry.pending_change, rows, fingerprints), payload)
    del rows, fingerprints
    staging.put(client, snapshot_key(head.registry_id), payload, ttl_s)
    return True


def load(client: redis.Redis, head: RegistryHead) -> tuple[RegistryState, Validations] | None:
    """The shared registry when it is exactly the registry at head (its identity, revision and the sync that
    made it), with the validations it carries; None when there is none to trust (absent, another head, another
    registry, unreadable)."""
    if head.registry_id is None or head.last_sync_id is None:
        return None
    try:
        payload = staging.take(client, snapshot_key(head.registry_id))
    except StagingError:
        return None
    try:
        snapshot = _decode(payload)
    except msgspec.DecodeError:  # written by something else, or cut short: not a snapshot to trust
        return None
    del payload
    found = (snapshot.format, snapshot.registry_id, snapshot.revision, snapshot.last_sync_id,
             snapshot.last_fetched_at)
    if found != (FORMAT, head.registry_id, head.revision, head.last_sync_id, head.last_fetched_at):
        return None
    if len(snapshot.fingerprints) != len(snapshot.rows):
        return None
    rows = {row.symbol: row for row in snapshot.rows}
    validations = [(row.symbol, row.meta, digest)
                   for row, digest in zip(snapshot.rows, snapshot.fingerprints, strict=True) if digest]
    return RegistryState(head=head, rows=rows, pending_change=snapshot.pending_change), validations


"""Redis key names: part of tokenwatch's interface for readers of the hot cache."""

from __future__ import annotations

TOKENS = "tokenwatch:tokens"
VERSION = "tokenwatch:tokens:version"  # the registry revision the hash shows
ORIGIN = "tokenwatch:tokens:origin"  # "<registry id> <sync id>": which registry, which commit of it
EVENTS = "tokenwatch:events"
EVENTS_CURSOR = "tokenwatch:events:cursor"  # hash: registry, history_id, sync_id of the last event appended
SYNC_LOCK = "tokenwatch:sync:lock"
NODES = "tokenwatch:nodes"  # hash: node name -> JSON of what `tokenwatch run` on that node says of itself
_STAGING = "tokenwatch:staging"


def snapshot_key(sync_id: str) -> str:
    """Where the fetch step leaves the raw API body for the diff step."""
    return f"{_STAGING}:{sync_id}:snapshot"


def plan_key(sync_id: str) -> str:
    """Where the diff step leaves the plan for the write step."""
    return f"{_STAGING}:{sync_id}:plan"


def cache_key(sync_id: str) -> str:
    """The next hot-cache hash, built beside the live one and renamed over it after the commit."""
    return f"{_STAGING}:{sync_id}:cache"

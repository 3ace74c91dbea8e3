"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` for every synchronous command it sends (each task message,
each task event, each acknowledgement): about 60 µs of setting up response callbacks every time, a third of
what publishing one task costs. A ``redis.Redis`` is only a thin, thread-safe front to its connection pool, so
this channel keeps one per pool. Everything else is kombu's own code.

``install()`` points the ``redis`` and ``rediss`` transport names at this class; broker URLs keep their usual
spelling (``redis://``, ``redis+socket://``), so Flower and ``celery`` commands read them as before.
"""

from __future__ import annotations

from typing import Any

from kombu import transport
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel whose synchronous client is made once per connection pool."""

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._sync_client
        # A channel that reconnected has a new pool: the client must follow it.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client(asynchronous=False)  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"


def install() -> None:
    """Use this transport for every ``redis``/``rediss`` broker URL in this process."""
    transport.TRANSPORT_ALIASES["redis"] = TRANSPORT
    transport.TRANSPORT_ALIASES["rediss"] = TRANSPORT

"""Run events across processes: "run X has new events", over Redis pub/sub.

The events themselves stay in the store, the source of truth; Redis carries only the news that
a run has new ones, so a gateway can wake the clients following that run at once, whichever
process wrote them. Notices are batched (every run id written since the last publish goes in
one message) and best effort: while Redis is down nothing is lost but time, since followers
re-read the store every second anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING

from surgeflow.errors import ConfigError
from surgeflow.events import EventHub

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("surgeflow.events")

CHANNEL = "surgeflow:run-events"
RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # reconnect backoff, then every 2 s


class RedisEventBus:
    """Publishes this process's run-event notices and delivers everyone else's to ``hub``."""

    def __init__(self, url: str, hub: EventHub, *, timeout_s: float = 1.0) -> None:
        self.url = url
        self.hub = hub
        self.timeout_s = timeout_s
        # Who sent a notice, so a process does not wake its own followers twice.
        self.origin = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._redis: Redis | None = None
        self._sub: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0  # messages
        self.received = 0  # notices from other processes
        self.failures = 0
        self.connected = False
        self._warned_at = -1e9

    async def start(self) -> None:
        try:
            from redis.asyncio import Redis

            from surgeflow._redis import packing_in_c
        except ImportError:
            raise ConfigError(
                f"events URL {self.url!r} needs the redis extra: pip install 'surgeflow[redis]'"
            ) from None
        self._redis = packing_in_c(
            Redis.from_url(
                self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
        )
        # Subscribing waits for messages as long as there are none: no read timeout, but a
        # ping every few seconds to notice a dead connection.
        self._sub = Redis.from_url(
            self.url, socket_connect_timeout=self.timeout_s, health_check_interval=5
        )
        self.hub.publish = self.publish
        self._tasks = [
            asyncio.create_task(self._send(), name="events-publish"),
            asyncio.create_task(self._listen(), name="events-listen"),
        ]

    async def aclose(self) -> None:
        self.hub.publish = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for client in (self._redis, self._sub):
            if client is not None:
                await client.aclose()
        self._redis = self._sub = None

    def publish(self, run_id: str) -> None:
        """Tell the others that ``run_id`` has new events (soon, batched; never waits)."""
        self._pending.add(run_id)
        self._wake.set()

    async def _send(self) -> None:
        assert self._redis is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, set()
            message = "\n".join([self.origin, *batch])
            try:
                await self._redis.publish(CHANNEL, message)
                self.published += 1
            except Exception as exc:  # the followers' poll covers what is not sent
                self._failed("publish", exc)
                await asyncio.sleep(RETRY_S[0])

    async def _listen(self) -> None:
        assert self._sub is not None
        attempt = 0
        while True:
            try:
                async with self._sub.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.connected = True
                    attempt = 0
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=5.0
                        )
                        if message is not None:
                            self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                self._failed("subscribe", exc)
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1

    def _deliver(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        origin, _, ids = text.partition("\n")
        if origin == self.origin or not ids:
            return
        for run_id in ids.split("\n"):
            self.received += 1
            self.hub.notify_local(run_id)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._warned_at >= 10:
            self._warned_at = now
            log.warning(
                "run events over Redis: %s failed (%s); followers re-read the store every second"
                " until it is back",
                what,
                exc,
            )

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RedisEventBus {state} published={self.published} received={self.received}>"

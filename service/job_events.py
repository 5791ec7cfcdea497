"""One Redis subscription per gateway for every job's change announcements (`workers.queue.announce`),
handed out to the long polls of `GET /jobs/{id}?wait=` waiting in this process.

A subscription per waiting reader would hold a Redis connection each: a thousand open long polls, a thousand
connections. Here one pattern subscription receives every job's announcements (a few per second per running
job) and wakes the readers of that job, whatever their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis as AsyncRedis

from workers.queue import events_channel

log = logging.getLogger("editgan.gateway")
PATTERN = events_channel("*")
PREFIX, SUFFIX = PATTERN.split("*")
RETRY_SECONDS = 1.0  # between attempts to subscribe again after Redis went away


def job_id_of(channel: bytes | str) -> str | None:
    """The job id in an announcement's channel name, or None for another channel."""
    name = channel.decode() if isinstance(channel, bytes) else channel
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    return name[len(PREFIX) : len(name) - len(SUFFIX)] or None


class JobEvents:
    """Wakes the waiters of a job when it is announced. `run()` is the subscriber: a task for the gateway's
    lifetime, which subscribes again after Redis comes back (waking everyone then, as announcements may
    have been missed while it was away)."""

    def __init__(self, connect: Callable[[], AsyncRedis]) -> None:
        self.connect = connect
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.subscribed = asyncio.Event()  # set while the subscription is live
        self.closing = False  # the gateway is shutting down: waits answer at once
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Readers waiting now (open long polls)."""
        return sum(len(events) for events in self.waiters.values())

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set at the job's next announcement. Enter it before reading the job's state, so that a
        change between the read and the wait is not lost."""
        event = asyncio.Event()
        self.waiters[job_id].add(event)
        try:
            yield event
        finally:
            waiting = self.waiters.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self.waiters[job_id]

    def close_soon(self) -> None:
        """From any thread (a signal handler): answer every open wait now, and every later one at once. A
        shutting-down server waits for its open requests, and long polls would hold it for up to their 30 s."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self.closing = True
        self._wake()

    def _wake(self, job_id: str | None = None) -> None:
        for key in [job_id] if job_id is not None else list(self.waiters):
            for event in self.waiters.get(key, ()):
                event.set()

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            redis = self.connect()
            pubsub = redis.pubsub()
            try:
                await pubsub.psubscribe(PATTERN)
                self.subscribed.set()
                self._wake()  # anything announced while unsubscribed is read again by its waiters
                async for message in pubsub.listen():
                    job_id = job_id_of(message["channel"]) if message.get("type") == "pmessage" else None
                    if job_id is not None:
                        self._wake(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: waiters answer at the end of their wait meanwhile
                log.warning("job announcements lost (%s); subscribing again in %.0f s", exc, RETRY_SECONDS)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
                with contextlib.suppress(Exception):
                    await asyncio.shield(redis.aclose())
            await asyncio.sleep(RETRY_SECONDS)

"""The Redis Queue: a stream per queue, a consumer group of workers, and Lua for every change.

Keys (all of one queue share the ``{name}`` hash tag, so a Redis Cluster keeps them in one slot,
which the scripts need):

- ``surgeflow:queue:{name}:jobs``    stream of ready and leased jobs (fields ``run``, ``at``);
  the consumer group ``workers`` delivers each entry once, and its pending list (PEL) shows which
  worker holds which job (``XPENDING``), as operators expect of a stream.
- ``surgeflow:queue:{name}:index``   hash run id → the job as JSON: id, state (``ready``,
  ``delayed``, ``leased``, ``dead``), attempts, owner, stream entry id, last error. It makes
  ``put`` idempotent and is the truth about ownership.
- ``surgeflow:queue:{name}:leases``  sorted set of leased run ids scored by lease deadline (ms).
- ``surgeflow:queue:{name}:delayed`` sorted set of delayed run ids scored by due time (ms).
- ``surgeflow:queue:{name}:dead``    stream of dead jobs with their last error, for operators.

Why a lease sorted set rather than ``XAUTOCLAIM`` on the PEL's idle time: ``XAUTOCLAIM`` takes
one idle bound for the whole group, but a lease is per job (``extend`` may give any
``lease_s``, and workers may be configured differently), and it scans the PEL with a cursor,
where the sorted set finds the expired leases in O(log n). Expired jobs are still moved with
``XCLAIM``, so the PEL stays a true picture of who holds what.

Every operation is one Lua script, so it is atomic across any number of processes. Puts and
acks made in the same turn of the event loop share one pipelined round trip (each still its own
script): a busy gateway puts, and a busy worker acks, in bursts. ``wait`` wakes on other
processes' puts through one long-lived blocking read per queue object, which a caller that stops
waiting never cancels (that would drop and reopen its connection). Needs Redis 6.2 or later
(``ZRANGE … BYSCORE``, exclusive ``XRANGE`` bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from surgeflow._redis import packing_in_c
from surgeflow.errors import QueueError
from surgeflow.queue.base import Job, QueueStats

log = logging.getLogger("surgeflow.queue")

# Every Redis key and name this queue touches is made here.
KEY_PREFIX = "surgeflow:queue:"
GROUP = "workers"
_KEY_SUFFIXES = ("jobs", "index", "leases", "delayed", "dead")


def queue_keys(name: str) -> list[str]:
    """The keys of queue ``name``, in the order the scripts take them."""
    return [f"{KEY_PREFIX}{{{name}}}:{suffix}" for suffix in _KEY_SUFFIXES]


# Shared by every script. ARGV[1]: now in ms ('' for the Redis server's clock), ARGV[2]: the group,
# ARGV[3]: the stream's approximate maximum length. Times in Redis are milliseconds.
_PRELUDE = """
local JOBS, INDEX, LEASES, DELAYED, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local GROUP, MAXLEN = ARGV[2], ARGV[3]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function ms(x) return string.format('%.3f', x) end
local function load(run)
  local raw = redis.call('HGET', INDEX, run)
  if raw then return cjson.decode(raw) end
  return nil
end
local function save(run, job) redis.call('HSET', INDEX, run, cjson.encode(job)) end
-- Append the job to the stream, ready now; (re)create the group with the stream, so a stream
-- that was lost (FLUSHALL, restart) comes back usable.
local function enqueue(run, job, at)
  if redis.call('EXISTS', JOBS) == 0 then
    redis.call('XGROUP', 'CREATE', JOBS, GROUP, '0', 'MKSTREAM')
  end
  job.m = redis.call('XADD', JOBS, 'MAXLEN', '~', MAXLEN, '*', 'run', run, 'at', ms(at))
  job.s = 'ready'
  job.o = nil
  save(run, job)
end
local function delay(run, job, due)
  job.s = 'delayed'
  job.m = nil
  job.o = nil
  save(run, job)
  redis.call('ZADD', DELAYED, ms(due), run)
end
-- The lease of (job id, owner, attempt), or nil: a job leased again is a new lease.
local function owned(run, id, worker, attempts)
  local job = load(run)
  if job and job.s == 'leased' and job.id == id and job.o == worker
      and job.a == tonumber(attempts) then
    return job
  end
  return nil
end
local function unlease(run, job)
  redis.call('ZREM', LEASES, run)
  if job.m then
    redis.pcall('XACK', JOBS, GROUP, job.m)
    redis.call('XDEL', JOBS, job.m)
    job.m = nil
  end
end
local function kill(run, job, err)
  unlease(run, job)
  job.s = 'dead'
  job.o = nil
  job.e = err
  save(run, job)
  redis.call('XADD', DEAD, '*', 'run', run, 'id', job.id, 'attempts', job.a, 'error', err,
    'at', ms(now))
end
"""

# ARGV[4]: run id, [5]: a new job id, [6]: delay (ms). A job whose data Redis lost (its stream
# entry trimmed, say) does not count as existing: ``put`` restores it, keeping id and attempts.
_LOST = """
local function lost(run, job)
  if job.s == 'ready' then
    return not job.m or #redis.call('XRANGE', JOBS, job.m, job.m) == 0
  elseif job.s == 'delayed' then
    return not redis.call('ZSCORE', DELAYED, run)
  elseif job.s == 'leased' then
    return not redis.call('ZSCORE', LEASES, run)
  end
  return false
end
"""

_PUT = (
    _PRELUDE
    + _LOST
    + """
local run, delay_ms = ARGV[4], tonumber(ARGV[6])
local job = load(run)
if job and not lost(run, job) then return 0 end
job = job or {id = ARGV[5], a = 0}
if delay_ms > 0 then delay(run, job, now + delay_ms) else enqueue(run, job, now) end
return 1
"""
)

# ARGV[4]: run ids. Returns those with a job that Redis still holds.
_PRESENT = (
    _PRELUDE
    + _LOST
    + """
local found = {}
local raws = redis.call('HMGET', INDEX, unpack(ARGV, 4))
for i, raw in ipairs(raws) do
  if raw then
    local run = ARGV[i + 3]
    if not lost(run, cjson.decode(raw)) then found[#found + 1] = run end
  end
end
return found
"""
)

# ARGV[4]: worker, [5]: lease (ms), [6]: limit. Returns {cursor, {id, run, attempts, reclaimed}…}
# where cursor is the newest stream entry id after the lease (for `wait`).
_GET = (
    _PRELUDE
    + """
local worker, lease_ms, limit = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local function lease(run, job, reclaimed)
  job.a = job.a + 1
  job.o = worker
  job.s = 'leased'
  save(run, job)
  redis.call('ZADD', LEASES, ms(now + lease_ms), run)
  if reclaimed and job.m then  -- moves the PEL entry (a trimmed entry is simply gone)
    redis.pcall('XCLAIM', JOBS, GROUP, worker, 0, job.m)
  end
  out[#out + 1] = {job.id, run, job.a, reclaimed and 1 or 0}
end
-- Due delayed jobs join the stream (in bounded batches: the rest move on the next call).
local due = redis.call('ZRANGE', DELAYED, '-inf', ms(now), 'BYSCORE', 'LIMIT', 0, 1000,
  'WITHSCORES')
for i = 1, #due, 2 do
  local run = due[i]
  redis.call('ZREM', DELAYED, run)
  local job = load(run)
  if job and job.s == 'delayed' then enqueue(run, job, tonumber(due[i + 1])) end
end
-- Expired leases first: those jobs have waited longest.
local expired = redis.call('ZRANGE', LEASES, '-inf', '(' .. ms(now), 'BYSCORE', 'LIMIT', 0, limit)
for _, run in ipairs(expired) do
  local job = load(run)
  if job and job.s == 'leased' then lease(run, job, true) else redis.call('ZREM', LEASES, run) end
end
-- Then entries never delivered. An entry the index does not point at is stale: drop it.
while #out < limit and redis.call('EXISTS', JOBS) == 1 do
  local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', limit - #out,
    'STREAMS', JOBS, '>')
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'NOGROUP', 1, true) then return redis.error_reply(reply.err) end
    redis.call('XGROUP', 'CREATE', JOBS, GROUP, '0')
  elseif not reply then
    break
  else
    local entries = reply[1][2]
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
      local id, fields, run = entry[1], entry[2], nil
      for i = 1, #fields, 2 do
        if fields[i] == 'run' then run = fields[i + 1] end
      end
      local job = run and load(run)
      if job and job.s == 'ready' and job.m == id then
        lease(run, job, false)
      else
        redis.call('XACK', JOBS, GROUP, id)
        redis.call('XDEL', JOBS, id)
      end
    end
  end
end
local newest = redis.call('XREVRANGE', JOBS, '+', '-', 'COUNT', 1)
return {newest[1] and newest[1][1] or '0-0', out}
"""
)

# The lease scripts take ARGV[4]: run id, [5]: job id, [6]: worker, [7]: attempts.
_EXTEND = (
    _PRELUDE
    + """
local job = owned(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if not job then return 0 end
redis.call('ZADD', LEASES, ms(now + tonumber(ARGV[8])), ARGV[4])
if job.m then  -- resets the PEL idle time, so XPENDING shows a live lease
  redis.pcall('XCLAIM', JOBS, GROUP, ARGV[6], 0, job.m, 'JUSTID')
end
return 1
"""
)

_ACK = (
    _PRELUDE
    + """
local job = owned(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if not job then return 0 end
unlease(ARGV[4], job)
redis.call('HDEL', INDEX, ARGV[4])
return 1
"""
)

# ARGV[8]: delay (ms), [9]: error, [10]: max attempts. Returns 0 dead, 1 retried, 2 not owned.
_NACK = (
    _PRELUDE
    + """
local run = ARGV[4]
local job = owned(run, ARGV[5], ARGV[6], ARGV[7])
if not job then return 2 end
if job.a >= tonumber(ARGV[10]) then
  kill(run, job, ARGV[9])
  return 0
end
unlease(run, job)
job.e = ARGV[9]
local delay_ms = tonumber(ARGV[8])
if delay_ms > 0 then delay(run, job, now + delay_ms) else enqueue(run, job, now) end
return 1
"""
)

_RELEASE = (
    _PRELUDE
    + """
local job = owned(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if not job then return 0 end
unlease(ARGV[4], job)
job.a = math.max(job.a - 1, 0)
enqueue(ARGV[4], job, now)
return 1
"""
)

# ARGV[8]: error.
_BURY = (
    _PRELUDE
    + """
local job = owned(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if not job then return 0 end
kill(ARGV[4], job, ARGV[8])
return 1
"""
)

# Returns {ready, leased, dead, age of the oldest ready job (ms, as a string)}. Delivery is in id
# order and delivered entries are deleted once done, so the undelivered entries are those after
# the newest pending one. Delayed jobs count as ready, as in the SQLite queue.
_STATS = (
    _PRELUDE
    + """
local pending, newest_pending = 0, nil
local summary = redis.pcall('XPENDING', JOBS, GROUP)
if type(summary) == 'table' and not summary.err then
  pending, newest_pending = summary[1], summary[3]
end
local in_stream = math.max(redis.call('XLEN', JOBS) - pending, 0)
local oldest = nil
local first = redis.call('XRANGE', JOBS, newest_pending and ('(' .. newest_pending) or '-', '+',
  'COUNT', 1)
if first[1] then
  local fields = first[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'at' then oldest = tonumber(fields[i + 1]) end
  end
end
local soonest = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
if soonest[2] then
  local due = tonumber(soonest[2])
  if not oldest or due < oldest then oldest = due end
end
local age = oldest and math.max(now - oldest, 0) or 0
return {in_stream + redis.call('ZCARD', DELAYED), redis.call('ZCARD', LEASES),
  redis.call('XLEN', DEAD), ms(age)}
"""
)

# ARGV[4]: idle (ms). Deletes the group's consumers that hold nothing and were idle that long
# (workers that exited): a consumer name is per worker process, so they would pile up. A live
# worker that was deleted comes back with its next read. Returns how many went.
_PRUNE = (
    _PRELUDE
    + """
local consumers = redis.pcall('XINFO', 'CONSUMERS', JOBS, GROUP)
if type(consumers) ~= 'table' or consumers.err then return 0 end
local idle_ms, pruned = tonumber(ARGV[4]), 0
for _, fields in ipairs(consumers) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', JOBS, GROUP, info['name'])
    pruned = pruned + 1
  end
end
return pruned
"""
)

_Failure = (RedisError, OSError, TimeoutError)
_PRESENT_BATCH = 1000
_WAIT_CHUNK_S = 1.0  # one blocking XREAD waits at most this long, well under its socket timeout
MAX_CONNECTIONS = 64  # per queue object (a process): Redis serves them all
PRUNE_EVERY_S = 60.0  # how often `get` looks for consumers of exited workers
PRUNE_IDLE_S = 600.0  # a consumer that held nothing for this long is deleted


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _redact(url: str) -> str:
    """The URL without its password, fit for errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisQueue:
    """The `Queue` in Redis (``redis://host:port/db``), shared by any number of processes.

    Every call is bounded by ``timeout_s`` and fails with `QueueError`; a call whose connection
    broke is tried once more on a new one. So a call may run twice, or run although it failed
    here; delivery is at least once either way (a lease nobody knows of expires).

    The stream is capped near ``max_len`` entries (``XADD MAXLEN ~``), so a runaway backlog cannot
    exhaust Redis's memory. Trimming drops the oldest entries: a ready job trimmed away is no
    longer delivered, and `present` no longer reports it, so the `Reconciler` puts it back from
    the store (``put`` restores it with its id and attempts); trimming costs those runs their
    place in line and a reconcile interval of delay, never the run. A leased job survives
    trimming (its lease is in the index). Dead jobs are kept, as in the SQLite queue.

    Lease deadlines and delays use the Redis server's clock, so hosts whose clocks disagree still
    agree on when a lease expires; ``clock`` (Unix seconds) replaces it, for tests.
    ``Job.lease_expires_at`` is this host's estimate. ``wait`` wakes for puts in this process at
    once, and for other processes' through a blocking ``XREAD`` on a connection of its own.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "runs",
        max_attempts: int = 5,
        max_len: int = 1_000_000,
        timeout_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if not name or "{" in name or "}" in name:
            raise ValueError(f"bad queue name {name!r}: give a non-empty name without braces")
        self.url = _redact(url)
        self.name = name
        self.max_attempts = max_attempts
        self.max_len = max_len
        self.timeout_s = timeout_s
        self.lease_expiries = 0  # jobs this object leased again because a lease had expired
        self._clock = clock
        self._keys = queue_keys(name)
        # A bounded pool that makes a caller wait for a free connection (at most ``timeout_s``)
        # rather than fail: a worker running hundreds of runs acks them in bursts.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            retry=_retry_once(),
        )
        self._redis = packing_in_c(aioredis.Redis(connection_pool=pool))
        # Blocking reads hold a connection for up to _WAIT_CHUNK_S: a client of their own.
        self._blocking = packing_in_c(
            aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s + _WAIT_CHUNK_S,
                socket_connect_timeout=timeout_s,
                decode_responses=True,
                retry=_retry_once(),
            )
        )
        register = self._redis.register_script
        self._put, self._present, self._get = register(_PUT), register(_PRESENT), register(_GET)
        self._extend, self._ack, self._nack = register(_EXTEND), register(_ACK), register(_NACK)
        self._release, self._bury, self._stats = (
            register(_RELEASE),
            register(_BURY),
            register(_STATS),
        )
        self._prune = register(_PRUNE)
        self._pruned_at = time.monotonic()  # the first look comes a minute after opening
        self._state = _State.UNOPENED
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._cursor = "$"  # the newest stream entry id the last get saw; `wait` reads past it
        self._watcher: asyncio.Task[None] | None = None
        self._waiting = 0  # callers inside `wait`
        # Calls waiting to go to Redis together (`_batched`), by operation, and their senders.
        self._pending: dict[str, list[_Call]] = {}
        self._senders: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<RedisQueue {self.url} name={self.name!r} state={self._state.value}"
            f" max_attempts={self.max_attempts} lease_expiries={self.lease_expiries}>"
        )

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> Self:
        """Check that Redis answers; methods call this themselves on first use."""
        async with self._lock:
            if self._state is _State.CLOSED:
                raise QueueError("RedisQueue is closed")
            if self._state is _State.UNOPENED:
                await self._call("connect", self._redis.ping())
                self._state = _State.OPEN
        return self

    async def aclose(self) -> None:
        async with self._lock:
            self._state = _State.CLOSED
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._redis.aclose(close_connection_pool=True)  # the pool was passed in
        await self._blocking.aclose()

    async def put(self, run_id: str, *, delay_s: float = 0.0) -> bool:
        """Enqueue ``run_id``; ``False`` if a job for it already exists (even a dead one)."""
        job_id = "job_" + secrets.token_urlsafe(15)
        added = await self._batched("put", self._put, run_id, job_id, _ms(delay_s))
        if added and delay_s <= 0:
            self._wakeup.set()
        return bool(added)

    async def get(self, worker_id: str, *, lease_s: float, limit: int = 1) -> list[Job]:
        """Lease up to ``limit`` jobs that are ready or whose lease expired; never blocks.

        A job is handed out even when its ``attempts`` exceed ``max_attempts`` (a worker that
        crashed each time): check `Job.exhausted` and `bury` it.
        """
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if limit <= 0:
            return []
        cursor, rows = await self._run("get", self._get, worker_id, _ms(lease_s), limit)
        self._cursor = cursor
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            await self.prune_consumers(PRUNE_IDLE_S)
        expires_at = self._now() + lease_s
        self.lease_expiries += sum(int(row[3]) for row in rows)
        return [
            Job(
                id=job_id,
                run_id=run_id,
                attempts=int(attempts),
                max_attempts=self.max_attempts,
                lease_expires_at=expires_at,
            )
            for job_id, run_id, attempts, _ in rows
        ]

    async def extend(self, job: Job, worker_id: str, *, lease_s: float) -> bool:
        """Extend a lease (and ``job.lease_expires_at``); ``False`` if the worker lost it.

        A lease that expired but was not taken by another worker can still be extended.
        """
        expires_at = self._now() + lease_s
        extended = await self._run("extend", self._extend, *_lease(job, worker_id), _ms(lease_s))
        if extended:
            job.lease_expires_at = expires_at
        return bool(extended)

    async def ack(self, job: Job, worker_id: str) -> None:
        """The job is done: remove it. A no-op for a worker that lost the lease."""
        await self._batched("ack", self._ack, *_lease(job, worker_id))

    async def _batched(self, op: str, script: AsyncScript, *args: str | int) -> Any:
        """Run ``script`` as `_run` does, but together with the other calls of ``op`` made in
        the same turn of the event loop: one pipelined round trip for all of them, each still
        its own atomic script. A busy worker acks, and a busy gateway puts, in bursts."""
        if self._state is not _State.OPEN:
            await self.open()
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(op, [])
        pending.append((script, args, result))
        if len(pending) == 1:
            self._senders.add(asyncio.create_task(self._send(op)))
        return await result

    async def _send(self, op: str) -> None:
        await asyncio.sleep(0)  # let the calls of this turn of the loop join
        batch = self._pending.pop(op, [])
        now = "" if self._clock is None else _ms(self._clock())
        try:
            replies = await self._call(op, self._evalsha_all(batch, now))
        except Exception as exc:  # every caller hears of it, whatever it was
            replies = [exc] * len(batch)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._senders.discard(task)
        for (_, _, result), reply in zip(batch, replies, strict=True):
            if result.done():
                continue
            if isinstance(reply, _Failure):  # a script's own error, say
                result.set_exception(self._error(op, reply))
            elif isinstance(reply, BaseException):
                result.set_exception(reply)
            else:
                result.set_result(reply)

    async def _evalsha_all(self, batch: list[_Call], now: str) -> list[Any]:
        """Each call's script by its SHA, pipelined; the replies (errors as values). Plain
        EVALSHA, not redis-py's pipelined `Script`, which asks ``SCRIPT EXISTS`` first: a
        second round trip per batch. A script Redis no longer knows (it restarted) is loaded
        and its calls, which did not run, are sent again."""
        replies: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for _ in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                script, args, _ = batch[i]
                argv = (now, GROUP, self.max_len, *args)
                pipe.evalsha(script.sha, len(self._keys), *self._keys, *argv)
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not todo:
                break
            for script in {batch[i][0] for i in todo}:
                await self._redis.script_load(script.script)
        return replies

    async def nack(self, job: Job, worker_id: str, *, delay_s: float, error: str) -> bool:
        """Retry after ``delay_s`` (``True``), or the attempts are spent and the job is dead.

        A worker that lost the lease changes nothing and gets ``True``: the job lives on elsewhere.
        """
        outcome = await self._run(
            "nack",
            self._nack,
            *_lease(job, worker_id),
            _ms(delay_s),
            error,
            self.max_attempts,
        )
        if outcome == 1 and delay_s <= 0:
            self._wakeup.set()
        return bool(outcome)

    async def release(self, job: Job, worker_id: str) -> None:
        """Give the job back untried (draining worker): ready now, this attempt not counted."""
        if await self._run("release", self._release, *_lease(job, worker_id)):
            self._wakeup.set()

    async def bury(self, job: Job, worker_id: str, *, error: str) -> None:
        """Move the job to the dead state (kept, so the run id cannot be put again)."""
        await self._run("bury", self._bury, *_lease(job, worker_id), error)

    async def present(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` that have a job Redis still holds (ready, leased or dead)."""
        ids = list(run_ids)
        found: set[str] = set()
        for start in range(0, len(ids), _PRESENT_BATCH):
            batch = ids[start : start + _PRESENT_BATCH]
            found.update(await self._run("present", self._present, *batch))
        return found

    async def prune_consumers(self, idle_s: float) -> int:
        """Delete the consumers of the group that hold no job and were idle ``idle_s`` or longer
        (exited workers; each worker process reads under a name of its own); how many went.
        `get` does this every minute for consumers idle ten minutes."""
        return int(await self._run("prune", self._prune, _ms(idle_s)))

    async def stats(self) -> QueueStats:
        """Counts by state (delayed jobs count as ready); a ready job's age is counted from when
        it became available. Exact unless the stream was trimmed."""
        ready, leased, dead, age_ms = await self._run("stats", self._stats)
        return QueueStats(
            ready=int(ready),
            leased=int(leased),
            dead=int(dead),
            oldest_ready_age_s=float(age_ms) / 1000,
        )

    async def wait(self, timeout_s: float) -> None:
        """Return when a job may be ready (a put through this object, or a new stream entry
        since the last `get`, from any process) or after ``timeout_s``. Never raises: when Redis
        is away it sleeps out the timeout, and `get` reports the failure."""
        # The event stays set from a put made while nobody waited, so such a put is not missed.
        if not self._wakeup.is_set():
            self._waiting += 1
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self._keys[0]}")
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await self._wakeup.wait()
            finally:
                self._waiting -= 1
        self._wakeup.clear()

    async def _watch(self) -> None:
        """Block on the stream for an entry newer than the cursor while anyone waits; each
        wakes `wait`. A waiter that gives up (a worker woken by a finished run) leaves the read
        to finish by itself (within `_WAIT_CHUNK_S`): cancelling it would drop its connection,
        to be opened again by the next wait."""
        while self._waiting and self._state is not _State.CLOSED:
            try:
                reply: Any = await self._blocking.xread(
                    {self._keys[0]: self._cursor}, count=1, block=int(_WAIT_CHUNK_S * 1000)
                )
            except _Failure as exc:
                log.debug("waiting on %s failed: %s", self._keys[0], exc)
                await asyncio.sleep(_WAIT_CHUNK_S / 2)
                continue
            if reply:
                self._cursor = str(reply[0][1][-1][0])  # [[stream, [[id, fields]]]]
                self._wakeup.set()

    async def _run(self, op: str, script: AsyncScript, *args: str | int) -> Any:
        if self._state is not _State.OPEN:
            await self.open()
        now = "" if self._clock is None else _ms(self._clock())
        argv = [now, GROUP, self.max_len, *args]
        return await self._call(op, script(keys=self._keys, args=argv))

    async def _call(self, op: str, call: Any) -> Any:
        """Await a Redis call within ``timeout_s``, translating its failures to `QueueError`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except _Failure as exc:
            raise self._error(op, exc) from exc

    def _error(self, op: str, exc: BaseException) -> QueueError:
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
        return QueueError(
            f"Redis queue {self.name!r} at {self.url}: {op} failed ({reason}: {exc});"
            " is Redis up and reachable?"
        )

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock()


_Call = tuple[AsyncScript, tuple[str | int, ...], "asyncio.Future[Any]"]  # script, args, reply


def _retry_once() -> Retry:
    """One more try on a broken connection (a pooled one Redis closed when it restarted); none
    after a timeout, which would double the wait for a Redis that is stalled."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0.0) * 1000:.3f}"


def _lease(job: Job, worker_id: str) -> tuple[str, str, str, int]:
    return (job.run_id, job.id, worker_id, job.attempts)

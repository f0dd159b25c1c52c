"""A simulated model endpoint: deterministic replies, a latency model, injected failures."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal, NoReturn

import msgspec

from surgeflow.errors import (
    ConfigError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surgeflow.models.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    Usage,
)
from surgeflow.text import stem

LatencyModel = Literal["constant", "exponential", "lognormal"]

# Streams sleep at most this often; a fast token rate then costs one timer per batch, not per token.
_STREAM_TICK_S = 0.010

_VOCABULARY_TEXT = """
    the system handles this by splitting work into smaller steps that run in parallel and each
    step reports its result to a coordinator which merges the partial answers a cache in front of
    the model avoids repeated calls for identical prompts while a queue absorbs bursts so that
    latency stays bounded under load and the operator can tune concurrency replicas timeouts
    retries budgets batching throughput memory requests tokens latency percentiles users
    endpoints gateway workers policy routing usually often typically first then finally also
    however therefore because when important useful simple robust efficient careful measured
"""
_VOCABULARY = tuple(_VOCABULARY_TEXT.split())

_STOPWORDS_TEXT = """
    about above after again against also been before being below between both could does doing
    down during each from further have having here into itself just more most much must only
    other over same should some such than that their them then there these they this those
    through under until very what when where which while whom will with would your yours
    please tell explain describe give show make know want need like
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]*")


def compose_reply(messages: Sequence[Message], min_tokens: int, max_tokens: int) -> list[str]:
    """The reply's words: a pure function of ``messages``, ``min_tokens`` to ``max_tokens`` long.

    Like a model told to answer from given material, the reply first restates the sentences of
    the prompt's reference material (see `_grounding`) that share most words with the question,
    then, if it is still short, goes on with filler drawn from a fixed vocabulary. No word
    contains whitespace, so ``len(words)`` is the completion's token count.
    """
    digest = hashlib.blake2b(msgspec.json.encode(messages), digest_size=64).digest()
    n = min_tokens + int.from_bytes(digest[:4], "little") % (max_tokens - min_tokens + 1)
    topic = _topic_words(messages)
    words = ["Regarding", *topic[:-1], topic[-1] + ":"]
    grounding = _grounding(messages)
    for sentence in grounding:
        if len(words) >= n:
            break
        words += sentence.split()
    if grounding:
        # A grounded answer ends politely rather than in filler, and never passes the cap.
        for closing in itertools.cycle(_CLOSINGS):
            if len(words) >= n:
                break
            words += closing.split()
        del words[max_tokens:]
    elif len(words) >= n:
        del words[n:]
    else:
        pool = (*_VOCABULARY, *topic, *topic)
        noise = _random_bytes(digest, n - len(words))
        body = [pool[byte % len(pool)] for byte in noise]
        # Sentences of 6 to 13 words, their lengths drawn from the same bytes.
        end = 5 + noise[0] % 8
        while end < len(body) - 1:
            body[end] += "."
            body[end + 1] = body[end + 1].capitalize()
            end += 6 + (noise[end] >> 5)
        words += body
    if not words[-1].endswith((".", ":", "!")):
        words[-1] += "."
    return words


_CLOSINGS = (
    "I hope this helps.",
    "Let me know if there is anything else I can do for you.",
    "Thank you for your patience.",
)
_SENTENCE_END = re.compile(r"(?<=[.!])\s+|\n+")
_CITATION = re.compile(r"^\s*(\[[^\]]*\]|[-*•]|\d+[.)])\s*")
_TITLE = re.compile(r"^\s*\[[^\]]*\]")


def _grounding(messages: Sequence[Message]) -> list[str]:
    """Statements the prompt gives as material, from the passage closest to the question first.

    Material is every paragraph of the system message but its first (the instructions), or, when
    there is none, the lines of the user's messages; a passage's statements keep their order, and
    questions and fragments under five words are not statements, nor is a cited title line
    (``[rf-05] My item arrived damaged.``) above the passage's text.
    """
    passages: list[str] = []
    user_texts: list[str] = []
    for message in messages:
        text = _text_of(message)
        if message.role == "system":
            passages.extend(text.split("\n\n")[1:])
        elif message.role == "user":
            user_texts.append(text)
    question = _stems(user_texts[-1]) if user_texts else set()
    if not passages:
        passages = user_texts
    ranked: list[tuple[int, int, list[str]]] = []
    for order, passage in enumerate(passages):
        # "[id] title" above its text: the title counts for closeness, but is not restated.
        lines = passage.split("\n")
        body = "\n".join(line for i, line in enumerate(lines) if not _is_title(lines, i))
        sentences = [_CITATION.sub("", raw).strip() for raw in _SENTENCE_END.split(body)]
        statements = [s for s in sentences if len(s.split()) >= 5 and not s.endswith("?")]
        if statements:
            ranked.append((-len(question & _stems(passage)), order, statements))
    ranked.sort()
    return [statement for _, _, statements in ranked for statement in statements]


def _is_title(lines: Sequence[str], i: int) -> bool:
    """Whether ``lines[i]`` is a cited title (``[rf-05] …``) over a line of plain text."""
    following = lines[i + 1] if i + 1 < len(lines) else ""
    return bool(_TITLE.match(lines[i])) and bool(following.strip()) and not _TITLE.match(following)


def _stems(text: str) -> set[str]:
    # Stems, so that "shipping" meets "ship" and "takes" meets "take".
    words = (word.lower() for word in _WORD.findall(text))
    return {stem(word) for word in words if len(word) > 3 and word not in _STOPWORDS}


def _random_bytes(seed: bytes, count: int) -> bytes:
    """``count`` pseudo-random bytes: hashes chained from ``seed`` (blake2b costs about 1 µs)."""
    blocks = [hashlib.blake2b(seed, digest_size=64).digest()]
    while len(blocks) * 64 < count:
        blocks.append(hashlib.blake2b(blocks[-1], digest_size=64).digest())
    return b"".join(blocks)[:count]


def _topic_words(messages: Sequence[Message]) -> list[str]:
    """Up to three salient words of the last user message (``["your", "question"]`` when none)."""
    for message in reversed(messages):
        if message.role == "user":
            found: list[str] = []
            for word in _WORD.findall(_text_of(message)):
                lowered = word.lower()
                if len(word) > 4 and lowered not in _STOPWORDS and lowered not in found:
                    found.append(lowered)
                    if len(found) == 3:
                        break
            if found:
                return found
            break
    return ["your", "question"]


def _text_of(message: Message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return " ".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def count_tokens(messages: Sequence[Message]) -> int:
    """Prompt tokens as whitespace-separated words of every message's text."""
    return sum(len(_text_of(message).split()) for message in messages)


class _TokenBucket:
    """``rate_per_s`` admissions per second with a burst of one second's worth (at least one)."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._updated = time.monotonic()

    def take(self) -> float:
        """Take one token: 0.0 on success, else the seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]
TokenCount = Annotated[int, msgspec.Meta(ge=1)]


class Knobs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a `SimulatedBackend` behaves (see its docstring); all can change at run time."""

    ttft_ms: NonNegative
    tokens_per_s: NonNegative
    latency: LatencyModel
    jitter: NonNegative
    reply_tokens: tuple[TokenCount, TokenCount]
    error_rate: Probability
    rate_limit_rps: Positive | None
    rate_429: Probability
    retry_after_s: NonNegative
    hang_rate: Probability
    slow_factor: Positive
    capacity: Annotated[int, msgspec.Meta(ge=1)] | None = None


KNOB_NAMES = frozenset(Knobs.__struct_fields__)

# A plan's hang_after: a chat hangs unless it is _NO_HANG; a stream hangs after that many chunks.
_NO_HANG = -1


class _Plan(msgspec.Struct):
    """One call, decided before any waiting: what to answer, when, and whether to fail or hang."""

    id: str
    created: int
    words: list[str]
    finish_reason: str
    usage: Usage
    ttft_s: float
    token_s: float
    fail: bool
    hang_after: int


class SimulatedBackend:
    """A model endpoint simulated in-process.

    Replies are deterministic functions of the messages. Latency: the first token after ``ttft_ms``
    (drawn from ``latency``: constant, exponential with that mean, or lognormal with that mean and
    sigma ``jitter``), then ``tokens_per_s``, all times ``slow_factor``. ``ttft_ms=0`` and
    ``tokens_per_s=0`` (infinite) answer without sleeping. Failures, chosen per call:
    ``error_rate`` (500), ``rate_429`` (429 with ``retry_after_s``), ``rate_limit_rps`` (429 once
    over that rate) and ``hang_rate`` (no answer until cancelled or ``timeout_s``; half the hung
    streams stop before their first chunk, half mid-stream). Draws come from ``random.Random``
    seeded by ``(name, seed)``, so a run repeats exactly and two replicas do not fail in lockstep;
    a knob left at 0 draws nothing, so adding knobs does not change existing runs.
    """

    def __init__(
        self,
        name: str,
        *,
        ttft_ms: float = 50.0,
        tokens_per_s: float = 200.0,
        latency: LatencyModel = "constant",
        jitter: float = 0.5,
        reply_tokens: tuple[int, int] = (16, 64),
        error_rate: float = 0.0,
        rate_limit_rps: float | None = None,
        rate_429: float = 0.0,
        retry_after_s: float = 1.0,
        hang_rate: float = 0.0,
        slow_factor: float = 1.0,
        capacity: int | None = None,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.knobs = self._validate(
            {
                "ttft_ms": ttft_ms,
                "tokens_per_s": tokens_per_s,
                "latency": latency,
                "jitter": jitter,
                "reply_tokens": reply_tokens,
                "error_rate": error_rate,
                "rate_limit_rps": rate_limit_rps,
                "rate_429": rate_429,
                "retry_after_s": retry_after_s,
                "hang_rate": hang_rate,
                "slow_factor": slow_factor,
                "capacity": capacity,
            }
        )
        self._bucket = None if rate_limit_rps is None else _TokenBucket(rate_limit_rps)
        self._random = random.Random(f"{name}:{seed}")
        self._ids = itertools.count()
        self.calls = 0
        self.inflight = 0
        self.errors_injected = 0
        self.rate_limited = 0
        self.hangs_injected = 0
        self.closed = False
        self.serving = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def __repr__(self) -> str:
        knobs = self.knobs
        state = " closed" if self.closed else ""
        return (
            f"<SimulatedBackend name={self.name} ttft_ms={knobs.ttft_ms:g} "
            f"tokens_per_s={knobs.tokens_per_s:g} calls={self.calls} "
            f"inflight={self.inflight}{state}>"
        )

    def configure(self, **knobs: Any) -> Knobs:
        """Change the named knobs (see `Knobs`) all at once, or none if one is bad; returns all.

        Raises `ConfigError` naming the bad knob. Calls already under way keep the knobs they
        started with; changing ``rate_limit_rps`` starts a full bucket.
        """
        new = self._validate({**msgspec.structs.asdict(self.knobs), **knobs})
        if new.rate_limit_rps != self.knobs.rate_limit_rps:
            rps = new.rate_limit_rps
            self._bucket = None if rps is None else _TokenBucket(rps)
        self.knobs = new
        return new

    def _validate(self, knobs: dict[str, Any]) -> Knobs:
        unknown = sorted(set(knobs) - KNOB_NAMES)
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown knob {unknown[0]!r}; the knobs are "
                + ", ".join(sorted(KNOB_NAMES))
            )
        try:
            new = msgspec.convert(knobs, Knobs)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{self.name}: invalid knob: {exc}") from None
        low, high = new.reply_tokens
        if low > high:
            raise ConfigError(f"{self.name}: reply_tokens must be (min, max) with min <= max")
        return new

    @contextlib.asynccontextmanager
    async def _capacity(self, timeout_s: float | None) -> AsyncIterator[None]:
        """Serve at most ``capacity`` calls at once, the rest in FIFO order, like a model server's
        batch slots: a replica pushed past its capacity queues, and its latency grows."""
        if self.knobs.capacity is not None and (
            self.serving >= self.knobs.capacity or self._waiting
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                async with asyncio.timeout(timeout_s):
                    await waiter
            except TimeoutError:
                raise UpstreamTimeout(f"{self.name}: queued past {timeout_s:g} s") from None
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
        self.serving += 1
        try:
            yield
        finally:
            self.serving -= 1
            capacity = self.knobs.capacity
            while self._waiting and (capacity is None or self.serving < capacity):
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    @property
    def may_wait(self) -> bool:
        """Whether a call can take any time at all (a latency or a hang is configured)."""
        knobs = self.knobs
        return bool(knobs.ttft_ms or knobs.tokens_per_s or knobs.hang_rate)

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        """Answer ``request`` after ttft + tokens / tokens_per_s."""
        plan = self._plan(request)
        self.inflight += 1
        try:
            queued_at = time.monotonic()
            async with self._capacity(timeout_s):
                if timeout_s is not None:
                    timeout_s -= time.monotonic() - queued_at
                return await self._answer(request, plan, timeout_s)
        finally:
            self.inflight -= 1

    async def _answer(
        self, request: ChatRequest, plan: _Plan, timeout_s: float | None
    ) -> ChatResponse:
        if plan.hang_after != _NO_HANG:
            await self._hang(timeout_s)
        delay_s = plan.ttft_s + len(plan.words) * plan.token_s
        if timeout_s is not None and delay_s > timeout_s:
            await asyncio.sleep(max(timeout_s, 0.0))
            raise UpstreamTimeout(f"{self.name}: no answer within {timeout_s:g} s")
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if plan.fail:
            raise UpstreamError(f"{self.name}: simulated upstream failure", status=500)
        return ChatResponse(
            id=plan.id,
            model=request.model,
            created=plan.created,
            choices=[
                Choice(
                    index=0,
                    message=Message(role="assistant", content=" ".join(plan.words)),
                    finish_reason=plan.finish_reason,
                )
            ],
            usage=plan.usage,
        )

    async def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer ``request`` as chunks: a role chunk after ttft, then one chunk per token."""
        plan = self._plan(request)
        self.inflight += 1
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            deadline = math.inf if timeout_s is None else start + timeout_s
            async with self._capacity(timeout_s):
                start = loop.time()  # the model starts on the call once a slot is free
                if plan.hang_after == 0:
                    await self._hang(timeout_s, deadline - start)
                first_at = start + plan.ttft_s
                if plan.ttft_s:
                    await self._sleep_until(loop, first_at, deadline, timeout_s)
                if plan.fail:
                    raise UpstreamError(f"{self.name}: simulated upstream failure", status=500)

                def chunk(delta: Delta, finish_reason: str | None = None) -> ChatChunk:
                    return ChatChunk(
                        id=plan.id,
                        model=request.model,
                        created=plan.created,
                        choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
                    )

                yield chunk(Delta(role="assistant", content=""))
                token_s = plan.token_s
                last_at = first_at + len(plan.words) * token_s
                for i, word in enumerate(plan.words):
                    if i + 1 == plan.hang_after:
                        await self._hang(timeout_s, deadline - loop.time())
                    if token_s:
                        due = first_at + (i + 1) * token_s
                        now = loop.time()
                        if due > now:
                            # Oversleep to the next tick: tokens due meanwhile go out together.
                            wake = min(max(due, now + _STREAM_TICK_S), last_at)
                            await self._sleep_until(loop, wake, deadline, timeout_s)
                    yield chunk(Delta(content=word if i == 0 else " " + word))
                yield chunk(Delta(), plan.finish_reason)
                if (request.stream_options or {}).get("include_usage"):
                    yield ChatChunk(
                        id=plan.id,
                        model=request.model,
                        created=plan.created,
                        choices=[],
                        usage=plan.usage,
                    )
        finally:
            self.inflight -= 1

    async def aclose(self) -> None:
        """Refuse further calls (there is nothing to release)."""
        self.closed = True

    def _plan(self, request: ChatRequest) -> _Plan:
        """Admit the call (or raise) and decide its reply, latency and fate, with no await."""
        if self.closed:
            raise UpstreamUnavailable(f"{self.name}: backend is closed")
        knobs = self.knobs
        if self._bucket is not None and (wait_s := self._bucket.take()):
            self.rate_limited += 1
            raise RateLimited(
                f"{self.name}: over {self._bucket.rate_per_s:g} req/s; retry after {wait_s:.3f} s",
                retry_after_s=wait_s,
            )
        if knobs.rate_429 > 0 and self._random.random() < knobs.rate_429:
            self.rate_limited += 1
            raise RateLimited(
                f"{self.name}: simulated 429; retry after {knobs.retry_after_s:g} s",
                retry_after_s=knobs.retry_after_s,
            )
        self.calls += 1
        low, high = knobs.reply_tokens
        words = compose_reply(request.messages, low, high)
        finish_reason = "stop"
        cap = request.max_completion_tokens or request.max_tokens
        if cap is not None and cap < len(words):
            del words[cap:]
            finish_reason = "length"
        prompt_tokens = count_tokens(request.messages)
        ttft_s = self._draw_ttft_s() * knobs.slow_factor
        fail = knobs.error_rate > 0 and self._random.random() < knobs.error_rate
        hang_after = _NO_HANG
        if knobs.hang_rate > 0 and self._random.random() < knobs.hang_rate:
            # Half before the first byte, half after the role chunk and some (never all) tokens.
            hang_after = (
                0 if self._random.random() < 0.5 else 1 + self._random.randrange(len(words))
            )
            self.hangs_injected += 1
        elif fail:
            self.errors_injected += 1
        return _Plan(
            id=f"chatcmpl-{self.name}-{next(self._ids)}",
            created=int(time.time()),
            words=words,
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=len(words),
                total_tokens=prompt_tokens + len(words),
            ),
            ttft_s=ttft_s,
            token_s=knobs.slow_factor / knobs.tokens_per_s if knobs.tokens_per_s else 0.0,
            fail=fail,
            hang_after=hang_after,
        )

    def _draw_ttft_s(self) -> float:
        knobs = self.knobs
        mean_s = knobs.ttft_ms / 1000.0
        if mean_s == 0 or knobs.latency == "constant":
            return mean_s
        if knobs.latency == "exponential":
            return self._random.expovariate(1.0 / mean_s)
        # Lognormal with mean ``mean_s``: mu = ln(mean) - sigma^2 / 2.
        sigma = knobs.jitter
        return self._random.lognormvariate(math.log(mean_s) - sigma * sigma / 2, sigma)

    async def _hang(self, timeout_s: float | None, remaining_s: float | None = None) -> NoReturn:
        """Wait until cancelled, or raise `UpstreamTimeout` once the caller's timeout is up."""
        if timeout_s is None:
            never: asyncio.Future[NoReturn] = asyncio.get_running_loop().create_future()
            await never
        await asyncio.sleep(max(0.0, timeout_s if remaining_s is None else remaining_s))
        raise UpstreamTimeout(f"{self.name}: no answer within {timeout_s:g} s")

    async def _sleep_until(
        self,
        loop: asyncio.AbstractEventLoop,
        when: float,
        deadline: float,
        timeout_s: float | None,
    ) -> None:
        if when > deadline:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            raise UpstreamTimeout(f"{self.name}: stream not finished within {timeout_s:g} s")
        delay_s = when - loop.time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)

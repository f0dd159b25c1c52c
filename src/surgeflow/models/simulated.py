"""A simulated model endpoint: deterministic replies, a latency model, injected errors and 429s."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Literal

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


def _grounding(messages: Sequence[Message]) -> list[str]:
    """Statements the prompt gives as material, from the passage closest to the question first.

    Material is every paragraph of the system message but its first (the instructions), or, when
    there is none, the lines of the user's messages; a passage's statements keep their order, and
    questions and fragments under five words are not statements.
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
        sentences = [_CITATION.sub("", raw).strip() for raw in _SENTENCE_END.split(passage)]
        statements = [s for s in sentences if len(s.split()) >= 5 and not s.endswith("?")]
        if statements:
            ranked.append((-len(question & _stems(passage)), order, statements))
    ranked.sort()
    return [statement for _, _, statements in ranked for statement in statements]


def _stems(text: str) -> set[str]:
    # Five letters are a crude stem, enough to match "returns" with "returned".
    return {
        word.lower()[:5]
        for word in _WORD.findall(text)
        if len(word) > 3 and word.lower() not in _STOPWORDS
    }


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


class _Plan(msgspec.Struct):
    """One call, decided before any waiting: what to answer, when, and whether to fail."""

    id: str
    created: int
    words: list[str]
    finish_reason: str
    usage: Usage
    ttft_s: float
    fail: bool


class SimulatedBackend:
    """A model endpoint simulated in-process.

    Replies are deterministic functions of the messages. Latency: the first token after ``ttft_ms``
    (drawn from ``latency``: constant, exponential with that mean, or lognormal with that mean and
    sigma ``jitter``), then ``tokens_per_s``. ``ttft_ms=0`` and ``tokens_per_s=0`` (infinite) answer
    without sleeping. Failures and latency draws come from ``random.Random`` seeded by
    ``(name, seed)``, so a run repeats exactly and two replicas do not fail in lockstep.
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
        seed: int = 0,
    ) -> None:
        if ttft_ms < 0 or tokens_per_s < 0:
            raise ConfigError(f"{name}: ttft_ms and tokens_per_s must be >= 0")
        if latency not in ("constant", "exponential", "lognormal"):
            raise ConfigError(
                f"{name}: latency must be constant, exponential or lognormal, not {latency!r}"
            )
        if jitter < 0:
            raise ConfigError(f"{name}: jitter must be >= 0")
        low, high = reply_tokens
        if not 1 <= low <= high:
            raise ConfigError(f"{name}: reply_tokens must be (min, max) with 1 <= min <= max")
        if not 0.0 <= error_rate <= 1.0:
            raise ConfigError(f"{name}: error_rate must be in [0, 1]")
        if rate_limit_rps is not None and rate_limit_rps <= 0:
            raise ConfigError(f"{name}: rate_limit_rps must be > 0 (or None for no limit)")
        self.name = name
        self.ttft_ms = ttft_ms
        self.tokens_per_s = tokens_per_s
        self.latency = latency
        self.jitter = jitter
        self.reply_tokens = (low, high)
        self.error_rate = error_rate
        self.rate_limit_rps = rate_limit_rps
        self._bucket = None if rate_limit_rps is None else _TokenBucket(rate_limit_rps)
        self._random = random.Random(f"{name}:{seed}")
        self._ids = itertools.count()
        self.calls = 0
        self.inflight = 0
        self.closed = False

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (
            f"<SimulatedBackend name={self.name} ttft_ms={self.ttft_ms:g} "
            f"tokens_per_s={self.tokens_per_s:g} calls={self.calls} "
            f"inflight={self.inflight}{state}>"
        )

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        """Answer ``request`` after ttft + tokens / tokens_per_s."""
        plan = self._plan(request)
        self.inflight += 1
        try:
            delay_s = plan.ttft_s + (
                len(plan.words) / self.tokens_per_s if self.tokens_per_s else 0.0
            )
            if timeout_s is not None and delay_s > timeout_s:
                await asyncio.sleep(timeout_s)
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
        finally:
            self.inflight -= 1

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
            token_s = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
            last_at = first_at + len(plan.words) * token_s
            for i, word in enumerate(plan.words):
                if token_s:
                    due = first_at + (i + 1) * token_s
                    now = loop.time()
                    if due > now:
                        # Oversleep to the next tick so the tokens due meanwhile go out together.
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
        if self._bucket is not None and (wait_s := self._bucket.take()):
            raise RateLimited(
                f"{self.name}: over {self._bucket.rate_per_s:g} req/s; retry after {wait_s:.3f} s",
                retry_after_s=wait_s,
            )
        self.calls += 1
        low, high = self.reply_tokens
        words = compose_reply(request.messages, low, high)
        finish_reason = "stop"
        cap = request.max_completion_tokens or request.max_tokens
        if cap is not None and cap < len(words):
            del words[cap:]
            finish_reason = "length"
        prompt_tokens = count_tokens(request.messages)
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
            ttft_s=self._draw_ttft_s(),
            fail=self.error_rate > 0 and self._random.random() < self.error_rate,
        )

    def _draw_ttft_s(self) -> float:
        mean_s = self.ttft_ms / 1000.0
        if mean_s == 0 or self.latency == "constant":
            return mean_s
        if self.latency == "exponential":
            return self._random.expovariate(1.0 / mean_s)
        # Lognormal with mean ``mean_s``: mu = ln(mean) - sigma^2 / 2.
        sigma = self.jitter
        return self._random.lognormvariate(math.log(mean_s) - sigma * sigma / 2, sigma)

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

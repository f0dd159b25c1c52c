"""The semantic cache: find an earlier prompt that means the same as this one.

It stores no answers. An entry maps a prompt's vector to the exact-cache key of the answer that
prompt got, so answers keep living in the exact tiers (memory, Redis) with their TTLs, tags and
invalidation; a match whose answer has gone is a miss. A lookup embeds the prompt, takes the
nearest entries in its partition above ``threshold`` and serves the first that the judge
accepts (`surgeflow.cache.semantic.judge`: a learned model over the pair, with the hard guards'
veto), or, with ``judge=None``, the first that every guard accepts
(`surgeflow.cache.semantic.guards`).

All model and index work runs on one worker thread, never on the event loop. Lookups that
arrive while the thread is busy are embedded together as one batch, so throughput grows with
load while an idle cache answers one prompt at once.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from surgeflow.cache.semantic.embedder import Embedder, Vectors, WordSimilarity
from surgeflow.cache.semantic.guards import GUARDS, Features, Guards, features
from surgeflow.cache.semantic.index import Vector, VectorIndex
from surgeflow.cache.semantic.judge import Judge, pair_features

# Chosen from the precision/recall curve on the labelled pairs (benchmarks/RESULTS.md).
DEFAULT_THRESHOLD = 0.60
SIMILARITY_BUCKETS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


@dataclass(frozen=True, slots=True)
class Probe:
    """A prompt prepared for lookup; `SemanticCache.add` reuses it when the answer comes."""

    partition: str
    text: str
    vector: Vector
    features: Features


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    cache_key: str
    similarity: float
    text: str  # the cached prompt that matched


_Query = tuple[str, str, float | None]  # partition, text, threshold


@dataclass(slots=True)
class _Entry:
    partition: str
    cache_key: str
    features: Features
    expires_at: float


class SemanticCache:
    """Prompts by meaning, within partitions, bounded to ``max_entries`` (least recently used
    go first) and each kept no longer than the answer it points to."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_entries: int = 100_000,
        candidates: int = 8,
        guards: Guards | None = None,
        judge: Judge | Literal["default"] | None = "default",
        flat_limit: int = 2048,
        max_batch: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be within [-1, 1]")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.embedder = embedder
        self.threshold = threshold
        self.max_entries = max_entries
        self.candidates = candidates
        self._guards = guards
        self.judge = Judge.load() if judge == "default" else judge
        self._clock = clock
        self._index = VectorIndex(embedder.dimension, flat_limit=flat_limit)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._by_key: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgeflow-semantic")
        self._batcher: _Batcher[_Query, tuple[SemanticMatch | None, Probe]] = _Batcher(
            self._lookup_batch, self._executor, max_batch=max_batch
        )
        # Counters, read by `stats()` and the metrics collector; written on the worker thread.
        self.lookups = 0
        self.hits = 0
        self.below_threshold = 0
        self.refused: Counter[str] = Counter()
        self.evictions = 0
        self.similarity_bounds = SIMILARITY_BUCKETS  # cumulative counts of hits ≤ each bound
        self.similarity_buckets = [0] * len(SIMILARITY_BUCKETS)
        self.similarity_sum = 0.0

    def __repr__(self) -> str:
        return (
            f"<SemanticCache entries={len(self._entries)} threshold={self.threshold} "
            f"hits={self.hits}/{self.lookups}>"
        )

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Load the model now, on the worker thread, rather than on the first lookup."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ensure_guards)

    async def lookup(
        self, partition: str, text: str, *, threshold: float | None = None
    ) -> tuple[SemanticMatch | None, Probe]:
        """The best entry in ``partition`` that answers ``text``, if any, and the probe to
        `add` this prompt with once it has its own answer. ``threshold`` overrides the cache's
        for this lookup."""
        return await self._batcher.submit((partition, text, threshold))

    async def add(self, probe: Probe, cache_key: str, *, ttl_s: float) -> None:
        """Remember that ``probe``'s prompt is answered by the exact-cache entry ``cache_key``."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._add, probe, cache_key, ttl_s)

    async def forget(self, cache_key: str) -> None:
        """Drop the entry pointing to ``cache_key`` (its answer has gone)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._forget, cache_key)

    async def clear(self, prefix: str = "") -> int:
        """Drop every entry whose answer's key starts with ``prefix``; how many."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._clear, prefix)

    def stats(self) -> dict[str, int | float]:
        stats: dict[str, int | float] = {
            "entries": len(self._entries),
            "partitions": self._index.partitions,
            "lookups": self.lookups,
            "hits": self.hits,
            "misses": self.lookups - self.hits,
            "below_threshold": self.below_threshold,
            "evictions": self.evictions,
        }
        for guard in (*GUARDS, "judge"):
            stats[f"refused_{guard}"] = self.refused[guard]
        return stats

    async def aclose(self) -> None:
        await self._batcher.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._entries.clear()
        self._by_key.clear()
        self._index.clear()

    # -- on the worker thread ---------------------------------------------------------------

    def _ensure_guards(self) -> Guards:
        if self._guards is None:
            self._guards = Guards(
                word_similarity=WordSimilarity(self.embedder),
                vocabulary=self.embedder.vocabulary(),
            )
        return self._guards

    def _lookup_batch(self, items: Sequence[_Query]) -> list[tuple[SemanticMatch | None, Probe]]:
        guards = self._ensure_guards()
        vectors: Vectors = self.embedder.embed([text for _, text, _ in items])
        now = self._clock()
        results = []
        for (partition, text, threshold), vector in zip(items, vectors, strict=True):
            probe = Probe(partition, text, vector, features(text))
            limit = self.threshold if threshold is None else threshold
            results.append((self._match(probe, guards, now, limit), probe))
        return results

    def _match(
        self, probe: Probe, guards: Guards, now: float, threshold: float
    ) -> SemanticMatch | None:
        self.lookups += 1
        found = self._index.search(probe.partition, probe.vector, self.candidates)
        refusal: str | None = None
        for entry_id, similarity in found:
            if similarity < threshold:
                break
            entry = self._entries.get(entry_id)
            if entry is None:
                continue
            if entry.expires_at <= now:
                self._remove(entry_id)
                continue
            refusal = guards.check(entry.features, probe.features)
            if self.judge is not None:
                pair = pair_features(
                    self._index.vector(entry_id),
                    probe.vector,
                    entry.features,
                    probe.features,
                    guards,
                )
                if not self.judge.accepts(pair, refusal):
                    refusal = refusal or "judge"
                    continue
            elif refusal is not None:
                continue
            self._entries.move_to_end(entry_id)
            self.hits += 1
            self.similarity_sum += similarity
            bucket = bisect.bisect_left(SIMILARITY_BUCKETS, similarity)
            for i in range(min(bucket, len(SIMILARITY_BUCKETS) - 1), len(SIMILARITY_BUCKETS)):
                self.similarity_buckets[i] += 1
            return SemanticMatch(entry.cache_key, similarity, entry.features.text)
        if refusal is not None:
            self.refused[refusal] += 1
        else:
            self.below_threshold += 1
        return None

    def _add(self, probe: Probe, cache_key: str, ttl_s: float) -> None:
        self._forget(cache_key)
        entry_id = next(self._ids)
        self._entries[entry_id] = _Entry(
            probe.partition, cache_key, probe.features, self._clock() + ttl_s
        )
        self._by_key[cache_key] = entry_id
        self._index.add(probe.partition, entry_id, probe.vector)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    def _forget(self, cache_key: str) -> None:
        entry_id = self._by_key.get(cache_key)
        if entry_id is not None:
            self._remove(entry_id)

    def _clear(self, prefix: str) -> int:
        doomed = [i for i, entry in self._entries.items() if entry.cache_key.startswith(prefix)]
        for entry_id in doomed:
            self._remove(entry_id)
        return len(doomed)

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        if self._by_key.get(entry.cache_key) == entry_id:
            del self._by_key[entry.cache_key]
        self._index.remove(entry_id)


In = TypeVar("In")
Out = TypeVar("Out")


class _Batcher(Generic[In, Out]):
    """Run ``fn`` on the executor over items as they come: one call at a time, each taking all
    the items that arrived while the previous one ran (at most ``max_batch``)."""

    def __init__(
        self,
        fn: Callable[[Sequence[In]], list[Out]],
        executor: ThreadPoolExecutor,
        *,
        max_batch: int,
    ) -> None:
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._pending.append((item, future))
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = [(i, f) for i, f in self._pending[: self._max_batch] if not f.done()]
                del self._pending[: self._max_batch]
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._fn, [item for item, _ in batch]
                    )
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._runner = None

    async def aclose(self) -> None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

"""SemanticCache with the real model: hits, partitions, guards, expiry, bounds, batching, close."""

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Sequence

import pytest

from surgeflow.cache.semantic import (
    Guards,
    OnnxEmbedder,
    Probe,
    SemanticCache,
    WordSimilarity,
    features,
)
from surgeflow.cache.semantic.embedder import Vectors

CANCEL = "How do I cancel my gym membership?"
CANCEL_PARAPHRASE = "I'd like to cancel my gym membership, how can I do that?"
RECURSION = "Can you explain recursion to me?"
PIZZA = "Where is the best pizza in NYC?"
TTL = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """The real embedder, recording the size of every batch it is given."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self._embedder = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.batches: list[int] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.batches.append(len(texts))
        return self._embedder.embed(texts)

    def vocabulary(self) -> frozenset[str]:
        return self._embedder.vocabulary()


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    embedder = OnnxEmbedder()
    embedder.load()
    return embedder


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(embedder: OnnxEmbedder, clock: Clock) -> AsyncIterator[SemanticCache]:
    cache = SemanticCache(embedder, clock=clock)
    yield cache
    await cache.aclose()


async def remember(cache: SemanticCache, partition: str, text: str, key: str) -> None:
    match, probe = await cache.lookup(partition, text)
    assert match is None
    await cache.add(probe, key, ttl_s=TTL)


async def test_a_paraphrase_in_the_same_partition_hits(cache: SemanticCache) -> None:
    await cache.start()
    await remember(cache, "tenant-a", CANCEL, "chat:cancel")
    match, probe = await cache.lookup("tenant-a", CANCEL_PARAPHRASE)
    assert match is not None
    assert match.cache_key == "chat:cancel"
    assert match.text == CANCEL
    assert cache.threshold <= match.similarity <= 1.0 + 1e-6
    assert probe.partition == "tenant-a"
    assert probe.text == CANCEL_PARAPHRASE
    assert probe.vector.shape == (cache.embedder.dimension,)
    stats = cache.stats()
    assert (stats["lookups"], stats["hits"], stats["misses"]) == (2, 1, 1)
    assert stats["entries"] == len(cache) == 1
    assert stats["partitions"] == 1


async def test_another_partition_misses(cache: SemanticCache) -> None:
    await remember(cache, "tenant-a", CANCEL, "chat:cancel")
    match, _ = await cache.lookup("tenant-b", CANCEL)
    assert match is None
    match, _ = await cache.lookup("tenant-b", CANCEL_PARAPHRASE)
    assert match is None
    assert cache.stats()["below_threshold"] == 3  # nothing to compare with in tenant-b
    assert cache.stats()["hits"] == 0


async def test_a_look_alike_is_refused_and_counted(cache: SemanticCache) -> None:
    await remember(cache, "t", "convert 100 USD to EUR", "chat:100")
    match, _ = await cache.lookup("t", "convert 150 USD to EUR")
    assert match is None
    stats = cache.stats()
    assert stats["refused_numbers"] == 1
    assert stats["hits"] == 0
    assert sum(v for k, v in stats.items() if k.startswith("refused_")) == 1
    match, _ = await cache.lookup("t", "Convert $100 to EUR")
    assert match is not None
    assert match.cache_key == "chat:100"


async def test_an_entry_expires_with_its_answer(cache: SemanticCache, clock: Clock) -> None:
    match, probe = await cache.lookup("t", CANCEL)
    await cache.add(probe, "chat:cancel", ttl_s=60)
    clock.now += 59
    match, _ = await cache.lookup("t", CANCEL_PARAPHRASE)
    assert match is not None
    clock.now += 1
    match, _ = await cache.lookup("t", CANCEL_PARAPHRASE)
    assert match is None
    assert len(cache) == 0
    assert cache.stats()["partitions"] == 0


async def test_max_entries_evicts_the_least_recently_used(
    embedder: OnnxEmbedder, clock: Clock
) -> None:
    cache = SemanticCache(embedder, max_entries=2, clock=clock)
    try:
        await remember(cache, "t", CANCEL, "chat:cancel")
        await remember(cache, "t", RECURSION, "chat:recursion")
        match, _ = await cache.lookup("t", CANCEL_PARAPHRASE)  # now the most recently used
        assert match is not None
        await remember(cache, "t", PIZZA, "chat:pizza")
        assert len(cache) == 2
        assert cache.stats()["evictions"] == 1
        match, _ = await cache.lookup("t", "Explain recursion")
        assert match is None
        for text, key in [(CANCEL_PARAPHRASE, "chat:cancel"), (PIZZA, "chat:pizza")]:
            match, _ = await cache.lookup("t", text)
            assert match is not None
            assert match.cache_key == key
    finally:
        await cache.aclose()


async def test_forget_and_clear_remove_entries(cache: SemanticCache) -> None:
    await remember(cache, "t", CANCEL, "chat:a:cancel")
    await remember(cache, "t", RECURSION, "chat:a:recursion")
    await remember(cache, "u", PIZZA, "chat:b:pizza")
    assert len(cache) == 3

    await cache.forget("chat:a:cancel")
    await cache.forget("chat:nothing")  # unknown: nothing happens
    assert len(cache) == 2
    match, _ = await cache.lookup("t", CANCEL)
    assert match is None

    assert await cache.clear("chat:a:") == 1
    match, _ = await cache.lookup("t", RECURSION)
    assert match is None
    match, _ = await cache.lookup("u", PIZZA)
    assert match is not None
    assert match.cache_key == "chat:b:pizza"

    assert await cache.clear() == 1
    assert len(cache) == 0
    assert cache.stats()["partitions"] == 0


async def test_adding_a_key_again_replaces_its_entry(cache: SemanticCache) -> None:
    await remember(cache, "t", CANCEL, "chat:k")
    await remember(cache, "t", PIZZA, "chat:k")
    assert len(cache) == 1
    match, _ = await cache.lookup("t", CANCEL)
    assert match is None


async def test_concurrent_lookups_are_embedded_in_batches(
    embedder: OnnxEmbedder, clock: Clock
) -> None:
    recording = Recording(embedder)
    # The guards get the bare embedder, so that only lookups' batches are recorded.
    guards = Guards(word_similarity=WordSimilarity(embedder), vocabulary=embedder.vocabulary())
    cache = SemanticCache(recording, guards=guards, clock=clock, max_batch=32)
    try:
        for text, key in [(CANCEL, "chat:cancel"), (RECURSION, "chat:recursion")]:
            # Added without a lookup, so that the counters count only the 50 below.
            probe = Probe("t", text, embedder.embed([text])[0], features(text))
            await cache.add(probe, key, ttl_s=TTL)
        prompts = [
            [CANCEL_PARAPHRASE, "Explain recursion", f"What is {n} squared?", PIZZA][n % 4]
            for n in range(50)
        ]
        results = await asyncio.gather(*(cache.lookup("t", prompt) for prompt in prompts))
        assert len(results) == 50
        for prompt, (match, probe) in zip(prompts, results, strict=True):
            assert probe.text == prompt
            if prompt == CANCEL_PARAPHRASE:
                assert match is not None
                assert match.cache_key == "chat:cancel"
            elif prompt == "Explain recursion":
                assert match is not None
                assert match.cache_key == "chat:recursion"
            else:
                assert match is None
        # All 50 arrived before the worker took the first batch: two calls, not fifty.
        assert sum(recording.batches) == 50
        assert recording.batches == [32, 18]
        stats = cache.stats()
        assert stats["lookups"] == 50
        assert stats["hits"] == 26
    finally:
        await cache.aclose()


def semantic_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("surgeflow-semantic")]


async def test_aclose_leaves_no_thread_task_or_entry(embedder: OnnxEmbedder) -> None:
    before = semantic_threads()
    cache = SemanticCache(embedder)
    await remember(cache, "t", CANCEL, "chat:cancel")
    assert len(semantic_threads()) == len(before) + 1
    # Lookups still waiting for the worker when the cache closes are cancelled.
    pending = [asyncio.create_task(cache.lookup("t", f"question {n}")) for n in range(40)]
    await asyncio.sleep(0)
    await cache.aclose()
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, (tuple, asyncio.CancelledError))
    assert len(cache) == 0
    assert semantic_threads() == before
    assert asyncio.all_tasks() == {asyncio.current_task()}
    gc.collect()  # an unawaited coroutine or unretrieved exception would warn here: an error

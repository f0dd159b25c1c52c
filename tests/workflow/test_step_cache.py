"""The step cache: TTL per step (else the run's), tags, and entries that do not decode."""

from typing import Any

import pytest

from surgeflow.cache import MemoryCache
from surgeflow.workflow import Context, Workflow, step
from tests.routing.clock import FakeClock


def counting_workflow(name: str = "cached", **cache_options: Any) -> tuple[Workflow, list[str]]:
    calls: list[str] = []

    @step(cache=True, **cache_options)
    async def answer(ctx: Context) -> dict[str, Any]:
        calls.append(ctx.input["q"])
        return {"echo": ctx.input["q"]}

    return Workflow(name, answer), calls


async def test_a_step_keeps_its_output_for_its_own_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_s=1000, clock=clock)
    short, short_calls = counting_workflow("short", cache_ttl_s=5)
    default, default_calls = counting_workflow("default")
    for workflow in (short, default):
        await workflow.run({"q": "a"}, cache=cache, cache_ttl_s=50)
    clock.advance(6)
    for workflow in (short, default):
        await workflow.run({"q": "a"}, cache=cache, cache_ttl_s=50)
    assert (short_calls, default_calls) == (["a", "a"], ["a"])
    clock.advance(45)  # 51 s: past the run's TTL, which the step without its own falls back to
    await default.run({"q": "a"}, cache=cache, cache_ttl_s=50)
    assert default_calls == ["a", "a"]


async def test_a_steps_outputs_are_invalidated_by_its_tags() -> None:
    cache = MemoryCache()
    workflow, calls = counting_workflow("kb", cache_tags=("faq", "kb:v2"))
    other, other_calls = counting_workflow("pricing", cache_tags=("pricing",))
    for question in ("a", "b"):
        await workflow.run({"q": question}, cache=cache)
    await other.run({"q": "c"}, cache=cache)
    assert await cache.invalidate_tag("kb:v2") == 2
    for question in ("a", "b"):
        await workflow.run({"q": question}, cache=cache)
    await other.run({"q": "c"}, cache=cache)
    assert calls == ["a", "b", "a", "b"]
    assert other_calls == ["c"]


async def test_an_entry_that_does_not_decode_is_recomputed_not_raised() -> None:
    cache = MemoryCache()
    workflow, calls = counting_workflow()
    await workflow.run({"q": "a"}, cache=cache)
    [key] = list(cache._entries)
    await cache.set(key, b"\xf5sf1 not an entry")
    assert await workflow.run({"q": "a"}, cache=cache) == {"echo": "a"}
    assert await workflow.run({"q": "a"}, cache=cache) == {"echo": "a"}  # stored again
    assert calls == ["a", "a"]


def test_bad_cache_options_are_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="cache_ttl_s must be > 0"):
        counting_workflow(cache_ttl_s=0)
    with pytest.raises(ValueError, match="invalid cache tag 'no spaces'"):
        counting_workflow(cache_tags=("no spaces",))
    with pytest.raises(TypeError, match="not a string"):
        counting_workflow(cache_tags="faq")

import asyncio
import time
from typing import Any

import msgspec
import pytest

from surgeflow import NotFound, StepError, ValidationError
from surgeflow.cache import MemoryCache
from surgeflow.workflow import Branch, Context, Loop, Map, Parallel, StepEvent, Workflow, step


class Question(msgspec.Struct):
    text: str
    times: int = 1


class Verdict(msgspec.Struct):
    label: str
    score: float


@step
async def first(ctx: Context) -> int:
    return 1


@step
async def second(ctx: Context) -> int:
    return ctx["first"] + 1


async def test_sequential_steps_see_earlier_outputs() -> None:
    wf = Workflow("seq", [first, second])
    assert await wf.run({}) == 2


async def test_output_function_and_typed_input() -> None:
    @step
    async def shout(ctx: Context) -> str:
        return ctx.input.text.upper() * ctx.input.times

    wf = Workflow("typed", shout, input=Question, output=lambda ctx: {"said": ctx["shout"]})
    assert await wf.run({"text": "hi", "times": 2}) == {"said": "HIHI"}


async def test_bad_input_is_a_validation_error_naming_the_field() -> None:
    wf = Workflow("typed", first, input=Question)
    with pytest.raises(ValidationError, match=r"\$\.times"):
        await wf.run({"text": "hi", "times": "many"})
    with pytest.raises(ValidationError, match="text"):
        await wf.run({})
    assert wf.input_schema()["$defs"]["Question"]["required"] == ["text"]


async def test_parallel_runs_branches_at_the_same_time() -> None:
    @step
    async def slow_a(ctx: Context) -> str:
        await asyncio.sleep(0.1)
        return "a"

    @step
    async def slow_b(ctx: Context) -> str:
        await asyncio.sleep(0.1)
        return "b"

    @step
    async def join(ctx: Context) -> str:
        return ctx["slow_a"] + ctx["slow_b"]

    wf = Workflow("fan", [Parallel(slow_a, slow_b), join])
    started = time.perf_counter()
    assert await wf.run({}) == "ab"
    assert time.perf_counter() - started < 0.19


async def test_map_keeps_item_order_and_bounds_concurrency() -> None:
    running = 0
    peak = 0

    @step
    async def square(ctx: Context) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - ctx.index))  # later items finish first
        running -= 1
        return int(ctx.item) ** 2

    wf = Workflow("map", Map(square, over=lambda ctx: range(6), concurrency=3))
    assert await wf.run({}) == [0, 1, 4, 9, 16, 25]
    assert peak == 3


async def test_map_over_nothing_gives_an_empty_list() -> None:
    @step
    async def never(ctx: Context) -> int:
        raise AssertionError("no items, no calls")

    assert await Workflow("empty", Map(never, over=lambda ctx: [])).run({}) == []


@pytest.mark.parametrize(("value", "expected"), [(5, "big"), (1, "small")])
async def test_branch_takes_one_side(value: int, expected: str) -> None:
    @step
    async def big(ctx: Context) -> str:
        return "big"

    @step
    async def small(ctx: Context) -> str:
        return "small"

    @step
    async def size(ctx: Context) -> int:
        return int(ctx.input["n"])

    wf = Workflow(
        "branch",
        [size, Branch(lambda ctx: ctx["size"] > 3, then=big, otherwise=small)],
        output=lambda ctx: (ctx.get("big"), ctx.get("small")),
    )
    result = await wf.run({"n": value})
    assert expected in result
    assert result.count(None) == 1


async def test_loop_runs_until_done_and_is_bounded() -> None:
    @step
    async def think(ctx: Context) -> dict[str, Any]:
        previous = ctx.get("think", {"notes": []})
        return {"notes": [*previous["notes"], ctx.iteration]}

    done_at_two = Workflow(
        "agent", Loop(think, until=lambda ctx: len(ctx["think"]["notes"]) == 3, max_iterations=10)
    )
    assert await done_at_two.run({}) == {"notes": [0, 1, 2]}
    never_done = Workflow("agent", Loop(think, until=lambda ctx: False, max_iterations=4))
    assert await never_done.run({}) == {"notes": [0, 1, 2, 3]}


async def test_retries_with_growing_backoff_then_success() -> None:
    calls = 0

    @step(retries=3, backoff_s=0.01)
    async def flaky(ctx: Context) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return "ok"

    events: list[StepEvent] = []
    assert await Workflow("retry", flaky).run({}, on_event=events.append) == "ok"
    assert [e.type for e in events] == [
        "step.started",
        "step.retrying",
        "step.started",
        "step.retrying",
        "step.started",
        "step.finished",
    ]
    delays = [e.delay_s or 0.0 for e in events if e.type == "step.retrying"]
    assert 0.005 <= delays[0] <= 0.01  # equal jitter: between half and all of the ceiling
    assert 0.01 <= delays[1] <= 0.02
    assert events[-1].attempt == 3


async def test_step_that_keeps_failing_raises_step_error() -> None:
    @step(retries=1, backoff_s=0.001)
    async def broken(ctx: Context) -> None:
        raise ValueError("bad data")

    events: list[StepEvent] = []
    with pytest.raises(StepError, match="step 'broken' failed: ValueError: bad data") as info:
        await Workflow("fail", broken).run({}, on_event=events.append)
    assert info.value.step == "broken"
    assert events[-1].type == "step.failed"
    assert events[-1].attempt == 2


async def test_errors_another_attempt_cannot_fix_are_not_retried() -> None:
    calls = 0

    @step(retries=3, backoff_s=0.001)
    async def lookup(ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise NotFound("no user 'nobody'")

    with pytest.raises(StepError, match="no user 'nobody'") as info:
        await Workflow("lookup", lookup).run({})
    assert calls == 1
    assert isinstance(info.value.__cause__, NotFound)


async def test_timeout_fails_the_step() -> None:
    @step(timeout_s=0.05)
    async def hangs(ctx: Context) -> None:
        await asyncio.sleep(10)

    started = time.perf_counter()
    with pytest.raises(StepError, match=r"timed out after 0\.05 s"):
        await Workflow("hang", hangs).run({})
    assert time.perf_counter() - started < 1


async def test_a_failing_branch_cancels_its_siblings() -> None:
    cancelled = asyncio.Event()

    @step
    async def fails(ctx: Context) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    @step
    async def waits(ctx: Context) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(StepError, match="boom"):
        await Workflow("par", Parallel(fails, waits)).run({})
    assert cancelled.is_set()


async def test_cancelling_a_run_is_not_swallowed_by_except_exception() -> None:
    reached = asyncio.Event()
    after = False

    @step(retries=5)
    async def stubborn(ctx: Context) -> None:
        try:
            reached.set()
            await asyncio.sleep(10)
        except Exception:  # a user's broad handler must not catch cancellation
            pass

    @step
    async def later(ctx: Context) -> None:
        nonlocal after
        after = True

    task = asyncio.create_task(Workflow("cancel", [stubborn, later]).run({}))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not after


async def test_resume_skips_checkpointed_steps_and_restores_types() -> None:
    calls: dict[str, int] = {"judge": 0, "score": 0, "final": 0}
    crash = True

    @step
    async def judge(ctx: Context) -> Verdict:
        calls["judge"] += 1
        return Verdict(label="good", score=0.9)

    @step
    async def score(ctx: Context) -> int:
        calls["score"] += 1
        return int(ctx.item) * 10

    @step
    async def final(ctx: Context) -> str:
        calls["final"] += 1
        if crash:
            raise RuntimeError("worker died here")
        verdict = ctx["judge"]
        assert isinstance(verdict, Verdict)  # decoded back into its type, not a dict
        return f"{verdict.label}:{sum(ctx['score'])}"

    wf = Workflow("resume", [judge, Map(score, over=lambda ctx: [1, 2, 3]), final])
    saved: dict[str, bytes] = {}

    async def checkpoint(key: str, output: bytes) -> None:
        saved[key] = output

    with pytest.raises(StepError):
        await wf.run({}, on_checkpoint=checkpoint)
    assert sorted(saved) == ["judge", "score[0]", "score[1]", "score[2]"]
    crash = False
    assert await wf.run({}, checkpoints=saved, on_checkpoint=checkpoint) == "good:60"
    assert calls == {"judge": 1, "score": 3, "final": 2}
    assert "final" in saved


async def test_loop_checkpoints_are_per_iteration() -> None:
    @step
    async def tick(ctx: Context) -> int:
        return ctx.iteration

    saved: dict[str, bytes] = {}

    async def checkpoint(key: str, output: bytes) -> None:
        saved[key] = output

    wf = Workflow("ticks", Loop(tick, until=lambda ctx: ctx["tick"] == 2, max_iterations=5))
    await wf.run({}, on_checkpoint=checkpoint)
    assert list(saved) == ["loop#0/tick", "loop#1/tick", "loop#2/tick"]


async def test_cached_step_runs_once_per_distinct_input() -> None:
    calls = 0

    @step(cache=True)
    async def expensive(ctx: Context) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"echo": ctx.input["q"]}

    wf = Workflow("cached", expensive)
    cache = MemoryCache()
    events: list[StepEvent] = []
    assert await wf.run({"q": "a"}, cache=cache) == {"echo": "a"}
    assert await wf.run({"q": "a"}, cache=cache, on_event=events.append) == {"echo": "a"}
    assert await wf.run({"q": "b"}, cache=cache) == {"echo": "b"}
    assert calls == 2
    assert [e.type for e in events] == ["step.cached"]


def test_definition_errors_are_caught_early() -> None:
    async def not_a_step(ctx: Context) -> None:
        return None

    def sync(ctx: Context) -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        step(sync)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two different steps named"):
        Workflow("dup", [step(not_a_step), step(not_a_step)])
    with pytest.raises(ValueError, match="max_iterations"):
        Loop(step(not_a_step), until=lambda ctx: True, max_iterations=0)
    with pytest.raises(ValueError, match="no steps"):
        Workflow("empty", [])


async def test_events_report_each_step_with_duration() -> None:
    events: list[StepEvent] = []
    await Workflow("seq", [first, second]).run({}, on_event=events.append)
    assert [(e.type, e.step) for e in events] == [
        ("step.started", "first"),
        ("step.finished", "first"),
        ("step.started", "second"),
        ("step.finished", "second"),
    ]
    assert all(e.duration_ms is not None and e.duration_ms >= 0 for e in events[1::2])


async def test_a_step_has_one_idempotency_key_for_all_its_attempts() -> None:
    seen: list[tuple[str, int]] = []

    @step(retries=2, backoff_s=0.001)
    async def charge(ctx: Context) -> str:
        seen.append((ctx.idempotency_key, ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError("the payment service timed out")
        return "charged"

    @step
    async def item(ctx: Context) -> str:
        return ctx.idempotency_key

    wf = Workflow("pay", [charge, Map(item, over=lambda ctx: [0, 1])])
    result = await wf.run({}, run_id="run_1")
    assert seen == [("run_1:charge", 1), ("run_1:charge", 2), ("run_1:charge", 3)]
    assert result == ["run_1:item[0]", "run_1:item[1]"]  # each element its own key

"""The Store contract, run against every backend (the `store` fixture is parametrised)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from surgeflow.errors import Conflict, NotFound, StoreError, ValidationError
from surgeflow.store.base import ApiKey, Run, RunStatus
from tests.store.conftest import AnyStore, StoreFactory


async def test_create_and_get(store: AnyStore) -> None:
    run, created = await store.create_run("summarise", {"text": "hi", "n": [1, 2]}, key_id="k1")
    assert created
    assert re.fullmatch(r"run_[A-Za-z0-9_-]{20}", run.id)
    assert run.status is RunStatus.QUEUED
    assert run.attempts == 0
    assert run.started_at is None
    assert run.finished_at is None
    assert await store.get_run(run.id) == run


async def test_create_is_idempotent_per_key_and_api_key(store: AnyStore) -> None:
    first, created = await store.create_run("wf", {"a": 1}, idempotency_key="abc", key_id="k1")
    again, created_again = await store.create_run(
        "wf", {"a": 2}, idempotency_key="abc", key_id="k1"
    )
    assert created
    assert not created_again
    assert again == first
    other_tenant, created_other = await store.create_run(
        "wf", {"a": 1}, idempotency_key="abc", key_id="k2"
    )
    assert created_other
    assert other_tenant.id != first.id
    no_key = [await store.create_run("wf", {}) for _ in range(2)]
    assert all(created for _, created in no_key)
    assert no_key[0][0].id != no_key[1][0].id


async def test_concurrent_creates_with_one_key_make_one_run(store: AnyStore) -> None:
    results = await asyncio.gather(
        *(store.create_run("wf", {}, idempotency_key="same") for _ in range(50))
    )
    assert len({run.id for run, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_unknown_ids_raise_not_found(store: AnyStore) -> None:
    with pytest.raises(NotFound):
        await store.get_run("run_nope")
    with pytest.raises(NotFound):
        await store.start_run("run_nope")
    with pytest.raises(NotFound):
        await store.finish_run("run_nope", RunStatus.SUCCEEDED)
    with pytest.raises(NotFound):
        await store.request_cancel("run_nope")
    with pytest.raises(NotFound):
        await store.save_checkpoint("run_nope", "step", b"1")
    with pytest.raises(NotFound):
        await store.append_event("run_nope", "started")
    with pytest.raises(NotFound):
        await store.revoke_api_key("key_nope")
    assert await store.load_checkpoints("run_nope") == {}
    assert await store.list_events("run_nope") == []


async def test_start_counts_attempts_and_keeps_first_start(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    first, checkpoints = await store.start_run(run.id)
    assert first.status is RunStatus.RUNNING
    assert first.attempts == 1
    assert first.started_at is not None
    assert checkpoints == {}
    await store.save_checkpoint(run.id, "fetch", b'{"pages": 4}')
    second, checkpoints = await store.start_run(run.id)
    assert second.attempts == 2
    assert second.started_at == first.started_at
    assert checkpoints == {"fetch": b'{"pages": 4}'}  # what the first attempt saved


async def test_start_writes_the_started_event_with_the_start(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {}, queued_event={})
    await store.save_checkpoint(run.id, "fetch", b"1")
    seen: list[tuple[int, dict[str, bytes]]] = []

    def started(begun: Run, checkpoints: dict[str, bytes]) -> dict[str, Any] | None:
        seen.append((begun.attempts, checkpoints))
        return {"resumed_steps": len(checkpoints)} if begun.attempts == 1 else None

    await store.start_run(run.id, started_event=started)
    await store.start_run(run.id, started_event=started)  # None: no event this time
    events = await store.list_events(run.id)
    assert [(e.seq, e.type, e.data) for e in events] == [
        (1, "run.queued", None),
        (2, "run.started", {"resumed_steps": 1}),
    ]
    assert seen == [(1, {"fetch": b"1"}), (2, {"fetch": b"1"})]
    await store.finish_run(run.id, RunStatus.SUCCEEDED)
    await store.start_run(run.id, started_event=started)  # terminal: not started, not called
    assert len(seen) == 2


async def test_finish_sets_outcome_once(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.start_run(run.id)
    done, ended = await store.finish_run(run.id, RunStatus.SUCCEEDED, output={"answer": 42})
    assert ended
    assert done.status is RunStatus.SUCCEEDED
    assert done.output == {"answer": 42}
    assert done.finished_at is not None
    later, ended_again = await store.finish_run(run.id, RunStatus.FAILED, error="too late")
    assert not ended_again  # exactly one caller ends a run
    assert later == done
    assert await store.get_run(run.id) == done
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_run(run.id, RunStatus.RUNNING)


async def test_failed_run_keeps_its_error(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    failed, _ = await store.finish_run(run.id, RunStatus.FAILED, error="step 'a' failed: boom")
    assert failed.status is RunStatus.FAILED
    assert failed.error == "step 'a' failed: boom"
    assert failed.output is None
    assert await store.get_run(run.id) == failed


async def test_cancel_queued_run_at_once(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    cancelled = await store.request_cancel(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.finished_at is not None
    # A worker that picks the job up afterwards finds it terminal and untouched.
    assert await store.start_run(run.id) == (cancelled, {})


async def test_cancel_running_run_sets_the_flag(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.start_run(run.id)
    flagged = await store.request_cancel(run.id)
    assert flagged.status is RunStatus.RUNNING
    assert flagged.cancel_requested
    assert flagged.finished_at is None
    done, _ = await store.finish_run(run.id, RunStatus.CANCELLED)
    assert await store.request_cancel(run.id) == done


async def test_list_runs_newest_first_and_filtered(store: AnyStore) -> None:
    ids = [(await store.create_run("wf", {"i": i}))[0].id for i in range(5)]
    await store.start_run(ids[1])
    await store.start_run(ids[3])
    assert [r.id for r in await store.list_runs()] == ids[::-1]
    assert [r.id for r in await store.list_runs(limit=2)] == [ids[4], ids[3]]
    running = await store.list_runs(statuses=frozenset({RunStatus.RUNNING}))
    assert [r.id for r in running] == [ids[3], ids[1]]
    both = await store.list_runs(statuses=frozenset({RunStatus.RUNNING, RunStatus.QUEUED}))
    assert len(both) == 5
    assert await store.list_runs(statuses=frozenset()) == []
    assert await store.list_runs(limit=0) == []


async def test_list_runs_pages_by_key(store: AnyStore) -> None:
    ids = [(await store.create_run("wf", {"i": i}))[0].id for i in range(7)]
    for run_id in ids[::2]:
        await store.start_run(run_id)
    running = frozenset({RunStatus.RUNNING})
    pages: list[list[str]] = []
    before: str | None = None
    while page := await store.list_runs(statuses=running, limit=2, before=before):
        pages.append([run.id for run in page])
        before = page[-1].id
        await store.create_run("wf", {"late": True})  # new runs never shift later pages
    assert pages == [[ids[6], ids[4]], [ids[2], ids[0]]]
    everything = [r.id for r in await store.list_runs(limit=100)]
    assert [r.id for r in await store.list_runs(before=ids[3])] == everything[
        everything.index(ids[3]) + 1 :
    ]
    assert await store.list_runs(before="run_nope") == []


async def test_checkpoints_round_trip(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.save_checkpoint(run.id, "fetch", b'{"pages": 3}')
    await store.save_checkpoint(run.id, "draft", b'"text"')
    await store.save_checkpoint(run.id, "fetch", b'{"pages": 4}')
    assert await store.load_checkpoints(run.id) == {"fetch": b'{"pages": 4}', "draft": b'"text"'}


async def test_checkpoints_keep_any_bytes(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    blob = bytes(range(256)) * 4
    await store.save_checkpoint(run.id, "binary", blob)
    await store.save_checkpoint(run.id, "empty", b"")
    assert await store.load_checkpoints(run.id) == {"binary": blob, "empty": b""}


async def test_event_seqs_stay_strictly_increasing_under_concurrency(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    other, _ = await store.create_run("wf", {})
    appended = await asyncio.gather(
        *(store.append_event(run.id, "tick", step=f"s{i}", data={"i": i}) for i in range(200)),
        store.append_event(other.id, "started"),
    )
    assert sorted(e.seq for e in appended[:200]) == list(range(1, 201))
    assert appended[200].seq == 1
    events = await store.list_events(run.id)
    assert [e.seq for e in events] == list(range(1, 201))
    assert events == sorted(appended[:200], key=lambda e: e.seq)
    assert [e.seq for e in await store.list_events(run.id, after_seq=195)] == [
        196,
        197,
        198,
        199,
        200,
    ]


async def test_two_stores_on_one_database_share_runs_and_seqs(
    store: AnyStore, store_factory: StoreFactory
) -> None:
    """What two processes on one database see: each other's runs, one gapless seq per run."""
    async with store_factory() as second:
        run, _ = await store.create_run("wf", {}, idempotency_key="k")
        again, created = await second.create_run("wf", {}, idempotency_key="k")
        assert not created
        assert again == run
        appended = await asyncio.gather(
            *(s.append_event(run.id, "tick") for _ in range(50) for s in (store, second))
        )
        assert sorted(e.seq for e in appended) == list(range(1, 101))
        assert [e.seq for e in await second.list_events(run.id)] == list(range(1, 101))


async def test_cancelled_appends_leave_no_gap(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    tasks = [asyncio.create_task(store.append_event(run.id, "tick")) for _ in range(100)]
    await asyncio.sleep(0)
    for task in tasks[50:]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    after = await store.append_event(run.id, "after")
    seqs = [e.seq for e in await store.list_events(run.id)]
    # Some cancelled appends may have landed, but none half-way: the seqs have no hole.
    assert seqs == list(range(1, after.seq + 1))
    assert len(seqs) >= 51


async def test_values_round_trip_exactly(store: AnyStore) -> None:
    data = {
        "float": 1e20,
        "small": 5e-324,
        "int": 2**62,
        "neg": -0.5,
        "text": 'nul \x00, emoji 🦜, quote " and back\\slash',
        "nested": {"list": [1, "two", None, True, {"x": []}]},
        "unicode key é": "",
    }
    run, _ = await store.create_run("wf", data)
    assert (await store.get_run(run.id)).input == data
    for output in ("just text", [1, 2.5], 0, False, data):
        other, _ = await store.create_run("wf", {})
        finished, _ = await store.finish_run(other.id, RunStatus.SUCCEEDED, output=output)
        assert finished.output == output
        assert type(finished.output) is type(output)
        assert (await store.get_run(other.id)).output == output
    await store.append_event(run.id, "bare")
    await store.append_event(run.id, "full", step="s", data=data)
    bare, full = await store.list_events(run.id)
    assert (bare.step, bare.data) == (None, None)
    assert (full.step, full.data) == ("s", data)
    assert isinstance(full.data["float"], float)


async def test_api_keys(store: AnyStore) -> None:
    key = ApiKey(id="key_a", name="team-a", hash="h" * 64, created_at=1.0)
    await store.add_api_key(key)
    await store.add_api_key(ApiKey(id="key_b", name="team-b", hash="g" * 64, created_at=2.0))
    assert [k.id for k in await store.list_api_keys()] == ["key_a", "key_b"]
    with pytest.raises(Conflict):
        await store.add_api_key(ApiKey(id="key_c", name="dup", hash="h" * 64, created_at=3.0))
    revoked = await store.revoke_api_key("key_a")
    assert revoked.revoked_at is not None
    assert (await store.revoke_api_key("key_a")).revoked_at == revoked.revoked_at
    listed = {k.id: k for k in await store.list_api_keys()}
    assert listed["key_a"] == revoked
    assert listed["key_b"].revoked_at is None


async def test_api_key_ids_are_unique_and_flags_kept(store: AnyStore) -> None:
    admin = ApiKey(id="key_x", name="ops", hash="x" * 64, created_at=1.5, admin=True)
    await store.add_api_key(admin)
    with pytest.raises(Conflict):
        await store.add_api_key(ApiKey(id="key_x", name="other", hash="z" * 64, created_at=2.0))
    # Equal creation times list in byte order of the id.
    for key_id in ("key_b", "key_B", "key_a"):
        await store.add_api_key(ApiKey(id=key_id, name=key_id, hash=key_id * 8, created_at=3.0))
    assert [k.id for k in await store.list_api_keys()] == ["key_x", "key_B", "key_a", "key_b"]
    assert (await store.list_api_keys())[0] == admin


async def test_an_api_key_may_opt_out_of_the_cache(store: AnyStore) -> None:
    opted_out = ApiKey(id="key_n", name="n", hash="n" * 64, created_at=1.0, cache=False)
    await store.add_api_key(opted_out)
    await store.add_api_key(ApiKey(id="key_y", name="y", hash="y" * 64, created_at=2.0))
    assert {k.id: k.cache for k in await store.list_api_keys()} == {"key_n": False, "key_y": True}


async def test_values_that_are_not_json_are_rejected(store: AnyStore) -> None:
    with pytest.raises(ValidationError):
        await store.create_run("wf", {"when": object()})
    run, _ = await store.create_run("wf", {})
    with pytest.raises(ValidationError):
        await store.finish_run(run.id, RunStatus.SUCCEEDED, output=[object()])
    with pytest.raises(ValidationError):
        await store.append_event(run.id, "tick", data={"x": object()})
    assert await store.list_events(run.id) == []


async def test_opens_lazily_and_reports_use_after_close(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert "state=unopened" in repr(store)
    run, _ = await store.create_run("wf", {})  # no explicit open
    assert "state=open" in repr(store)
    await store.aclose()
    assert "state=closed" in repr(store)
    with pytest.raises(StoreError, match="closed"):
        await store.get_run(run.id)
    with pytest.raises(StoreError, match="closed"):
        await store.open()
    await store.aclose()  # idempotent


async def test_open_is_idempotent_and_concurrent(store_factory: StoreFactory) -> None:
    store = store_factory()
    opened = await asyncio.gather(*(store.open() for _ in range(5)))
    assert all(s is store for s in opened)
    assert await store.list_runs() == []
    await store.aclose()


async def test_of_two_concurrent_finishes_exactly_one_ends_the_run(store: AnyStore) -> None:
    runs = [(await store.create_run("wf", {}))[0] for _ in range(20)]
    for run in runs:
        await store.start_run(run.id)
    results = await asyncio.gather(
        *(store.finish_run(run.id, RunStatus.SUCCEEDED, output=n) for run in runs for n in (1, 2))
    )
    for index, run in enumerate(runs):
        (first, first_ended), (second, second_ended) = results[2 * index : 2 * index + 2]
        assert first_ended != second_ended, run.id
        assert first == second  # both see the one outcome


async def test_finishing_appends_the_terminal_event_in_the_same_write(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.append_event(run.id, "run.started")
    _, ended = await store.finish_run(
        run.id, RunStatus.FAILED, error="boom", event_data={"error": "boom"}
    )
    assert ended
    _, again = await store.finish_run(run.id, RunStatus.SUCCEEDED, event_data={"late": True})
    assert not again
    events = await store.list_events(run.id)
    assert [(e.seq, e.type, e.data) for e in events] == [
        (1, "run.started", None),
        (2, "run.failed", {"error": "boom"}),  # one terminal event, from the call that ended it
    ]


async def test_a_run_can_be_created_with_its_queued_event(store: AnyStore) -> None:
    run, created = await store.create_run(
        "wf", {}, idempotency_key="k", queued_event={"workflow": "wf"}
    )
    assert created
    again, created_again = await store.create_run(
        "wf", {}, idempotency_key="k", queued_event={"workflow": "wf"}
    )
    assert not created_again
    assert again == run
    await store.append_event(run.id, "run.started")
    events = await store.list_events(run.id)
    assert [(e.seq, e.type, e.data) for e in events] == [
        (1, "run.queued", {"workflow": "wf"}),  # written with the run, once
        (2, "run.started", None),
    ]


async def test_events_appended_together_keep_their_order_and_numbers(store: AnyStore) -> None:
    run, _ = await store.create_run("wf", {}, queued_event={})
    batch = [("step.started", "a", {"attempt": 1}), ("step.finished", "a", None), ("x", None, {})]
    appended = await store.append_events(run.id, batch)
    assert [e.seq for e in appended] == [2, 3, 4]
    assert await store.append_events(run.id, []) == []
    later = await store.append_event(run.id, "run.succeeded")
    assert later.seq == 5
    events = await store.list_events(run.id)
    assert [(e.seq, e.type, e.step, e.data) for e in events[1:]] == [
        (2, "step.started", "a", {"attempt": 1}),
        (3, "step.finished", "a", None),
        (4, "x", None, {}),
        (5, "run.succeeded", None, None),
    ]
    with pytest.raises(NotFound):
        await store.append_events("run_nope", batch)

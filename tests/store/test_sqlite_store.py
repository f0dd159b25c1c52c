"""Tests of the SQLite Store."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surgeflow._sqlite import SQLiteDatabase
from surgeflow.errors import Conflict, NotFound, StoreError, ValidationError
from surgeflow.queue.sqlite import SQLiteQueue
from surgeflow.store.base import ApiKey, RunStatus
from surgeflow.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(f"sqlite:///{tmp_path}/store.db") as s:
        yield s


async def test_create_and_get(store: SQLiteStore) -> None:
    run, created = await store.create_run("summarise", {"text": "hi", "n": [1, 2]}, key_id="k1")
    assert created
    assert re.fullmatch(r"run_[A-Za-z0-9_-]{20}", run.id)
    assert run.status is RunStatus.QUEUED
    assert run.attempts == 0
    assert run.started_at is None
    assert run.finished_at is None
    assert await store.get_run(run.id) == run


async def test_create_is_idempotent_per_key_and_api_key(store: SQLiteStore) -> None:
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


async def test_concurrent_creates_with_one_key_make_one_run(store: SQLiteStore) -> None:
    results = await asyncio.gather(
        *(store.create_run("wf", {}, idempotency_key="same") for _ in range(50))
    )
    assert len({run.id for run, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_unknown_ids_raise_not_found(store: SQLiteStore) -> None:
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


async def test_start_counts_attempts_and_keeps_first_start(store: SQLiteStore) -> None:
    run, _ = await store.create_run("wf", {})
    first = await store.start_run(run.id)
    assert first.status is RunStatus.RUNNING
    assert first.attempts == 1
    assert first.started_at is not None
    second = await store.start_run(run.id)
    assert second.attempts == 2
    assert second.started_at == first.started_at


async def test_finish_sets_outcome_once(store: SQLiteStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.start_run(run.id)
    done = await store.finish_run(run.id, RunStatus.SUCCEEDED, output={"answer": 42})
    assert done.status is RunStatus.SUCCEEDED
    assert done.output == {"answer": 42}
    assert done.finished_at is not None
    later = await store.finish_run(run.id, RunStatus.FAILED, error="too late")
    assert later == done
    assert await store.get_run(run.id) == done
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_run(run.id, RunStatus.RUNNING)


async def test_cancel_queued_run_at_once(store: SQLiteStore) -> None:
    run, _ = await store.create_run("wf", {})
    cancelled = await store.request_cancel(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.finished_at is not None
    # A worker that picks the job up afterwards finds it terminal and untouched.
    assert await store.start_run(run.id) == cancelled


async def test_cancel_running_run_sets_the_flag(store: SQLiteStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.start_run(run.id)
    flagged = await store.request_cancel(run.id)
    assert flagged.status is RunStatus.RUNNING
    assert flagged.cancel_requested
    assert flagged.finished_at is None
    done = await store.finish_run(run.id, RunStatus.CANCELLED)
    assert await store.request_cancel(run.id) == done


async def test_list_runs_newest_first_and_filtered(store: SQLiteStore) -> None:
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


async def test_checkpoints_round_trip(store: SQLiteStore) -> None:
    run, _ = await store.create_run("wf", {})
    await store.save_checkpoint(run.id, "fetch", b'{"pages": 3}')
    await store.save_checkpoint(run.id, "draft", b'"text"')
    await store.save_checkpoint(run.id, "fetch", b'{"pages": 4}')
    assert await store.load_checkpoints(run.id) == {"fetch": b'{"pages": 4}', "draft": b'"text"'}


async def test_event_seqs_stay_strictly_increasing_under_concurrency(store: SQLiteStore) -> None:
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


async def test_api_keys(store: SQLiteStore) -> None:
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


async def test_values_that_are_not_json_are_rejected(store: SQLiteStore) -> None:
    with pytest.raises(ValidationError):
        await store.create_run("wf", {"when": object()})
    run, _ = await store.create_run("wf", {})
    with pytest.raises(ValidationError):
        await store.finish_run(run.id, RunStatus.SUCCEEDED, output=[object()])


async def test_opens_lazily_and_reports_failures_as_store_errors(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "lazy.db")
    run, _ = await store.create_run("wf", {})  # no explicit open
    assert "state=open" in repr(store)
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.get_run(run.id)

    broken = SQLiteStore(tmp_path / "no-such-dir" / "x.db")
    with pytest.raises(StoreError):
        await broken.get_run(run.id)
    await broken.aclose()


async def test_store_and_queue_share_a_database(tmp_path: Path) -> None:
    async with SQLiteDatabase(tmp_path / "shared.db") as db:
        store, queue = SQLiteStore(db), SQLiteQueue(db)
        run, _ = await store.create_run("wf", {})
        assert await queue.put(run.id)
        await store.aclose()  # the store did not open the database, so it leaves it open
        [job] = await queue.get("w", lease_s=5)
        assert job.run_id == run.id
        assert await SQLiteStore(db).get_run(run.id) == run
        await queue.aclose()
        assert "state=open" in repr(db)


async def test_an_api_key_may_opt_out_of_the_cache(store: SQLiteStore) -> None:
    opted_out = ApiKey(id="key_n", name="n", hash="n" * 64, created_at=1.0, cache=False)
    await store.add_api_key(opted_out)
    await store.add_api_key(ApiKey(id="key_y", name="y", hash="y" * 64, created_at=2.0))
    assert {k.id: k.cache for k in await store.list_api_keys()} == {"key_n": False, "key_y": True}

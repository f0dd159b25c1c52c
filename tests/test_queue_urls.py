"""Which queue a configuration gets, and the errors for the ones it cannot have."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgeflow import ConfigError, load_settings
from surgeflow.config import Settings
from surgeflow.queue.rabbitmq import RabbitMQQueue
from surgeflow.queue.redis import RedisQueue
from surgeflow.queue.sqlite import SQLiteQueue
from surgeflow.service import _build_queue
from surgeflow.store.sqlite import SQLiteStore

PG = "postgresql://surgeflow:secret@db:5432/surgeflow"


def settings(tmp_path: Path, **env: str) -> Settings:
    base = {"SURGEFLOW_STORE__URL": f"sqlite:///{tmp_path / 'runs.db'}"}
    return load_settings(env={**base, **{f"SURGEFLOW_{k.upper()}": v for k, v in env.items()}})


def build(config: Settings, tmp_path: Path) -> object:
    return _build_queue(config, SQLiteStore(tmp_path / "runs.db"))


def test_the_embedded_queue_shares_the_store_file(tmp_path: Path) -> None:
    assert isinstance(build(settings(tmp_path), tmp_path), SQLiteQueue)


def test_redis_and_rabbitmq_urls(tmp_path: Path) -> None:
    redis = build(settings(tmp_path, queue__url="redis://127.0.0.1:6379/0"), tmp_path)
    assert isinstance(redis, RedisQueue)
    rabbit = build(
        settings(tmp_path, queue__url="amqp://guest:guest@127.0.0.1/", queue__index_url=PG),
        tmp_path,
    )
    assert isinstance(rabbit, RabbitMQQueue)
    assert "secret" not in repr(rabbit)
    assert "guest:guest" not in repr(rabbit)


def test_rabbitmq_takes_a_postgresql_stores_database_as_its_index(tmp_path: Path) -> None:
    config = settings(tmp_path, store__url=PG, queue__url="amqp://127.0.0.1/")
    assert isinstance(build(config, tmp_path), RabbitMQQueue)


def test_rabbitmq_without_an_index_is_a_clear_error(tmp_path: Path) -> None:
    config = settings(tmp_path, queue__url="amqp://guest:hunter2@127.0.0.1/")
    with pytest.raises(ConfigError, match="index_url") as caught:
        build(config, tmp_path)
    assert "hunter2" not in str(caught.value)


def test_a_postgresql_store_needs_a_queue(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a queue"):
        build(settings(tmp_path, store__url=PG), tmp_path)


def test_an_unknown_queue_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported queue URL 'kafka://k:9092'"):
        build(settings(tmp_path, queue__url="kafka://k:9092"), tmp_path)

"""The config the tuning tests serve: a model ``sim`` on two simulated endpoints of a 20 ms
lognormal call each, with room to queue, so a test's arithmetic stays simple."""

from pathlib import Path
from typing import Any

import yaml

SERVICE_MS = 20.0
ENDPOINTS = 2


def sim_config(
    tmp_path: Path, *, cache: dict[str, Any] | None = None, other_model: bool = False
) -> Path:
    """Write it to ``tmp_path`` (``cache``: the model's cache settings, off by default;
    ``other_model``: a second model ``other`` on one endpoint) and return its path."""
    endpoint = {
        "max_queue": 100_000,
        "queue_timeout_s": 30,
        "simulated": {
            "ttft_ms": SERVICE_MS,
            "tokens_per_s": 0,
            "latency": "lognormal",
            "jitter": 0.3,
        },
    }
    models: list[dict[str, Any]] = [
        {
            "name": "sim",
            "policy": "least_connections",
            "cache": {"enabled": False} if cache is None else cache,
            "endpoints": [{**endpoint, "name": name} for name in ("a", "b")],
        }
    ]
    if other_model:
        models.append({"name": "other", "endpoints": [{**endpoint, "name": "c"}]})
    document = {
        "store": {"url": f"sqlite:///{tmp_path / 'unused.db'}"},
        "log": {"access": False},
        "models": models,
        "workflows": [],
    }
    path = tmp_path / "surgeflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path

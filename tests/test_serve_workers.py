"""``surgeflow serve --workers N``: N real gateway processes on one port, restarted when one
dies, drained together on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.services import free_port

pytestmark = pytest.mark.slow
KEY = "sk-workers-test"


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def served_by(metrics_dir: Path) -> dict[int, float]:
    """Requests to /v1/models each process has counted, by pid (from the shared figures)."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("*.json"):
        figures = json.loads(path.read_text())
        for name, _type, _doc, samples in figures["families"]:
            if name != "surgeflow_http_requests":
                continue
            for sample_name, labels, value in samples:
                if sample_name.endswith("_total") and labels.get("route") == "/v1/models":
                    counts[figures["pid"]] = counts.get(figures["pid"], 0) + value
    return counts


def test_processes_share_the_port_restart_and_drain(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "server": {"metrics_dir": str(metrics_dir)},
                "log": {"access": False},
            }
        )
    )
    port = free_port()
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "surgeflow",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env={**os.environ, "SURGEFLOW_API_KEYS": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert supervisor.stdout is not None
        assert "with 2 processes" in supervisor.stdout.readline()

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, "the gateways")
        for _ in range(80):  # a new connection each: the kernel spreads them over the processes
            response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 200
        wait_for(lambda: sum(served_by(metrics_dir).values()) >= 80, 10, "the figures")
        first = served_by(metrics_dir)
        assert len(first) == 2, first  # both processes served
        # One dies: the supervisor starts another, and the port keeps answering.
        killed = next(iter(first))
        os.kill(killed, signal.SIGKILL)
        wait_for(
            lambda: len(_children(supervisor.pid)) == 2 and killed not in _children(supervisor.pid),
            30,
            "a restart",
        )
        wait_for(ready, 30, "the port")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=60)
        if supervisor.stdout is not None:
            supervisor.stdout.close()
    assert code == 0
    assert _children(supervisor.pid) == []


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in found.split()]

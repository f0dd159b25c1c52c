"""Structured logs: JSON lines with the request, run and key ids; redaction; the access log."""

import datetime
import io
import json
import logging
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from surgeflow import logs
from surgeflow.logs import REDACTED, Logging
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_a_line_is_one_json_object_with_the_bound_ids_and_fields() -> None:
    stream = io.StringIO()
    logging_ = Logging(level="info", format="json", stream=stream)
    logging_.start()
    log = logging.getLogger("surgeflow.test")
    with logs.bound(run_id="run_1", key_id="key_1"):
        log.info("step %s finished", "fetch", extra={"step": "fetch", "ms": 12.5})
    log.info("outside")
    logging_.stop()  # the listener writes what is queued
    inside, outside = lines(stream)
    assert inside["msg"] == "step fetch finished"
    assert inside["level"] == "info"
    assert inside["logger"] == "surgeflow.test"
    assert (inside["run_id"], inside["key_id"], inside["step"], inside["ms"]) == (
        "run_1",
        "key_1",
        "fetch",
        12.5,
    )
    assert "run_id" not in outside


def test_secrets_and_prompts_are_redacted_unless_prompts_are_enabled() -> None:
    for prompts, expected in ((False, REDACTED), (True, "what is my balance?")):
        stream = io.StringIO()
        logging_ = Logging(level="info", format="json", stream=stream, prompts=prompts)
        logging_.start()
        logging.getLogger("surgeflow.test").info(
            "asked",
            extra={"authorization": "Bearer sf-secret", "prompt": "what is my balance?"},
        )
        logging_.stop()
        (line,) = lines(stream)
        assert line["authorization"] == REDACTED
        assert line["prompt"] == expected


def test_exceptions_are_written_with_their_traceback() -> None:
    stream = io.StringIO()
    logging_ = Logging(level="info", format="json", stream=stream)
    logging_.start()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("surgeflow.test").exception("it failed")
    logging_.stop()
    (line,) = lines(stream)
    assert line["msg"] == "it failed"
    assert "ValueError: boom" in str(line["exc"])


def test_the_console_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    logging_ = Logging(level="info", format="console", stream=stream)
    logging_.start()
    with logs.bound(request_id="abc123"):
        logging.getLogger("surgeflow.test").warning("slow upstream", extra={"ms": 900})
    logging_.stop()
    (text,) = stream.getvalue().splitlines()
    assert "WARNING" in text
    assert "surgeflow.test  slow upstream" in text
    assert "request_id=abc123" in text
    assert "ms=900" in text


async def test_each_request_has_an_id_in_its_response_and_its_access_line(
    tmp_path: Path,
) -> None:
    stream = io.StringIO()
    logging_ = Logging(level="info", format="json", stream=stream)
    logging_.start()
    try:
        async with make_service(tmp_path) as service, running_gateway(service) as url:
            headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "req-42"}
            async with aiohttp.ClientSession(url, headers=headers) as http:
                async with http.get("/v1/models") as response:
                    assert response.status == 200
                    assert response.headers["X-Request-Id"] == "req-42"
                async with http.get("/v1/runs/run_nope", headers={"X-Request-Id": "bad id!"}) as r:
                    assert r.status == 404
                    generated = r.headers["X-Request-Id"]
                    assert generated != "bad id!"
                    assert len(generated) == 16
    finally:
        logging_.stop()
    access = [line for line in lines(stream) if line["logger"] == "surgeflow.access"]
    first = next(line for line in access if line.get("request_id") == "req-42")
    assert first["route"] == "/v1/models"
    assert first["status"] == 200
    assert first["key_id"].startswith("env-")  # type: ignore[union-attr]
    assert float(first["duration_ms"]) >= 0  # type: ignore[arg-type]
    second = next(line for line in access if line.get("request_id") == generated)
    assert (second["route"], second["status"]) == ("/v1/runs/{run_id}", 404)


def test_access_lines_and_records_keep_their_order_and_a_broken_stream_is_survived() -> None:
    class Flaky(io.StringIO):
        broken = False

        def write(self, text: str) -> int:
            if self.broken:
                raise OSError("disk full")
            return super().write(text)

    stream = Flaky()
    logging_ = Logging(level="info", format="json", stream=stream)
    logging_.start()
    log = logging.getLogger("surgeflow.test")
    logs.access("GET /a 200", {"status": 200})
    log.info("between")
    logs.access("GET /b 200", {"status": 200})
    time.sleep(0.3)  # the writer thread writes them
    stream.broken = True
    logs.access("GET /lost 200", {"status": 200})
    time.sleep(0.3)  # a failed write is dropped; the writer goes on
    stream.broken = False
    logs.access("GET /c 200", {"status": 200})
    logging_.stop()
    assert [line["msg"] for line in lines(stream)] == [
        "GET /a 200",
        "between",
        "GET /b 200",
        "GET /c 200",
    ]
    stamp = lines(stream)[0]["ts"]
    assert isinstance(stamp, str)
    assert abs(datetime.datetime.fromisoformat(stamp).timestamp() - time.time()) < 5


def test_by_default_lines_go_to_whatever_stderr_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging_ = Logging(level="info", format="json")  # no stream: the process's stderr
    logging_.start()
    log = logging.getLogger("surgeflow.test")
    log.warning("one")
    time.sleep(0.3)
    first.close()  # a test runner swaps stderr and closes the old one
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.warning("two")
    logging_.stop()
    assert [line["msg"] for line in lines(second)] == ["two"]

"""What ``surgeflow bench`` sends: one request of a target, and how it ended.

- ``chat``: ``POST /v1/chat/completions`` on any OpenAI-compatible server;
- ``invoke``: ``POST /v1/workflows/{name}/invoke`` (inline, on a surgeflow gateway);
- ``runs``: ``POST /v1/workflows/{name}/runs``, then the run's event stream until its terminal
  event: the latency is submit → ``run.succeeded | run.failed | run.cancelled | run.dead``.

A call never raises for what a server or the network did: it returns ``"ok"`` or the kind of
error (``status_503``, ``timeout``, ``connection``, ``run.failed`` …), which the bench counts.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
import msgspec

from surgeflow.errors import ConfigError
from surgeflow.events import TERMINAL_EVENTS

TargetKind = Literal["chat", "invoke", "runs"]
TARGET_KINDS: tuple[TargetKind, ...] = ("chat", "invoke", "runs")
OK = "ok"
DEFAULT_PROMPT = "In one sentence: how long do I have to return an item for a refund?"

_encode = msgspec.json.encode
_EVENT = b"event: "


class TargetSettings(msgspec.Struct, kw_only=True, frozen=True):
    """What to load; stored in every result."""

    kind: TargetKind = "chat"
    url: str = "http://127.0.0.1:8000"  # the server's root (a trailing /v1 is dropped)
    model: str = "sim-small"
    prompt: str = DEFAULT_PROMPT
    prompts: int | None = None  # chat: this many distinct prompts, cycled (temperature 0)
    hit_ratio: float | None = None  # chat: share of requests that repeat a hot prompt
    max_tokens: int | None = None
    workflow: str = ""  # invoke, runs
    input: dict[str, Any] = msgspec.field(default_factory=dict)


# How a call ended ("ok" or the kind of error), and the X-Surgeflow-Cache status if any.
Outcome = tuple[str, str | None]


class Target(Protocol):
    """Sends one request; a server's or the network's failure is an outcome, or an aiohttp or
    msgspec error the caller counts by kind."""

    settings: TargetSettings

    async def call(self, http: aiohttp.ClientSession, index: int) -> Outcome:
        """How the ``index``-th request ended; the caller bounds it with a timeout."""
        ...


def base_url(url: str) -> str:
    """The server root of ``url``: no trailing slash, no trailing ``/v1`` (an OpenAI base URL)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def check_url(url: str, allow_remote: Sequence[str] = ()) -> str:
    """``url``'s root when it may be loaded: its host is loopback or named in ``allow_remote``.

    The guard keeps a typo or a pasted URL from load-testing someone else's server.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url must be an http(s) URL with a host, not {url!r}")
    host = parts.hostname.lower()
    if not _is_loopback(host) and host not in {name.lower() for name in allow_remote}:
        raise ConfigError(
            f"refusing to load {host!r}: it is not a loopback address; if the server is yours, "
            f"pass --allow-remote {host} (a guard against load-testing someone else's server "
            "by mistake)"
        )
    return base_url(url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_target(settings: TargetSettings, *, seed: int = 0) -> Target:
    if settings.kind == "chat":
        return ChatTarget(settings, seed=seed)
    if settings.kind == "invoke":
        return InvokeTarget(settings)
    if settings.kind == "runs":
        return RunsTarget(settings)
    raise ConfigError(f"unknown target {settings.kind!r}: use one of {', '.join(TARGET_KINDS)}")


def _check_status(status: int) -> str:
    return OK if status == 200 else f"status_{status}"


class ChatTarget:
    """Chat completions. With ``prompts`` or ``hit_ratio``, some requests repeat a hot prompt at
    temperature 0, which a surgeflow cache can answer; every other request is a prompt never
    sent before, sampled (temperature 0.7), which no cache answers."""

    def __init__(self, settings: TargetSettings, *, seed: int = 0) -> None:
        if settings.prompts is not None and settings.prompts < 1:
            raise ConfigError(f"--prompts must be ≥ 1, not {settings.prompts}")
        if settings.hit_ratio is not None and not 0.0 <= settings.hit_ratio <= 1.0:
            raise ConfigError(f"--hit-ratio must be within 0..1, not {settings.hit_ratio:g}")
        self.settings = settings
        self.url = base_url(settings.url) + "/v1/chat/completions"
        self.hot = settings.prompts if settings.prompts is not None else 1
        self.rng = random.Random(seed)
        # Unique prompts carry a per-run nonce, so a run never repeats an earlier run's prompts.
        self.nonce = secrets.token_hex(4)
        self.hot_bodies = [self._body(self._hot_prompt(i), 0.0) for i in range(self.hot)]

    def _hot_prompt(self, index: int) -> str:
        return self.settings.prompt if index == 0 else f"{self.settings.prompt} (variant {index})"

    def _body(self, prompt: str, temperature: float) -> bytes:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
        }
        if self.settings.max_tokens is not None:
            body["max_tokens"] = self.settings.max_tokens
        return _encode(body)

    def body(self, index: int) -> bytes:
        """The ``index``-th request's body."""
        hit_ratio = self.settings.hit_ratio
        if hit_ratio is None:
            if self.settings.prompts is not None:
                return self.hot_bodies[index % self.hot]
        elif self.rng.random() < hit_ratio:
            return self.hot_bodies[self.rng.randrange(self.hot)]
        return self._body(f"[{self.nonce}-{index}] {self.settings.prompt}", 0.7)

    async def call(self, http: aiohttp.ClientSession, index: int) -> Outcome:
        async with http.post(self.url, data=self.body(index)) as response:
            await response.read()
            return _check_status(response.status), response.headers.get("x-surgeflow-cache")


class _Invocation(msgspec.Struct):
    status: str = ""


class _Submitted(msgspec.Struct):
    id: str


def _check_workflow(settings: TargetSettings) -> None:
    if not settings.workflow:
        raise ConfigError(f"--target {settings.kind} needs --workflow NAME")


class InvokeTarget:
    """A workflow run inline; a 200 whose run failed counts as error ``failed``."""

    def __init__(self, settings: TargetSettings) -> None:
        _check_workflow(settings)
        self.settings = settings
        self.url = f"{base_url(settings.url)}/v1/workflows/{settings.workflow}/invoke"
        self.payload = _encode({"input": settings.input})

    async def call(self, http: aiohttp.ClientSession, index: int) -> Outcome:
        async with http.post(self.url, data=self.payload) as response:
            body = await response.read()
        if response.status != 200:
            return _check_status(response.status), None
        status = msgspec.json.decode(body, type=_Invocation).status
        return (OK if status == "succeeded" else status or "protocol"), None


class RunsTarget:
    """A durable run, followed on its event stream until its terminal event."""

    def __init__(self, settings: TargetSettings) -> None:
        _check_workflow(settings)
        self.settings = settings
        self.root = base_url(settings.url)
        self.url = f"{self.root}/v1/workflows/{settings.workflow}/runs"
        self.payload = _encode({"input": settings.input})

    async def call(self, http: aiohttp.ClientSession, index: int) -> Outcome:
        async with http.post(self.url, data=self.payload) as response:
            body = await response.read()
        if response.status not in (200, 202):
            return f"status_{response.status}", None
        run_id = msgspec.json.decode(body, type=_Submitted).id
        async with http.get(f"{self.root}/v1/runs/{run_id}/events") as response:
            if response.status != 200:
                return f"events_status_{response.status}", None
            async for line in response.content:
                if line.startswith(_EVENT):
                    event = line[len(_EVENT) :].strip().decode("utf-8", "replace")
                    if event in TERMINAL_EVENTS:
                        return (OK if event == "run.succeeded" else event), None
        return "stream_ended", None  # the stream closed before the run's terminal event

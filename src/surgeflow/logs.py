"""Structured logs: one JSON object per line (or a readable line in a terminal), with the request,
run and key ids of the work in progress carried into every line through contextvars.

Records are appended to a deque on the calling thread and formatted and written in batches by a
writer thread every 0.1 s, so a log call costs the event loop a record and an append, not a
write, and wakes no thread. Secrets are never written; prompt bodies only with ``log.prompts``.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime
import logging
import sys
import threading
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import msgspec

# The ids of the work in progress: set by the gateway per request and the worker per run.
_NOTHING: Mapping[str, str] = types.MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "surgeflow_log_context", default=_NOTHING
)

# Keys whose values are never written, whatever the settings.
SECRET_KEYS = frozenset({"authorization", "api_key", "secret", "token", "password", "cookie"})
# Keys that hold what users typed or models answered: written only with log.prompts.
PROMPT_KEYS = frozenset({"prompt", "prompts", "messages", "content", "input", "output", "answer"})
REDACTED = "[redacted]"

# LogRecord attributes that are not fields of the line.
_RESERVED = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
)
_encode = msgspec.json.Encoder(enc_hook=str).encode


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Carry ``ids`` (request_id, run_id, key_id …) into every log line written inside."""
    current = _context.get()
    token = _context.set({**current, **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Like `bound`, for the rest of the current task (each asyncio task has its own context)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})


def bind_request(request_id: bytes) -> contextvars.Token[Mapping[str, str]]:
    """Start a request's context (the gateway, per request), on top of what its task already
    carries (a trace id, when tracing is on); `unbind` ends it."""
    outer = _context.get()
    request = {"request_id": request_id.decode("ascii")}
    return _context.set({**outer, **request} if outer else request)


def unbind(token: contextvars.Token[Mapping[str, str]]) -> None:
    _context.reset(token)


def current() -> Mapping[str, str]:
    return _context.get()


_active: _BufferingHandler | None = None  # the started `Logging`'s handler, if any


def access(msg: str, fields: dict[str, Any]) -> None:
    """An access line (a gateway writes one per request), with the bound ids: formatted here
    and put in the writer's buffer as text, with no LogRecord. Without a started `Logging`,
    through ``logging`` as usual.

    Formatting here rather than in the writer thread costs the loop no more CPU (a thread that
    formats holds the GIL, so it cannot run beside the loop) and spares it the GIL hand-overs.
    """
    handler = _active
    if handler is None:
        _access_log.info(msg, extra=fields)
        return
    handler.add_text(
        handler.line_formatter.format_line(
            time.time(), "INFO", "surgeflow.access", msg, {**_context.get(), **fields}
        )
    )


_access_log = logging.getLogger("surgeflow.access")


class _BufferingHandler(logging.Handler):
    """Keeps records (and access lines, already formatted) in a deque; a writer thread formats
    the records and writes everything every ``interval_s``.

    Appending wakes nobody: a thread woken per record (as `logging.handlers.QueueListener` is)
    costs the gateway a context switch and a GIL hand-over per request, which measured far more
    than the logging itself.
    """

    def __init__(self, output: logging.StreamHandler[Any], interval_s: float = 0.1) -> None:
        super().__init__()
        self._output = output
        self._interval_s = interval_s
        self._records: collections.deque[logging.LogRecord | str] = collections.deque()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Render what may change or not survive the thread hop; keep the fields.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self._records.append(record)

    def start(self) -> None:
        self._stopping.clear()
        self._writer = threading.Thread(target=self._write_forever, name="surgeflow-logs")
        self._writer.daemon = True
        self._writer.start()

    def stop(self) -> None:
        if self._writer is None:
            return
        self._stopping.set()
        self._writer.join()
        self._writer = None
        self._drain()

    def _write_forever(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._drain()

    def _drain(self) -> None:
        records = self._records
        if not records:
            return
        output = self._output
        texts: list[str] = []  # consecutive formatted lines, written in one call
        while records:
            record = records.popleft()
            if isinstance(record, str):
                texts.append(record)
                continue
            self._write(texts)
            try:
                output.emit(record)
            except Exception:  # a broken stream must not kill the writer
                output.handleError(record)
        self._write(texts)
        with contextlib.suppress(Exception):  # the stream may be gone (closed at exit)
            output.flush()

    def _write(self, texts: list[str]) -> None:
        if texts:
            texts.append("")  # the last line's newline
            with contextlib.suppress(Exception):  # a broken stream must not kill the writer
                self._output.stream.write("\n".join(texts))
            texts.clear()

    def add_text(self, text: str) -> None:
        """A line already formatted."""
        self._records.append(text)

    @property
    def line_formatter(self) -> _LineFormatter:
        formatter = self._output.formatter
        assert isinstance(formatter, _LineFormatter)
        return formatter


class _ContextFilter(logging.Filter):
    """Copies the bound ids onto each record on the calling thread, before it is queued."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.surgeflow_context = _context.get()
        return True


def _fields(record: logging.LogRecord, prompts: bool) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "surgeflow_context", {}))
    for key, value in vars(record).items():
        if key in _RESERVED or key in ("surgeflow_context", "exc_text"):
            continue
        lowered = key.lower()
        if lowered in SECRET_KEYS or (lowered in PROMPT_KEYS and not prompts):
            fields[key] = REDACTED
        else:
            fields[key] = value
    return fields


class _LineFormatter(logging.Formatter):
    """A record, or the parts of a line built without one (`access`), to one line of text."""

    def __init__(self, *, prompts: bool = False) -> None:
        super().__init__()
        self.prompts = prompts

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        return self.format_line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            _fields(record, self.prompts),
            exc,
        )

    def format_line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: Mapping[str, Any],
        exc: str | None = None,
    ) -> str:
        raise NotImplementedError


class JsonFormatter(_LineFormatter):
    """``{"ts", "level", "logger", "msg", <ids>, <extra fields>, "exc"?}`` on one line."""

    _second: tuple[int, str] = (-1, "")  # the last whole second and its ISO text

    def _timestamp(self, created: float) -> str:
        """``2026-11-24T03:21:14.123+00:00``; the date and time of day are formatted once a
        second (they were most of a line's cost), the milliseconds each time."""
        whole = int(created)
        second, text = self._second
        if whole != second:
            text = datetime.datetime.fromtimestamp(whole, datetime.UTC).isoformat()[:19]
            self._second = (whole, text)
        return f"{text}.{int((created - whole) * 1000):03d}+00:00"

    def format_line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: Mapping[str, Any],
        exc: str | None = None,
    ) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(created),
            "level": level.lower(),
            "logger": logger,
            "msg": msg,
        }
        line.update(fields)
        if exc:
            line["exc"] = exc
        return _encode(line).decode()


class ConsoleFormatter(_LineFormatter):
    """``12:00:01.234 INFO  surgeflow.gateway  message  key=value …`` for a terminal."""

    def format_line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: Mapping[str, Any],
        exc: str | None = None,
    ) -> str:
        when = datetime.datetime.fromtimestamp(created).strftime("%H:%M:%S.%f")[:-3]
        text = f"{when} {level:<7} {logger}  {msg}"
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        if extras:
            text += f"  {extras}"
        if exc:
            text += "\n" + exc
        return text


class _UnflushedStreamHandler(logging.StreamHandler[Any]):
    """Writes without flushing per record; the writer flushes once per batch."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)


class _StderrHandler(_UnflushedStreamHandler):
    """Writes to whatever ``sys.stderr`` is when it writes: a test runner or an embedding
    application may swap it (and close the old one) while the process's logging lives on."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class Logging:
    """The process's logging: a deque on the hot path, a writer thread that formats and writes."""

    def __init__(
        self,
        *,
        level: str = "info",
        format: Literal["auto", "json", "console"] = "auto",
        prompts: bool = False,
        stream: Any = None,
    ) -> None:
        if format == "auto":
            format = "console" if (stream or sys.stderr).isatty() else "json"
        formatter = ConsoleFormatter if format == "console" else JsonFormatter
        self.format = format
        self._output = _StderrHandler() if stream is None else _UnflushedStreamHandler(stream)
        self._output.setFormatter(formatter(prompts=prompts))
        self._handler = _BufferingHandler(self._output)
        self._handler.addFilter(_ContextFilter())
        self._level = level.upper()
        self._replaced: list[logging.Handler] = []
        self._replaced_level = logging.NOTSET

    def start(self) -> None:
        """Take over the root logger (its handlers are put back by `stop`)."""
        root = logging.getLogger()
        self._replaced = list(root.handlers)
        self._replaced_level = root.level
        for handler in self._replaced:
            root.removeHandler(handler)
        root.addHandler(self._handler)
        root.setLevel(self._level)
        self._handler.start()
        global _active
        _active = self._handler

    def stop(self) -> None:
        """Write what is queued, then give the root logger back."""
        if self._handler._writer is None:  # not started, or stopped already
            return
        global _active
        if _active is self._handler:
            _active = None
        self._handler.stop()
        root = logging.getLogger()
        root.removeHandler(self._handler)
        for handler in self._replaced:
            root.addHandler(handler)
        root.setLevel(self._replaced_level)

"""The service: everything one surgeflow process holds, built from settings and opened together."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from surgeflow.alerts import Alerts
from surgeflow.auth import KeyRing
from surgeflow.cache.base import Cache
from surgeflow.cache.memory import MemoryCache
from surgeflow.config import EndpointSettings, Settings
from surgeflow.errors import ConfigError, NotFound
from surgeflow.eventbus import RedisEventBus
from surgeflow.events import EventHub, RunRecorder
from surgeflow.limits import Limiter
from surgeflow.metrics import Metrics, SemanticCollector, SharedFigures
from surgeflow.models.base import ModelBackend
from surgeflow.models.client import ModelClient
from surgeflow.models.openai_http import OpenAIHTTPBackend
from surgeflow.models.simulated import SimulatedBackend
from surgeflow.monitor import Monitor
from surgeflow.queue.base import Queue
from surgeflow.queue.reconciler import Reconciler
from surgeflow.queue.sqlite import SQLiteQueue
from surgeflow.store.base import Run, RunStatus, Store
from surgeflow.store.sqlite import SQLiteStore
from surgeflow.tracing import Tracing, build_tracing
from surgeflow.worker import Worker
from surgeflow.workflow import Workflow

if TYPE_CHECKING:
    from surgeflow.cache.semantic import SemanticCache
    from surgeflow.tracing import Tracer

log = logging.getLogger("surgeflow.service")


class Service:
    """Store, queue, models, cache, workflows, keys and (embedded) a worker, with one lifecycle.

    Every part can be passed in; what is not is built from ``settings``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        queue: Queue | None = None,
        models: ModelClient | None = None,
        cache: Cache | None = None,
        workflows: Mapping[str, Workflow] | None = None,
        embedded_worker: bool | None = None,
        api_keys: Iterable[str] | None = None,
        admin_keys: Iterable[str] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings = settings or Settings()
        if store is None or queue is None:
            store, queue = _store_and_queue(settings, store, queue)
        self.store: Store = store
        self.queue: Queue = queue
        self.cache: Cache = cache or _build_cache(settings)
        # The semantic index, when a model enables it and no client was passed in.
        self.semantic: SemanticCache | None = None
        if models is None:
            self.semantic = _build_semantic(settings)
        # None when tracing is off: then no part is handed a tracer, and nothing is traced.
        self.tracing = tracing if tracing is not None else build_tracing(settings.tracing)
        self.models = models or build_model_client(
            settings, cache=self.cache, semantic=self.semantic, tracer=self.tracer
        )
        self.workflows: dict[str, Workflow] = dict(
            workflows if workflows is not None else load_workflows(settings)
        )
        self.hub = EventHub()
        # Run-event notices from and to other processes, over Redis (None: this process only).
        self.event_bus = (
            None if settings.events.url is None else RedisEventBus(settings.events.url, self.hub)
        )
        self.limiter = Limiter(settings.limits)
        self.enqueue_failures = 0  # stored runs the queue refused (the reconciler queues them)
        self.metrics = Metrics(self)  # GET /metrics; other parts may register collectors here
        if self.limiter.enabled:
            self.metrics.register(self.limiter)
        if self.semantic is not None:
            self.metrics.register(SemanticCollector(self.semantic))
        metrics_dir = settings.server.metrics_dir
        self.metrics.shared = SharedFigures(metrics_dir) if metrics_dir else None
        # Samples the figures every second for the dashboard and the alert rules.
        self.monitor = Monitor(
            self.metrics, interval_s=settings.alerts.interval_s, shared=self.metrics.shared
        )
        self.alerts: Alerts | None = None
        if settings.alerts.enabled:
            self.alerts = Alerts(settings.alerts, lock_dir=metrics_dir)
            self.monitor.listeners.append(self.alerts.evaluate)
            self.metrics.register(self.alerts)
        if api_keys is None:  # keys to accept without a stored record, e.g. for a first deploy
            api_keys = os.environ.get("SURGEFLOW_API_KEYS", "").split(",")
        if admin_keys is None:
            admin_keys = os.environ.get("SURGEFLOW_ADMIN_KEYS", "").split(",")
        self.keys = KeyRing(
            store,
            bootstrap=api_keys,
            bootstrap_admin=admin_keys,
            refresh_s=settings.auth.key_refresh_s,
        )
        run_worker = settings.worker.embedded if embedded_worker is None else embedded_worker
        self.worker: Worker | None = self.new_worker() if run_worker else None
        self._worker_task: asyncio.Task[None] | None = None
        # Queues again the runs a queue lost; run by every process that runs a worker.
        self.reconciler = Reconciler(
            self.store,
            self.queue,
            interval_s=settings.queue.reconcile_interval_s,
            grace_s=settings.queue.reconcile_grace_s,
        )
        self._reconciler_task: asyncio.Task[None] | None = None
        self.started_at: float | None = None

    @property
    def tracer(self) -> Tracer | None:
        """What this service's parts trace with; None when tracing is off."""
        return None if self.tracing is None else self.tracing.tracer

    def new_worker(self, **overrides: Any) -> Worker:
        """A worker over this service's store, queue, workflows and models."""
        options: dict[str, Any] = {
            "concurrency": self.settings.worker.concurrency,
            "lease_s": self.settings.queue.lease_s,
            "poll_interval_s": self.settings.worker.poll_interval_s,
            "drain_timeout_s": self.settings.worker.drain_timeout_s,
            "retry_backoff_s": self.settings.worker.retry_backoff_s,
        }
        options.update(overrides)
        return Worker(
            store=self.store,
            queue=self.queue,
            workflows=self.workflows,
            models=self.models,
            cache=self.cache,
            hub=self.hub,
            stats=self.metrics.workflows,
            tracer=self.tracer,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"<Service store={self.store!r} queue={self.queue!r} models={self.models!r} "
            f"workflows={len(self.workflows)} worker={self.worker!r}>"
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        await _open(self.store)
        await _open(self.queue)
        await self.keys.start()
        await self.limiter.start()
        if self.event_bus is not None:
            await self.event_bus.start()
        start_cache = getattr(self.cache, "start", None)
        if start_cache is not None:
            await start_cache()  # a tiered cache listens for other processes' invalidations
        if self.semantic is not None:
            await self.semantic.start()  # load the model now, not on the first request
        self.models.start()
        if not self.settings.auth.enabled:
            log.warning("authentication is OFF (auth.enabled: false): anyone can call this gateway")
        elif len(self.keys) == 0:
            log.warning("no API keys exist yet: create one with `surgeflow keys create`")
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run(), name="embedded-worker")
            self.start_reconciler()
        if self.settings.server.metrics:
            self.monitor.start()
        self.started_at = time.time()

    def start_reconciler(self) -> None:
        """Reconcile the queue with the store in the background until `aclose`."""
        if self._reconciler_task is None:
            self._reconciler_task = asyncio.create_task(self.reconciler.run(), name="reconciler")

    async def aclose(self) -> None:
        if self._reconciler_task is not None:
            self.reconciler.stop()
            self._reconciler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler_task
        await self.monitor.aclose()
        if self.alerts is not None:
            await self.alerts.aclose()
        if self.worker is not None and self._worker_task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self.keys.aclose()
        if self.event_bus is not None:
            await self.event_bus.aclose()
        await self.limiter.aclose()
        await self.models.aclose()
        if self.semantic is not None:
            await self.semantic.aclose()
        await self.cache.aclose()
        await self.queue.aclose()
        await self.store.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()  # last: it exports the spans of everything above

    def workflow(self, name: str) -> Workflow:
        workflow = self.workflows.get(name)
        if workflow is None:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise NotFound(f"no workflow named {name!r}; known workflows: {known}")
        return workflow

    async def invoke(self, workflow: Workflow, input: Any) -> Any:
        """Run a workflow inline (no persistence) and return its output."""
        on_event = self.metrics.workflows.step_observer(workflow.name)
        return await workflow.run(
            input, models=self.models, cache=self.cache, on_event=on_event, tracer=self.tracer
        )

    async def submit(
        self,
        workflow: str,
        input: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        key_id: str | None = None,
    ) -> tuple[Run, bool]:
        """Create a durable run and enqueue it; a known idempotency key returns the same run."""
        self.workflow(workflow)
        data = {"workflow": workflow}
        if self.tracer is not None:  # the worker's spans of the run join this trace
            data.update(self.tracer.carrier())
        run, created = await self.store.create_run(
            workflow, input, idempotency_key=idempotency_key, key_id=key_id, queued_event=data
        )
        if created:
            self.hub.notify(run.id)
            await self._enqueue(run)
            self.metrics.workflows.run_submitted(workflow)
        elif run.status is RunStatus.QUEUED:
            # A retried submission: its first attempt may have stored the run and then failed
            # to enqueue it. Enqueueing is idempotent, so make sure.
            await self._enqueue(run)
        return run, created

    async def _enqueue(self, run: Run) -> None:
        """Put a stored run on the queue. The run is durable once stored: when the queue is
        down, the reconciler (`surgeflow.queue.reconciler`) enqueues it once it is back, so
        the caller still gets its run id rather than an error for work that will be done."""
        try:
            await self.queue.put(run.id)
        except Exception as exc:
            self.enqueue_failures += 1
            log.warning(
                "run %s is stored but could not be queued (%s); the reconciler will queue it",
                run.id,
                exc,
            )

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run: at once if queued; a running one stops at its next await."""
        before = await self.store.get_run(run_id)
        run = await self.store.request_cancel(run_id)
        if before.status is RunStatus.QUEUED and run.status is RunStatus.CANCELLED:
            recorder = RunRecorder(self.store, run.id, self.hub)
            recorder.emit("run.cancelled", data={"error": "cancelled before it started"})
            await recorder.flush()
            self.metrics.workflows.run_finished(run.workflow, RunStatus.CANCELLED.value)
        if self.worker is not None:
            await self.worker.cancel(run_id)
        return run

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            await self.queue.stats()
            checks["queue"] = "ok"
        except Exception as exc:
            checks["queue"] = f"failing: {exc}"
        try:
            await self.store.list_runs(limit=1)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"failing: {exc}"
        if self.worker is not None:
            running = self._worker_task is not None and not self._worker_task.done()
            checks["worker"] = "ok" if running else "stopped"
        ready = all(v == "ok" for v in checks.values())
        # Reported, never failing readiness: without them a gateway still serves, slower to
        # hear of other processes' run events, with per-process rate limits.
        if self.event_bus is not None:
            checks["events"] = "ok" if self.event_bus.connected else "degraded: not subscribed"
        if self.limiter.shared:
            checks["limits"] = "ok" if await self.limiter.ping() else "degraded: per-process limits"
        return ready, checks


async def _open(resource: object) -> None:
    opener = getattr(resource, "open", None)
    if opener is not None:
        await opener()


def _store_and_queue(
    settings: Settings, store: Store | None, queue: Queue | None
) -> tuple[Store, Queue]:
    if store is None:
        store = _build_store(settings.store.url)
    if queue is None:
        queue = _build_queue(settings, store)
    return store, queue


def _build_store(url: str) -> Store:
    """``sqlite:///path`` (embedded) or ``postgresql://…`` (shared by many processes)."""
    if url.startswith("sqlite://"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from surgeflow.store.postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                f"store URL {_redacted(url)!r} needs the postgres extra:"
                " pip install 'surgeflow[postgres]'"
            ) from None
        return PostgresStore(url)
    raise ConfigError(
        f"unsupported store URL {_redacted(url)!r} (use sqlite:///path or postgresql://…)"
    )


def _build_queue(settings: Settings, store: Store) -> Queue:
    """``sqlite:///path`` (the store's own database when it is the same file), ``redis://…``
    (Redis Streams) or ``amqp://…`` (RabbitMQ, its index in PostgreSQL)."""
    url = settings.queue_url
    if url.startswith("sqlite://"):
        same_db = isinstance(store, SQLiteStore) and url == settings.store.url
        target = store.db if same_db and isinstance(store, SQLiteStore) else url
        return SQLiteQueue(target, max_attempts=settings.queue.max_attempts)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from surgeflow.queue.redis import RedisQueue
        except ImportError:
            raise ConfigError(
                f"queue URL {_redacted(url)!r} needs the redis extra:"
                " pip install 'surgeflow[redis]'"
            ) from None
        return RedisQueue(url, max_attempts=settings.queue.max_attempts)
    if url.startswith(("amqp://", "amqps://")):
        return _rabbitmq_queue(settings, url)
    if settings.queue.url is None:
        raise ConfigError(
            "a PostgreSQL store needs a queue: set queue.url (redis://… for the Redis Streams"
            " queue, amqp://… for RabbitMQ, or sqlite:///path)"
        )
    raise ConfigError(
        f"unsupported queue URL {_redacted(url)!r} (use sqlite:///path, redis://… or amqp://…)"
    )


def _rabbitmq_queue(settings: Settings, url: str) -> Queue:
    index_url = settings.queue.index_url
    if index_url is None and settings.store.url.startswith(("postgresql://", "postgres://")):
        index_url = settings.store.url
    if index_url is None:
        raise ConfigError(
            f"the RabbitMQ queue {_redacted(url)!r} keeps its job index in PostgreSQL: set"
            " queue.index_url to postgresql://…, or use a PostgreSQL store"
        )
    try:
        from surgeflow.queue.rabbitmq import RabbitMQQueue
    except ImportError:
        raise ConfigError(
            f"queue URL {_redacted(url)!r} needs the rabbitmq and postgres extras:"
            " pip install 'surgeflow[rabbitmq,postgres]'"
        ) from None
    return RabbitMQQueue(url, index_url=index_url, max_attempts=settings.queue.max_attempts)


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _build_cache(settings: Settings) -> Cache:
    """``memory://``: this process only; ``redis://…``: memory in front of a shared Redis tier."""
    url = settings.cache.url
    local = MemoryCache(max_bytes=settings.cache.max_bytes, ttl_s=settings.cache.ttl_s)
    if url == "memory://":
        return local
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from surgeflow.cache.redis import RedisCache
            from surgeflow.cache.tiered import TieredCache
        except ImportError:
            raise ConfigError(
                f"cache URL {url!r} needs the redis extra: pip install 'surgeflow[redis]'"
            ) from None
        return TieredCache(local, RedisCache(url, ttl_s=settings.cache.ttl_s))
    raise ConfigError(f"unsupported cache URL {url!r} (use memory:// or redis://host:port/db)")


def build_backend(
    model: str, index: int, endpoint: EndpointSettings, *, tracer: Tracer | None = None
) -> ModelBackend:
    name = endpoint.name or f"{model}-{index}"
    if endpoint.simulated is not None:
        sim = endpoint.simulated
        return SimulatedBackend(
            name,
            ttft_ms=sim.ttft_ms,
            tokens_per_s=sim.tokens_per_s,
            latency=sim.latency,
            jitter=sim.jitter,
            error_rate=sim.error_rate,
            rate_limit_rps=sim.rate_limit_rps,
            seed=sim.seed if sim.seed is not None else index,
        )
    assert endpoint.url is not None
    api_key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
    if endpoint.api_key_env and api_key is None:
        raise ConfigError(f"endpoint {name!r} reads its key from ${endpoint.api_key_env}, unset")
    return OpenAIHTTPBackend(
        name,
        endpoint.url,
        api_key=api_key,
        max_connections=endpoint.max_concurrency,
        tracer=tracer,
    )


def _build_semantic(settings: Settings) -> SemanticCache | None:
    """The semantic index, if any model enables ``cache.semantic`` (needs the semantic extra)."""
    if not any(m.cache.enabled and m.cache.semantic.enabled for m in settings.models):
        return None
    try:
        from surgeflow.cache.semantic import OnnxEmbedder, SemanticCache
    except ImportError:
        raise ConfigError(
            "cache.semantic needs the semantic extra: pip install 'surgeflow[semantic]'"
        ) from None
    index = settings.cache.semantic
    return SemanticCache(OnnxEmbedder(threads=index.threads), max_entries=index.max_entries)


def build_model_client(
    settings: Settings,
    *,
    cache: Cache | None = None,
    semantic: SemanticCache | None = None,
    tracer: Tracer | None = None,
) -> ModelClient:
    routes = {
        model.name: [
            build_backend(model.name, i, ep, tracer=tracer) for i, ep in enumerate(model.endpoints)
        ]
        for model in settings.models
    }
    return ModelClient(
        routes,
        settings={model.name: model for model in settings.models},
        cache=cache,
        cache_ttl_s=settings.cache.ttl_s,
        semantic=semantic,
        tracer=tracer,
    )


def load_workflows(settings: Settings) -> dict[str, Workflow]:
    """Import the workflows named in settings (``module:attribute``).

    The attribute is a `Workflow`, a mapping or list of them, or a factory returning one of those;
    a factory with a ``model`` parameter is given the first configured model's name.
    """
    workflows: dict[str, Workflow] = {}
    default_model = settings.models[0].name if settings.models else None
    for spec in settings.workflows:
        module_name, _, attr = spec.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr or "workflows")
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load workflows from {spec!r}: {exc}") from None
        if callable(target) and not isinstance(target, Workflow):
            accepts_model = "model" in inspect.signature(target).parameters
            target = target(model=default_model) if accepts_model and default_model else target()
        items = (
            target.values()
            if isinstance(target, Mapping)
            else ([target] if isinstance(target, Workflow) else list(target))
        )
        for workflow in items:
            if not isinstance(workflow, Workflow):
                raise ConfigError(f"{spec!r} gave {workflow!r}, which is not a Workflow")
            workflows[workflow.name] = workflow
    return workflows

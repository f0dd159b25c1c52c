"""deploy/: the Dockerfile, compose.yaml, nginx and the k8s manifests of the scaled-out shape.

Docker and a cluster cannot run here, so those files are checked for what they promise: they
parse, every service and object is there, they agree with each other and with the code (the
settings their variables name exist, their probes are routes the gateway serves), and they fit
the Compose and Kubernetes JSON schemas. nginx runs for real: `nginx -t` on the shipped config,
then in front of two small aiohttp servers on loopback.
"""

import asyncio
import contextlib
import importlib.resources
import io
import json
import os
import re
import subprocess
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web

import surgeflow.service
from surgeflow.config import ServerSettings, Settings, WorkerSettings, load_settings
from surgeflow.server import running_gateway
from tests.gateway.conftest import make_service
from tests.nginx import (
    NGINX_CONF,
    UPSTREAMS_CONF,
    nginx_binary,
    nginx_command,
    prepare_nginx,
    running_nginx,
    upstream_servers,
)
from tests.services import free_port

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

# Variables surgeflow reads itself, outside load_settings (surgeflow/service.py).
KEY_VARIABLES = {"SURGEFLOW_API_KEYS", "SURGEFLOW_ADMIN_KEYS"}
# Variables that are not surgeflow settings, and who reads them.
OTHER_VARIABLES = {
    "FORWARDED_ALLOW_IPS",  # uvicorn
    "DB_HOST",  # the k8s manifests assemble SURGEFLOW_STORE__URL from these
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_PASSWORD",
}
GATEWAY_COMMAND = ["surgeflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
UVICORN_GRACEFUL_S = 10  # surgeflow.server.running_app's graceful_timeout_s
SECRET_PLACEHOLDER = "CHANGE-ME"
TIMEOUT = aiohttp.ClientTimeout(total=10)


# --- helpers -----------------------------------------------------------------------------------


def require_module(name: str, package: str) -> Any:
    """``import name``; skipped if missing, failed instead under SURGEFLOW_REQUIRE_SERVICES=1."""
    try:
        return __import__(name)
    except ImportError:
        message = f"{name} is not installed (pip install {package}; a dev dependency)"
        if os.environ.get("SURGEFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def settings_field(path: list[str]) -> bool:
    """Whether ``path`` (``["server", "port"]``) names a leaf of the settings, through structs."""
    node: Any = Settings
    for index, key in enumerate(path):
        if not (isinstance(node, type) and issubclass(node, msgspec.Struct)):
            return False
        hints = typing.get_type_hints(node, include_extras=True)
        names = {field.encode_name: field.name for field in msgspec.structs.fields(node)}
        if key not in names:
            return False
        node = hints[names[key]]
        while typing.get_origin(node) is typing.Annotated:
            node = typing.get_args(node)[0]
        last = index == len(path) - 1
        is_struct = isinstance(node, type) and issubclass(node, msgspec.Struct)
        if last:
            return not is_struct
    return False


def assert_known_variable(name: str, where: str) -> None:
    if name in OTHER_VARIABLES:
        return
    assert name.startswith("SURGEFLOW_"), (
        f"{where}: {name} is neither a surgeflow setting nor known"
    )
    if name in KEY_VARIABLES:
        source = Path(surgeflow.service.__file__).read_text()
        assert f'"{name}"' in source, f"{where}: surgeflow no longer reads {name}"
        return
    path = name.removeprefix("SURGEFLOW_").lower().split("__")
    assert settings_field(path), f"{where}: {name} names no setting ({'.'.join(path)})"


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with every variable unset."""

    def replace(match: re.Match[str]) -> str:
        operator, word = match.group(2), match.group(3) or ""
        if operator == ":-":
            return word
        if operator == ":?":
            return "sf-test-key"  # what the operator must set
        return ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, value)


def load_k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/k8s, by (kind, name); the Kustomization is left out."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None or document["kind"] == "Kustomization":
                continue
            key = (document["kind"], document["metadata"]["name"])
            assert key not in objects, f"{path.name}: {key} is defined twice"
            objects[key] = document
    return objects


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    instructions = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        assert result, "an instruction before the first FROM"
        result[-1].append(instruction)
    return result


@pytest.fixture
async def served(tmp_path: Path) -> dict[str, int]:
    """The status a real gateway (no embedded worker, as deployed) answers, without a key, on
    the paths health checks and probes use."""
    service = make_service(tmp_path, worker=WorkerSettings(embedded=False))
    statuses = {}
    async with service, running_gateway(service) as url, aiohttp.ClientSession(url) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(path, timeout=TIMEOUT) as response:
                statuses[path] = response.status
    return statuses


# --- the Dockerfile ----------------------------------------------------------------------------


def test_the_dockerfile_builds_a_non_root_gateway_image(served: dict[str, int]) -> None:
    instructions = dockerfile_instructions()
    build, runtime = stages(instructions)
    assert re.fullmatch(r"python:3\.11-slim AS build", build[0][1], re.IGNORECASE)
    assert re.fullmatch(r"python:3\.11-slim AS runtime", runtime[0][1], re.IGNORECASE)
    # The package with both extras of the scaled-out shape, from the repository's own source.
    installs = [args for keyword, args in build if keyword == "RUN" and "pip install" in args]
    assert any("'.[redis,postgres]'" in args for args in installs), installs
    copied = [args for keyword, args in build if keyword == "COPY"]
    assert any("pyproject.toml" in args for args in copied)
    assert any(args.split()[0] == "src" for args in copied)
    assert any(
        keyword == "COPY" and args.startswith("--from=build") for keyword, args in runtime
    ), "the runtime stage copies the build stage's virtualenv"
    # The last USER is numeric and not root, and comes after the last RUN.
    users = [(index, args) for index, (keyword, args) in enumerate(runtime) if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    index, user = users[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), user
    assert int(uid) != 0, user
    assert all(keyword != "RUN" for keyword, _ in runtime[index:])
    assert ("EXPOSE", "8000") in runtime
    (healthcheck,) = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"], "slim has no curl: the check uses Python"
    assert "http://127.0.0.1:8000/healthz" in probe[2]
    assert served["/healthz"] == 200
    compile(probe[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    # Exec form, so that SIGTERM reaches tini and then surgeflow, which drains.
    (entrypoint,) = [args for keyword, args in runtime if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint)[0].endswith("tini")
    (cmd,) = [args for keyword, args in runtime if keyword == "CMD"]
    assert json.loads(cmd) == GATEWAY_COMMAND
    # The build context is the repository root: the ignore file lets in only what the build needs.
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(ignore)


# --- compose.yaml ------------------------------------------------------------------------------


def test_compose_matches_the_compose_specification() -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    require_module("check_jsonschema", "check-jsonschema")  # ships the Compose schema
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(load_compose())
    ]
    assert not errors, errors
    broken = load_compose()
    broken["services"]["nginx"]["depends_on"]["gateway-1"]["condition"] = "service_ready"
    assert list(validator.iter_errors(broken)), "the schema check does not catch a bad value"


def test_compose_has_the_scaled_out_services_wired_together() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "gateway-1",
        "gateway-2",
        "worker",
        "nginx",
        "prometheus",
        "grafana",
    }
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["image"].startswith("redis:7")
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    gateways = [services["gateway-1"], services["gateway-2"]]
    worker = services["worker"]
    for service in [*gateways, worker]:
        assert service["image"] == gateways[0]["image"], "one image for every surgeflow role"
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / service["build"]["context"] / "pyproject.toml").exists()
        for dependency in ("postgres", "redis"):
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
        assert "metrics:/var/lib/surgeflow/metrics" in service["volumes"]
    for gateway in gateways:
        assert gateway["command"] == GATEWAY_COMMAND
        assert gateway["expose"] == ["8000"]
        assert "ports" not in gateway, "/metrics needs no key: never publish a gateway's port"
        grace = float(gateway["stop_grace_period"].removesuffix("s"))
        assert grace > UVICORN_GRACEFUL_S
    assert worker["command"][:2] == ["surgeflow", "worker"]
    assert worker["deploy"]["replicas"] == 2
    worker_port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert worker["expose"] == [worker_port]
    assert f"127.0.0.1:{worker_port}/healthz" in " ".join(worker["healthcheck"]["test"])
    worker_grace = float(worker["stop_grace_period"].removesuffix("s"))
    assert worker_grace > WorkerSettings().drain_timeout_s
    # nginx in front of both gateways, on 8080, once they are healthy.
    nginx = services["nginx"]
    assert nginx["ports"] == ["8080:8080"]
    assert set(nginx["depends_on"]) == {"gateway-1", "gateway-2"}
    assert all(d["condition"] == "service_healthy" for d in nginx["depends_on"].values())
    mounts = {m.split(":")[1]: m.split(":")[0] for m in nginx["volumes"]}
    assert (COMPOSE.parent / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF
    assert (COMPOSE.parent / mounts["/etc/nginx/upstreams.conf"]).resolve() == UPSTREAMS_CONF
    assert "/nginx-health" in " ".join(nginx["healthcheck"]["test"])
    assert upstream_servers(UPSTREAMS_CONF.read_text()) == ["gateway-1:8000", "gateway-2:8000"]
    # Prometheus with deploy/prometheus, whose targets are these gateways; Grafana provisioned.
    prometheus_mounts = {
        m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]
    }
    assert (COMPOSE.parent / prometheus_mounts["/etc/prometheus"]).resolve() == PROMETHEUS.parent
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {"gateway-1:8000", "gateway-2:8000"}
    assert {target.split(":")[0] for target in targets} <= set(services)
    grafana_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    assert (COMPOSE.parent / grafana_mounts["/etc/grafana/provisioning"]).is_dir()
    dashboards = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "surgeflow.yml").read_text()
    )
    dashboard_dir = dashboards["providers"][0]["options"]["path"]
    dashboard_mount = f"{dashboard_dir}/surgeflow-dashboard.json"
    assert (COMPOSE.parent / grafana_mounts[dashboard_mount]).is_file()
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    # Every named volume a service mounts is declared.
    declared = set(compose["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_compose_configures_surgeflow_through_real_settings() -> None:
    services = load_compose()["services"]
    for name in ("gateway-1", "gateway-2", "worker"):
        environment = services[name]["environment"]
        for variable in environment:
            assert_known_variable(variable, f"compose {name}")
        env = {key: interpolate(str(value)) for key, value in environment.items()}
        settings = load_settings(env=env)  # the values are valid, not only the names
        assert settings.store.url.startswith("postgresql://")
        assert settings.store.url.endswith("@postgres:5432/surgeflow")
        assert settings.queue.url == "redis://redis:6379/0"
        assert settings.cache.url == "redis://redis:6379/1"
        assert settings.queue.url != settings.cache.url
        assert settings.worker.embedded is False
        assert settings.server.metrics_dir == "/var/lib/surgeflow/metrics"
        assert env["SURGEFLOW_API_KEYS"], "the gateways need an API key to be of use"
    postgres = services["postgres"]["environment"]
    url = services["gateway-1"]["environment"]["SURGEFLOW_STORE__URL"]
    assert f"//{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@" in url
    assert url.endswith(f"/{postgres['POSTGRES_DB']}")


# --- Kubernetes --------------------------------------------------------------------------------


def test_the_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate")
    version = "1.30.0"  # the oldest minor release still commonly supported by managed clusters
    for (kind, name), document in load_k8s().items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} {name}: {exc}")
    # The check does catch a misspelt field.
    broken = load_k8s()["Deployment", "surgeflow-gateway"]
    container(broken)["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_k8s_manifests_fit_together(served: dict[str, int]) -> None:
    objects = load_k8s()
    assert set(objects) == {
        ("ConfigMap", "surgeflow-config"),
        ("Secret", "surgeflow-secrets"),
        ("Deployment", "surgeflow-gateway"),
        ("Service", "surgeflow-gateway"),
        ("HorizontalPodAutoscaler", "surgeflow-gateway"),
        ("Deployment", "surgeflow-worker"),
        ("PodDisruptionBudget", "surgeflow-gateway"),
        ("PodDisruptionBudget", "surgeflow-worker"),
    }
    gateway = objects["Deployment", "surgeflow-gateway"]
    worker = objects["Deployment", "surgeflow-worker"]
    config = objects["ConfigMap", "surgeflow-config"]
    secret = objects["Secret", "surgeflow-secrets"]
    # Selectors match the pods' labels, and the gateway and worker pods are told apart.
    for deployment in (gateway, worker):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert gateway_labels != worker_labels
    service = objects["Service", "surgeflow-gateway"]
    assert service["spec"]["selector"].items() <= gateway_labels.items()
    assert not service["spec"]["selector"].items() <= worker_labels.items()
    for (kind, name), pdb in objects.items():
        if kind == "PodDisruptionBudget":
            target = gateway_labels if name.endswith("gateway") else worker_labels
            assert pdb["spec"]["selector"]["matchLabels"].items() <= target.items()
    # The HPA scales the gateway Deployment on CPU, from 2 replicas.
    hpa = objects["HorizontalPodAutoscaler", "surgeflow-gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        gateway["apiVersion"],
        gateway["kind"],
        gateway["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] == gateway["spec"]["replicas"] == 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # The gateway: its command, port and probes, on routes it really serves.
    gateway_container = container(gateway)
    assert "command" not in gateway_container, "command would replace the image's tini"
    assert gateway_container["args"] == GATEWAY_COMMAND
    assert "cpu" in gateway_container["resources"]["requests"], "the HPA needs a CPU request"
    (port,) = gateway_container["ports"]
    assert port["containerPort"] == 8000
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    probes = {
        kind: gateway_container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert served[probe["path"]] == 200, f"the gateway does not answer {probe['path']}"
        assert probe["port"] in (port["name"], port["containerPort"])
    # On delete: preStop sleep, then SIGTERM and uvicorn's graceful shutdown, inside the grace.
    sleep = gateway_container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    grace = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(sleep[1]) + UVICORN_GRACEFUL_S
    # The worker: its command, /healthz and /metrics on its --metrics-port, a liveness probe
    # only (it takes no traffic), a grace longer than its drain.
    worker_container = container(worker)
    args = worker_container["args"]
    assert args[:2] == ["surgeflow", "worker"]
    assert worker_container["image"] == gateway_container["image"]
    [worker_port] = worker_container["ports"]
    assert int(args[args.index("--metrics-port") + 1]) == worker_port["containerPort"]
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    liveness = worker_container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert liveness["port"] in (worker_port["name"], worker_port["containerPort"])
    assert "readinessProbe" not in worker_container
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(worker_port["containerPort"])
    drain_s = float(config["data"].get("SURGEFLOW_WORKER__DRAIN_TIMEOUT_S", 0)) or (
        WorkerSettings().drain_timeout_s
    )
    worker_grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert worker_grace > drain_s
    assert grace > drain_s
    # Every variable names a setting (or is known); $(VAR) references are defined.
    for deployment in (gateway, worker):
        pod = container(deployment)
        refs = {ref["configMapRef"]["name"] for ref in pod["envFrom"] if "configMapRef" in ref}
        refs |= {ref["secretRef"]["name"] for ref in pod["envFrom"] if "secretRef" in ref}
        assert refs == {config["metadata"]["name"], secret["metadata"]["name"]}
        defined = set(config["data"]) | set(secret["stringData"])
        for variable in pod["env"]:
            for reference in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                assert reference in defined, f"{variable['name']} uses undefined {reference}"
            defined.add(variable["name"])
        for name in defined:
            assert_known_variable(name, deployment["metadata"]["name"])
        store = next(v for v in pod["env"] if v["name"] == "SURGEFLOW_STORE__URL")
        assert store["value"].startswith("postgresql://")
        assert pod["securityContext"]["readOnlyRootFilesystem"]
    assert gateway["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    # The settings the pods get are valid, with the secret's and config's values filled in.
    values = {**config["data"], **secret["stringData"]}
    store = next(v for v in container(gateway)["env"] if v["name"] == "SURGEFLOW_STORE__URL")
    values["SURGEFLOW_STORE__URL"] = re.sub(
        r"\$\((\w+)\)", lambda m: values[m.group(1)], store["value"]
    )
    settings = load_settings(env=values)
    assert settings.store.url.startswith("postgresql://")
    assert settings.queue.url is not None
    assert settings.queue.url.startswith("redis://")
    assert settings.cache.url.startswith("redis://")
    assert settings.worker.embedded is False
    # The Secret is a template: placeholders only, and kustomize leaves it out.
    assert all(SECRET_PLACEHOLDER in value for value in secret["stringData"].values())
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secret.example.yaml"}


# --- nginx -------------------------------------------------------------------------------------


def test_nginx_matches_the_gateway() -> None:
    """What nginx.conf must agree on with the gateway, read from the files (no nginx needed)."""
    conf = NGINX_CONF.read_text()
    upstreams = UPSTREAMS_CONF.read_text()
    assert "include upstreams.conf;" in conf
    assert re.search(r"^\s*least_conn;", upstreams, re.MULTILINE)
    assert re.search(r"^\s*keepalive \d+;", upstreams, re.MULTILINE)
    for line in re.findall(r"^\s*server\s+.*$", upstreams, re.MULTILINE):
        assert "max_fails=" in line, line
        assert "fail_timeout=" in line, line
    # The body limit: nginx lets through exactly what the gateway accepts.
    (size,) = re.findall(r"client_max_body_size\s+(\d+)([km]?);", conf)
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[size[1]]
    assert int(size[0]) * factor == ServerSettings().max_body_bytes
    assert "proxy_http_version 1.1;" in conf
    assert 'proxy_set_header Connection "";' in conf
    # Only the internal location for submissions that carry Idempotency-Key resends a POST.
    assert conf.count("non_idempotent") == 1
    assert "proxy_next_upstream error timeout;" in conf


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = prepare_nginx(tmp_path, [free_port(), free_port()], free_port())
    checked = subprocess.run(
        nginx_command(tmp_path, conf, "-t"), capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "test is successful" in checked.stderr


class Upstream:
    """A stand-in gateway on loopback: says who answered, streams SSE on the routes nginx treats
    as streams, and counts what it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self.release = asyncio.Event()  # lets a stream send its second event
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get("/whoami", self.whoami)
        app.router.add_get("/v1/runs/{run_id}/events", self.stream)
        app.router.add_post("/v1/chat/completions", self.stream)
        app.router.add_post("/v1/workflows/{name}/runs", self.submit)
        app.router.add_post("/echo-size", self.echo_size)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def count(self, route: str) -> None:
        self.hits[route] = self.hits.get(route, 0) + 1

    async def whoami(self, request: web.Request) -> web.Response:
        self.count("whoami")
        return web.json_response(
            {
                "name": self.name,
                "request_id": request.headers.get("X-Request-Id"),
                "forwarded_for": request.headers.get("X-Forwarded-For"),
            }
        )

    async def submit(self, request: web.Request) -> web.Response:
        self.count("submit")
        await request.read()
        return web.json_response({"name": self.name}, status=202)

    async def echo_size(self, request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Two events with a wait between them; no X-Accel-Buffering: nginx.conf must do it."""
        self.count("stream")
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\nevent: first\ndata: {}\n\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 5)
        await response.write(b"id: 2\nevent: second\ndata: {}\n\n")
        await response.write_eof()
        return response


class ClosingUpstream:
    """Reads each request, then closes the connection without an answer: a gateway that died
    after the request reached it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.hits += 1
        writer.close()


@contextlib.asynccontextmanager
async def upstreams(*servers: Upstream | ClosingUpstream) -> AsyncIterator[None]:
    try:
        for server in servers:
            await server.start()
        yield
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
def nginx_installed() -> None:
    nginx_binary()


@pytest.mark.usefixtures("nginx_installed")
async def test_nginx_spreads_requests_and_passes_request_ids(tmp_path: Path) -> None:
    a, b = Upstream("a"), Upstream("b")
    async with (
        upstreams(a, b),
        running_nginx(tmp_path, [a.port, b.port]) as url,
        aiohttp.ClientSession(url, timeout=TIMEOUT) as http,
    ):
        names = []
        for _ in range(10):
            async with http.get("/whoami") as response:
                assert response.status == 200
                answer = await response.json()
            names.append(answer["name"])
            assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"]), answer
            assert answer["forwarded_for"] == "127.0.0.1"
        assert set(names) == {"a", "b"}, names
        assert min(names.count("a"), names.count("b")) >= 3, names
        headers = {"X-Request-Id": "req-42", "X-Forwarded-For": "203.0.113.9"}
        async with http.get("/whoami", headers=headers) as response:
            answer = await response.json()
        assert answer["request_id"] == "req-42"
        assert answer["forwarded_for"] == "203.0.113.9, 127.0.0.1"
        # /metrics and the dashboard need no key: not reachable through the balancer.
        for path in ("/metrics", "/dashboard", "/dashboard/data"):
            async with http.get(path) as response:
                assert response.status == 404, path
        # The body limit is the gateway's, and nginx's refusal is JSON like the gateway's.
        limit = ServerSettings().max_body_bytes
        async with http.post("/echo-size", data=io.BytesIO(b"x" * limit)) as response:
            assert response.status == 200
            assert (await response.json())["size"] == limit
        async with http.post("/echo-size", data=io.BytesIO(b"x" * (limit + 1))) as response:
            assert response.status == 413
            error = await response.json(content_type=None)
            assert error["error"]["type"] == "request_too_large"


@pytest.mark.usefixtures("nginx_installed")
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/runs/run-1/events"), ("POST", "/v1/chat/completions")],
)
async def test_nginx_streams_events_unbuffered(tmp_path: Path, method: str, path: str) -> None:
    a, b = Upstream("a"), Upstream("b")
    body = {"stream": True} if method == "POST" else None
    async with (
        upstreams(a, b),
        running_nginx(tmp_path, [a.port, b.port]) as url,
        aiohttp.ClientSession(url, timeout=TIMEOUT) as http,
        http.request(method, path, json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        # The first event arrives while the upstream still holds the response open.
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 3)
        assert b"event: first" in first
        assert not response.content.at_eof()
        for upstream in (a, b):
            upstream.release.set()
        rest = await asyncio.wait_for(response.content.read(), 5)
        assert b"event: second" in rest


@pytest.mark.usefixtures("nginx_installed")
async def test_nginx_keeps_serving_when_a_gateway_stops(tmp_path: Path) -> None:
    a, b = Upstream("a"), Upstream("b")
    async with (
        upstreams(a, b),
        running_nginx(tmp_path, [a.port, b.port]) as url,
        aiohttp.ClientSession(url, timeout=TIMEOUT) as http,
    ):
        await b.stop()
        for _ in range(6):
            async with http.get("/whoami") as response:
                assert response.status == 200
                assert (await response.json())["name"] == "a"
        # A refused connection never reached a gateway: even a POST goes to the other one.
        for _ in range(4):
            async with http.post("/v1/workflows/greet/runs", json={}) as response:
                assert response.status == 202
        assert a.hits["submit"] == 4
        await a.stop()
        async with http.get("/whoami") as response:
            assert response.status == 502
            error = await response.json(content_type=None)
            assert error["error"]["type"] == "bad_gateway"


@pytest.mark.usefixtures("nginx_installed")
async def test_nginx_resends_a_submission_only_with_an_idempotency_key(tmp_path: Path) -> None:
    good, closing = Upstream("a"), ClosingUpstream()
    async with (
        upstreams(good, closing),
        running_nginx(tmp_path, [good.port, closing.port]) as url,
        aiohttp.ClientSession(url, timeout=TIMEOUT) as http,
    ):
        # With a key: a submission the dying gateway took is resent to the other one.
        for index in range(4):
            headers = {"Idempotency-Key": f"order-{index}"}
            async with http.post("/v1/workflows/greet/runs", json={}, headers=headers) as response:
                assert response.status == 202
        assert closing.hits >= 1, "nginx never tried the closing upstream"
        assert good.hits["submit"] == 4
    closing_2 = ClosingUpstream()
    good_2 = Upstream("a")
    directory = tmp_path / "no-key"
    directory.mkdir()
    async with (
        upstreams(good_2, closing_2),
        running_nginx(directory, [good_2.port, closing_2.port]) as url,
        aiohttp.ClientSession(url, timeout=TIMEOUT) as http,
    ):
        # Without a key: never resent once a gateway has it, so that one becomes a 502.
        statuses = []
        for _ in range(4):
            async with http.post("/v1/workflows/greet/runs", json={}) as response:
                statuses.append(response.status)
        assert closing_2.hits >= 1
        assert statuses.count(502) == closing_2.hits, statuses
        assert statuses.count(202) == good_2.hits["submit"], statuses
        # A GET is idempotent: resent after the same failure.
        for _ in range(4):
            async with http.get("/whoami") as response:
                assert response.status == 200


def test_docs_say_what_was_not_run() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for phrase in ("docker build", "docker compose up", "kubectl apply"):
        assert phrase in docs
    for path in ("deploy/compose.yaml", "deploy/nginx/nginx.conf", "deploy/k8s"):
        assert path in docs

from pathlib import Path

import pytest

from surgeflow import ConfigError, load_settings


def test_defaults_give_the_embedded_shape() -> None:
    settings = load_settings(env={})
    assert settings.store.url.startswith("sqlite:///")
    assert settings.queue_url == settings.store.url
    assert settings.auth.enabled
    assert settings.worker.embedded
    assert [m.name for m in settings.models] == ["sim-small"]
    assert all(e.simulated is not None for e in settings.models[0].endpoints)


def test_yaml_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        "server: {port: 9000}\n"
        "models:\n"
        "  - name: chat\n"
        "    endpoints:\n"
        "      - {url: 'http://127.0.0.1:9999/v1'}\n"
    )
    env = {
        "SURGEFLOW_SERVER__PORT": "9100",
        "SURGEFLOW_AUTH__ENABLED": "false",
        "SURGEFLOW_API_KEYS": "not-a-section",
        "OTHER": "ignored",
    }
    settings = load_settings(config, env=env)
    assert settings.server.port == 9100
    assert settings.auth.enabled is False
    assert settings.models[0].endpoints[0].url == "http://127.0.0.1:9999/v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server: {port: many}", r"\$.server.port"),
        ("server: {prot: 1}", "prot"),
        ("models: [{name: x, endpoints: [{}]}]", "exactly one of 'url' or 'simulated'"),
        ("- a list", "mapping"),
        ("server: {port: [", "not valid YAML"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_unsupported_urls_are_refused_at_startup(tmp_path: Path) -> None:
    from surgeflow.service import Service

    env = {"SURGEFLOW_STORE__URL": f"sqlite:///{tmp_path / 'x.db'}"}
    with pytest.raises(ConfigError, match="unsupported cache URL 'memcached://x'"):
        Service(load_settings(env={**env, "SURGEFLOW_CACHE__URL": "memcached://x"}))
    with pytest.raises(ConfigError, match="unsupported store URL 'mysql://x'"):
        Service(load_settings(env={**env, "SURGEFLOW_STORE__URL": "mysql://x"}))

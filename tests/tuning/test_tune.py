"""``surgeflow tune``: the model picks, short bench trials against the embedded service decide."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from surgeflow.cli import app
from surgeflow.config import Settings, load_settings
from surgeflow.tuning.scenario import SLO
from surgeflow.tuning.tune import MaxConcurrency, next_value, smallest_passing, tune

RATE = 150.0
SERVICE_MS = 20.0
ENDPOINTS = 2
# The fewest slots per endpoint that keep the pools below ρ = 1: 150 × 0.02 / 2 = 1.5 → 2.
STABLE_MIN = math.ceil(RATE * SERVICE_MS / 1000 / ENDPOINTS)

runner = CliRunner()


def write_config(tmp_path: Path) -> Path:
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
    document = {
        "store": {"url": f"sqlite:///{tmp_path / 'unused.db'}"},
        "log": {"access": False},
        "models": [
            {
                "name": "sim",
                "policy": "least_connections",
                "cache": {"enabled": False},
                "endpoints": [{**endpoint, "name": name} for name in ("a", "b")],
            }
        ],
        "workflows": [],
    }
    path = tmp_path / "surgeflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path), env={})


def test_next_value_checks_below_a_pass_steps_up_past_a_failure_and_bisects() -> None:
    assert next_value({}, 8, 1, 1024) == 8  # the model's pick first
    assert next_value({8: True}, 8, 1, 1024) == 7  # does the next smaller value fail?
    assert next_value({8: True, 7: False}, 8, 1, 1024) is None  # yes: 8 is the boundary
    assert next_value({8: True, 7: True}, 8, 1, 1024) == 5  # no: the model was pessimistic
    assert next_value({8: True, 7: True, 5: False}, 8, 1, 1024) == 6  # bisect 5..7
    assert next_value({8: False}, 8, 1, 1024) == 10  # ×1.25
    assert next_value({2: False}, 2, 1, 1024) == 3  # at least +1
    assert next_value({8: False, 10: True}, 8, 1, 1024) == 9
    assert next_value({1: True}, 1, 1, 1024) is None  # the lowest value passes
    assert next_value({1024: False}, 1024, 1, 1024) is None  # nothing higher to try


def test_smallest_passing_bisects_a_monotonic_predicate() -> None:
    seen: list[int] = []

    def passes(value: int) -> bool:
        seen.append(value)
        return value >= 37

    assert smallest_passing(passes, 1, 1024) == 37
    assert len(seen) <= 12
    assert smallest_passing(lambda value: False, 1, 1024) is None


async def test_tune_is_guided_by_the_model_and_ends_on_a_passing_trial(
    settings: Settings,
) -> None:
    result = await tune(
        settings,
        model="sim",
        rate=RATE,
        slo=SLO(p99_ms=300),  # the config's 256 slots meet it easily
        knob=MaxConcurrency(),
        trial_s=2.0,
        seed=1,
        max_trials=4,
    )
    assert result.model_pick is not None
    assert result.trials[0].value == result.model_pick  # the model chose the first trial
    assert 1 <= len(result.trials) <= 4
    assert result.chosen is not None
    assert STABLE_MIN <= result.chosen <= 16
    final = next(t for t in result.trials if t.value == result.chosen)
    assert final.passed
    assert final.measured_p99_ms is not None
    assert final.measured_p99_ms <= 300
    assert final.measured_error_ratio <= 0.01
    assert result.resources == result.chosen * ENDPOINTS
    assert yaml.safe_load(result.snippet) == {
        "models": [
            {
                "name": "sim",
                "endpoints": [
                    {"name": "a", "max_concurrency": result.chosen},
                    {"name": "b", "max_concurrency": result.chosen},
                ],
            }
        ]
    }
    # The model's probes bracket its pick: the value below it was predicted to fail.
    probes = {p.value: p for p in result.probes}
    assert probes[result.model_pick].passes
    assert result.model_pick == 1 or not probes[result.model_pick - 1].passes


async def test_an_impossible_slo_ends_with_no_setting_not_a_crash(settings: Settings) -> None:
    # A p99 below the backend's own service time: no number of slots can meet it.
    result = await tune(
        settings, model="sim", rate=RATE, slo=SLO(p99_ms=5), trial_s=1.0, seed=1, max_trials=3
    )
    assert result.model_pick is None
    assert result.chosen is None
    assert result.snippet == ""
    assert result.trials
    assert not any(t.passed for t in result.trials)
    assert result.trials[0].value == MaxConcurrency.highest  # the model's best hope, measured
    assert result.outcome.startswith("no setting met the SLO")


def test_tune_command_writes_the_trials_and_the_snippet(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "tune.json"
    png = tmp_path / "tune.png"
    plots = importlib.util.find_spec("matplotlib") is not None
    plot_args = ["--plot", str(png)] if plots else []
    result = runner.invoke(
        app,
        [
            "tune",
            "--config",
            str(config),
            "--model",
            "sim",
            "--rate",
            str(RATE),
            "--slo-p99-ms",
            "300",
            "--trial-s",
            "1.5",
            "--max-trials",
            "2",
            "--json",
            str(out),
            *plot_args,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "max_concurrency: sim at 150 req/s" in " ".join(result.output.split())
    assert "max_concurrency:" in result.output
    assert "slots in total" in result.output
    document = json.loads(out.read_text())
    assert document["knob"] == "max_concurrency"
    assert 1 <= len(document["trials"]) <= 2
    assert document["trials"][0]["value"] == document["model_pick"]
    for trial in document["trials"]:
        assert {"value", "predicted_p99_ms", "measured_p99_ms", "measured_error_ratio"} <= set(
            trial
        )
        assert isinstance(trial["passed"], bool)
    assert png.exists() == plots
    if document["chosen"] is not None:
        assert f"max_concurrency: {document['chosen']}" in document["snippet"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "no model 'nope'"),
        (["--rate", "0"], "--rate must be > 0"),
        (["--slo-p99-ms", "-1"], "--slo-p99-ms must be > 0"),
        (["--max-trials", "0"], "--max-trials must be ≥ 1"),
    ],
)
def test_tune_command_rejects_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    result = runner.invoke(app, ["tune", "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1

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
from surgeflow.errors import ConfigError
from surgeflow.tuning.knobs import (
    CacheTTL,
    Candidate,
    MaxConcurrency,
    MaxInFlight,
    WorkerConcurrency,
    Workers,
    Workload,
)
from surgeflow.tuning.scenario import SLO
from surgeflow.tuning.tune import merge_snippets, next_value, smallest_passing, tune, tune_all
from tests.tuning import sleepy
from tests.tuning.configs import ENDPOINTS, SERVICE_MS, sim_config

RATE = 150.0
# The fewest slots per endpoint that keep the pools below ρ = 1: 150 × 0.02 / 2 = 1.5 → 2.
STABLE_MIN = math.ceil(RATE * SERVICE_MS / 1000 / ENDPOINTS)

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(sim_config(tmp_path), env={})


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
        Workload(model="sim"),
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
        settings, Workload(model="sim"), rate=RATE, slo=SLO(p99_ms=5), trial_s=1.0, max_trials=3
    )
    assert result.model_pick is None
    assert result.chosen is None
    assert result.snippet == ""
    assert result.trials
    assert not any(t.passed for t in result.trials)
    assert result.trials[0].value == MaxConcurrency.highest  # the model's best hope, measured
    assert result.outcome.startswith("no setting met the SLO")


def test_tune_command_writes_the_trials_and_the_snippet(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
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
    assert "max_concurrency: chat to sim at 150 req/s" in " ".join(result.output.split())
    assert "max_concurrency:" in result.output
    assert "slots in total" in result.output
    report = json.loads(out.read_text())
    (document,) = report["results"]
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
        assert report["snippet"] == document["snippet"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "no model 'nope'"),
        (["--rate", "0"], "--rate must be > 0"),
        (["--slo-p99-ms", "-1"], "--slo-p99-ms must be > 0"),
        (["--max-trials", "0"], "--max-trials must be ≥ 1"),
        (["--knob", "nope"], "no knob 'nope'; the knobs are max_concurrency, max_in_flight"),
        (["--knob", "workers"], "knob workers is tuned under runs load, not chat"),
        (["--knob", "cache_ttl_s"], "tuning cache_ttl_s needs repeated prompts"),
        (["--target", "runs", "--knob", "workers"], "--target runs needs --workflow NAME"),
        (["--target", "mail"], "--target must be chat or runs"),
        (["--target", "runs", "--workflow", "w", "--input", "[1]"], "--input must be a JSON"),
        (["--knob", "max_in_flight", "--knob", "max_in_flight"], "each knob may be named once"),
    ],
)
def test_tune_command_rejects_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    config = sim_config(tmp_path)
    result = runner.invoke(app, ["tune", "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_snippets_merge_by_key_and_by_name() -> None:
    merged = merge_snippets(
        [
            {"models": [{"name": "sim", "endpoints": [{"name": "a", "max_concurrency": 3}]}]},
            {"server": {"max_in_flight": 40}},
            {"models": [{"name": "sim", "cache": {"ttl_s": 5}}]},
            {"models": [{"name": "other", "cache": {"ttl_s": 9}}]},
        ]
    )
    assert merged == {
        "models": [
            {
                "name": "sim",
                "endpoints": [{"name": "a", "max_concurrency": 3}],
                "cache": {"ttl_s": 5},
            },
            {"name": "other", "cache": {"ttl_s": 9}},
        ],
        "server": {"max_in_flight": 40},
    }


async def test_knobs_tuned_in_turn_build_on_each_other(settings: Settings) -> None:
    # Slots first, then the admission limit with those slots in place: a handful of slots per
    # endpoint needs only tens of requests in flight, far below the unlimited default.
    report = await tune_all(
        settings,
        Workload(model="sim"),
        [MaxConcurrency(), MaxInFlight()],
        rate=RATE,
        slo=SLO(p99_ms=300, max_error_ratio=0.02),
        trial_s=1.0,
        max_trials=2,
        requests=10_000,  # per probe of the model: enough at these rates, and quicker
    )
    slots, admission = report.results
    assert slots.knob == "max_concurrency"
    assert admission.knob == "max_in_flight"
    assert admission.current is None  # unlimited in the config
    assert slots.chosen is not None
    assert admission.chosen is not None
    # The admission limit was tuned with the chosen slots in place: the model's pick for it
    # is small, since a request holds a slot ~20 ms and 150 req/s keep ~3 in flight.
    assert admission.model_pick is not None
    assert admission.model_pick <= 64
    merged = yaml.safe_load(report.snippet)
    assert merged["server"] == {"max_in_flight": admission.chosen}
    assert merged["models"][0]["endpoints"][0]["max_concurrency"] == slots.chosen
    passed = [t for t in admission.trials if t.value == admission.chosen]
    assert passed
    assert passed[0].passed
    assert passed[0].measured_error_ratio <= 0.02


async def test_a_cache_ttl_is_chosen_for_repeated_prompts(tmp_path: Path) -> None:
    # One slot per endpoint serves 100 calls/s; at 150 req/s the cache must answer a third of
    # them. 60% repeat one of 100 prompts (0.9/s each): a TTL of T answers 0.6·0.9T/(1 + 0.9T),
    # a third from about T = 1.4 s; the trials warm up a TTL long, so the cache is in its
    # steady state when they measure.
    settings = load_settings(sim_config(tmp_path, cache={}), env={})  # the cache on
    candidate = MaxConcurrency().apply(Candidate(settings=settings), "sim", 1)
    result = await tune(
        candidate,
        Workload(model="sim", hit_ratio=0.6, prompts=100),
        knob=CacheTTL(),
        rate=RATE,
        slo=SLO(p99_ms=400),
        trial_s=3.0,
        max_trials=3,
    )
    assert result.model_pick is not None
    assert 2 <= result.model_pick <= 4
    assert result.chosen is not None
    assert yaml.safe_load(result.snippet) == {
        "models": [{"name": "sim", "cache": {"ttl_s": result.chosen}}]
    }
    assert result.resources is not None
    assert 0 < result.resources <= 100
    failed_below = [t for t in result.trials if not t.passed]
    assert all(t.value < result.chosen for t in failed_below)


def runs_settings(tmp_path: Path, concurrency: int) -> Settings:
    document = {
        "store": {"url": f"sqlite:///{tmp_path / 'unused.db'}"},
        "log": {"access": False},
        "worker": {"concurrency": concurrency, "poll_interval_s": 0.1},
        "workflows": ["tests.tuning.sleepy:workflows"],
    }
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_settings(path, env={})


async def test_worker_slots_are_tuned_for_durable_runs(tmp_path: Path) -> None:
    # Runs of 50 ms at 40/s keep 2 slots busy on average: 2 slots are ρ = 1, 3 or more meet a
    # p99 of 300 ms.
    result = await tune(
        runs_settings(tmp_path, 64),
        Workload(kind="runs", workflow="sleepy"),
        knob=WorkerConcurrency(),
        rate=40,
        slo=SLO(p99_ms=300),
        trial_s=2.0,
        max_trials=3,
    )
    calibration = result.calibration
    assert calibration is not None
    assert sleepy.WAIT_S * 1000 <= calibration.service.mean_s * 1000 < sleepy.WAIT_S * 1000 + 30
    assert calibration.cpu_ms < sleepy.WAIT_S * 1000  # the run waits; it hardly computes
    assert result.model_pick is not None
    assert 3 <= result.model_pick <= 6
    probes = {p.value: p for p in result.probes}
    assert not probes[result.model_pick - 1].passes
    assert all(p.p99_ms is None for p in result.probes if p.value <= 2)  # ρ ≥ 1: ruled out
    assert result.chosen is not None
    assert 3 <= result.chosen <= 8
    assert yaml.safe_load(result.snippet) == {"worker": {"concurrency": result.chosen}}


@pytest.mark.slow
async def test_worker_processes_are_tuned_with_real_processes(tmp_path: Path) -> None:
    # One slot a worker: 50 ms runs at 10/s keep one slot half busy, so one process serves
    # them; each of its runs reaches the follower through the store's poll (≤ 1 s).
    result = await tune(
        runs_settings(tmp_path, 1),
        Workload(kind="runs", workflow="sleepy"),
        knob=Workers(),
        rate=10,
        slo=SLO(p99_ms=3000),
        trial_s=2.0,
        max_trials=1,
    )
    assert result.model_pick == 1
    (trial,) = result.trials
    assert trial.value == 1
    assert trial.passed, trial
    assert trial.achieved_rps > 5  # runs did go through the worker process
    assert trial.measured_p99_ms is not None
    assert trial.measured_p99_ms > 50
    assert yaml.safe_load(result.snippet) == {"worker": {"embedded": False}}
    assert result.advice == "run 1 `surgeflow worker` process beside the gateway"


async def test_tuning_input_no_trial_could_use_is_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="is tuned under runs load"):
        await tune(settings, Workload(model="sim"), knob=Workers(), rate=1, slo=SLO(p99_ms=1))

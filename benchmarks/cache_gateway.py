"""Gateway req/s at 0 %, 50 % and 90 % chat-cache hit rate, side by side, against one upstream.

Two processes on loopback: a ``surgeflow mock-llm`` upstream that answers every call after a fixed
20 ms (``--ttft-ms 20 --tokens-per-s 0 --latency constant``, no ``--capacity``: every call is
served at once, none queues), and the surgeflow gateway (``_servers.py gateway``: auth on, one
model whose only endpoint is the mock, the default ``memory://`` cache). wrk (50 connections,
2 threads, a Lua script) is the load generator, in its own process; without wrk, a Python
closed-loop generator (``_servers.py pyload``) takes its place.

Every request has ``temperature: 0``, which the gateway caches by default. For a hit rate h, a
request asks one of ``--hot-prompts`` hot prompts (chosen at random) with probability h, and
otherwise a prompt nobody sent before (a counter, per load-generator thread, under a nonce new
for every load run). Before every trial the gateway's cache is cleared (``DELETE
/v1/admin/cache``), the hot prompts are warmed into it and asked again to check that they hit;
so every trial starts from the same cache. The real hit rate is measured at the upstream:
1 - (chat calls the mock counted during the trial) / (requests the load generator sent), from the
processes' own counters, not from the plan. When the gateway says how the cache answered (an
``X-Surgeflow-Cache: hit | miss`` header; commit 86c62ed has none), the load generator also
counts what it said on every answer, as a second reading.

Each round measures every rate once, in rotating order, with a warm-up run before each trial.
Reported: medians over rounds of req/s, p50/p99 latency, the measured hit rates, the gateway's
CPU µs per request and the cores the gateway, the mock and the load generator used; and the
median of the per-round ratios of each rate to the 0 % rate, measured in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    PYTHON,
    child_process,
    cpu_seconds,
    free_port,
    machine,
    median,
    print_table,
    write_results,
)
from _servers import MODEL, PROMPT_MARK, hot_prompt

SERVERS = str(Path(__file__).resolve().parent / "_servers.py")
PATH = "/v1/chat/completions"
SETTLE_S = 0.3
# The gateway's answer to "was this a cache hit?", when it gives one (hit | stale | miss | bypass).
CACHE_HEADER = "x-surgeflow-cache"

# Every thread has its own Lua state: `tid`, `hot_sent` and `fresh_sent` live there, and
# `done` (in the main state) adds them up through the thread objects `setup` kept.
LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  math.randomseed(%(seed)d * 100 + tid)
  hot_sent, fresh_sent = 0, 0
  said_hit, said_miss, said_other, said_nothing = 0, 0, 0, 0
end
function response(status, headers, body)
  local said = headers["%(header)s"]
  if said == "hit" then said_hit = said_hit + 1
  elseif said == "miss" then said_miss = said_miss + 1
  elseif said then said_other = said_other + 1
  else said_nothing = said_nothing + 1 end
end
local function body(prompt)
  return '{"model":"%(model)s","temperature":0,"messages":[{"role":"user","content":"' ..
    prompt .. '"}]}'
end
function request()
  local prompt
  if math.random() < %(rate).6f then
    hot_sent = hot_sent + 1
    local i = math.random(%(hot)d) - 1
    prompt = string.format("Hot question %%d: what is the refund window for order %%d?", i, i)
  else
    fresh_sent = fresh_sent + 1
    prompt = string.format(
      "Fresh question %(nonce)s-%%d-%%d: what is the refund window for order %%d?",
      tid, fresh_sent, fresh_sent)
  end
  return wrk.format(nil, nil, nil, body(prompt))
end
done = function(summary, latency, requests)
  local n = {hot_sent = 0, fresh_sent = 0, said_hit = 0, said_miss = 0, said_other = 0,
    said_nothing = 0}
  for _, thread in ipairs(threads) do
    for name, count in pairs(n) do n[name] = count + thread:get(name) end
  end
  local e = summary.errors
  io.write(string.format(
    'LOAD_JSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%.0f,"p90_us":%%.0f,"p99_us":%%.0f,"max_us":%%.0f,' ..
    '"hot_sent":%%d,"fresh_sent":%%d,"said_hit":%%d,"said_miss":%%d,"said_other":%%d,' ..
    '"said_nothing":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    n.hot_sent, n.fresh_sent, n.said_hit, n.said_miss, n.said_other, n.said_nothing))
end
"""


def chat_body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}


class Setup:
    """The two servers, the keys, and what every trial needs to know."""

    def __init__(self, args: argparse.Namespace, tmp: Path, pids: dict[str, int]) -> None:
        self.args = args
        self.tmp = tmp
        self.pids = pids
        self.key = "sk-bench-" + secrets.token_hex(16)
        self.admin_key = "sk-bench-admin-" + secrets.token_hex(16)
        self.nonce = secrets.token_hex(4)
        self.gateway = ""
        self.mock = ""


async def upstream_calls(setup: Setup) -> int:
    """Chat completions the mock has counted so far."""
    async with aiohttp.ClientSession() as http, http.get(f"{setup.mock}/admin/stats") as response:
        stats: dict[str, Any] = await response.json()
        return int(stats["requests"])


async def _ask(http: aiohttp.ClientSession, url: str, key: str | None, prompt: str) -> int:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with http.post(url + PATH, json=chat_body(prompt), headers=headers) as response:
        payload = await response.read()
    if response.status == 200 and not json.loads(payload)["choices"][0]["message"]["content"]:
        raise RuntimeError(f"the gateway answered 200 with no content: {payload[:300]!r}")
    return response.status


async def reset_cache(setup: Setup) -> int:
    """Clear the gateway's cache, warm the hot prompts into it, check they hit; entries deleted."""
    headers = {"Authorization": f"Bearer {setup.admin_key}"}
    async with aiohttp.ClientSession() as http:
        url = f"{setup.gateway}/v1/admin/cache"
        async with http.delete(url, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"clearing the cache: HTTP {response.status}")
            deleted = int((await response.json())["deleted"])
        prompts = [hot_prompt(i) for i in range(setup.args.hot_prompts)]
        before = await upstream_calls(setup)
        statuses = await asyncio.gather(*(_ask(http, setup.gateway, setup.key, p) for p in prompts))
        warmed = await upstream_calls(setup)
        statuses += await asyncio.gather(
            *(_ask(http, setup.gateway, setup.key, p) for p in prompts)
        )
        again = await upstream_calls(setup)
    if set(statuses) != {200}:
        raise RuntimeError(f"warming the cache: statuses {sorted(set(statuses))}")
    if warmed - before != len(prompts) or again != warmed:
        raise RuntimeError(
            f"warming {len(prompts)} hot prompts made {warmed - before} upstream calls, "
            f"asking them again {again - warmed} (expected {len(prompts)} and 0)"
        )
    return deleted


def load(setup: Setup, rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    """One bounded load run against the gateway: the load generator's summary.

    Its fresh prompts carry a nonce made of this run's nonce and ``seed``, new for every load.
    """
    args, url = setup.args, setup.gateway + PATH
    nonce = f"{setup.nonce}-{seed}"
    if args.loadgen == "wrk":
        lua = setup.tmp / f"cache-{nonce}.lua"
        fields = {"key": setup.key, "model": MODEL, "rate": rate, "hot": args.hot_prompts}
        fields["header"] = CACHE_HEADER
        lua.write_text(LUA % {**fields, "seed": seed, "nonce": nonce}, encoding="utf-8")
        command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration_s:g}s"]
        command += ["--latency", "--timeout", "5s", "-s", str(lua), url]
    else:
        template = json.dumps(chat_body(PROMPT_MARK.decode()))
        command = [PYTHON, SERVERS, "pyload", f"--url={url}", f"--body={template}"]
        command += [f"--api-key={setup.key}", f"--connections={args.connections}"]
        command += [f"--duration-s={duration_s}", f"--hot-rate={rate}"]
        command += [f"--hot-prompts={args.hot_prompts}", f"--nonce={nonce}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("LOAD_JSON ")), None)
    if line is None:
        raise RuntimeError(f"load generator failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    raw: dict[str, Any] = json.loads(line.removeprefix("LOAD_JSON "))
    raw["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # Requests still under way when the generator stopped reach the upstream a moment later.
    time.sleep(SETTLE_S)
    return raw


def trial(setup: Setup, rate: float, round_index: int) -> dict[str, float]:
    """Reset the cache, warm up, then one measured load run at hit rate ``rate``."""
    deleted = asyncio.run(reset_cache(setup))
    seed = (round_index * 1000 + round(rate * 100)) * 2
    load(setup, rate, setup.args.warmup_s, seed)
    calls_before = asyncio.run(upstream_calls(setup))
    gateway_pid, mock_pid = setup.pids["gateway"], setup.pids["mock"]
    cpu_before = cpu_seconds(gateway_pid), cpu_seconds(mock_pid)
    raw = load(setup, rate, setup.args.duration_s, seed + 1)
    gateway_cpu_s = cpu_seconds(gateway_pid) - cpu_before[0]
    mock_cpu_s = cpu_seconds(mock_pid) - cpu_before[1]
    calls = asyncio.run(upstream_calls(setup)) - calls_before
    requests = raw["requests"]
    elapsed_s = raw["duration_us"] / 1e6
    errors = sum(raw.get(k, 0) for k in ("connect", "read", "write", "status", "timeout"))
    # Sent, not answered: wrk counts only the answers it got before it stopped, while the
    # requests it had sent and not yet seen answered (at most one per connection) reached the
    # gateway and, when they missed, the upstream.
    sent = raw["hot_sent"] + raw["fresh_sent"]
    said = raw["said_hit"] + raw["said_miss"] + raw["said_other"]
    return {
        "rps": requests / elapsed_s,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "hit_rate": 1 - calls / sent,
        "hot_share_sent": raw["hot_sent"] / sent,
        # What the gateway's header said, over the answers that carried it (all, or none when
        # the gateway sets no such header).
        "header_hit_rate": raw["said_hit"] / said if said else -1.0,
        "header_missing": raw["said_nothing"],
        "header_other": raw["said_other"],
        "requests": requests,
        "sent": sent,
        "upstream_calls": calls,
        "errors": errors,
        "gateway_cpu_us_per_request": gateway_cpu_s / requests * 1e6,
        "gateway_cores": gateway_cpu_s / elapsed_s,
        "mock_cores": mock_cpu_s / elapsed_s,
        "loadgen_cores": raw["cpu_s"] / elapsed_s,
        "entries_cleared_before": deleted,
    }


def sanity(setup: Setup) -> bool:
    """Auth is on, a temperature-0 answer is cached, the admin key clears the cache; whether the
    gateway says so in a header."""

    async def check() -> bool:
        async with aiohttp.ClientSession() as http:
            prompt = f"Sanity check {setup.nonce}: what is the refund window?"
            for key, wanted in ((None, 401), ("sk-wrong", 401)):
                status = await _ask(http, setup.gateway, key, prompt)
                if status != wanted:
                    raise RuntimeError(f"key {key!r}: HTTP {status}, expected {wanted}")
            before = await upstream_calls(setup)
            said = []
            for _ in range(2):
                headers = {"Authorization": f"Bearer {setup.key}"}
                body = chat_body(prompt)
                async with http.post(setup.gateway + PATH, json=body, headers=headers) as response:
                    await response.read()
                    said.append((response.status, response.headers.get(CACHE_HEADER)))
            calls = await upstream_calls(setup) - before
        if [status for status, _ in said] != [200, 200] or calls != 1:
            raise RuntimeError(f"cache check: {said}; {calls} upstream calls")
        headers_said = [header for _, header in said]
        if headers_said not in (["miss", "hit"], [None, None]):
            raise RuntimeError(f"cache check: {CACHE_HEADER} said {headers_said}, not miss, hit")
        await reset_cache(setup)
        return headers_said[0] is not None

    return asyncio.run(check())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=8.0, help="per measured trial")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="before every trial")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rates", default="0,0.5,0.9", help="hit rates, the first the baseline")
    parser.add_argument("--hot-prompts", type=int, default=100)
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="the mock's latency per call")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    if args.loadgen == "python":
        print("NOTE: not wrk but the Python closed-loop generator (_servers.py pyload), which")
        print("      costs far more CPU per request than wrk: every figure is lower than with wrk.")
    info = machine()
    ports = {"mock": free_port(), "gateway": free_port()}
    mock_args = ["--ttft-ms", f"{args.ttft_ms:g}", "--tokens-per-s", "0", "--latency", "constant"]
    trials: dict[str, list[dict[str, float]]] = {f"{r:g}": [] for r in rates}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cache-")))
        setup = Setup(args, tmp, {})
        setup.mock = f"http://127.0.0.1:{ports['mock']}"
        setup.gateway = f"http://127.0.0.1:{ports['gateway']}"
        mock = [PYTHON, "-m", "surgeflow", "mock-llm", "--port", str(ports["mock"]), *mock_args]
        gateway = [PYTHON, SERVERS, "gateway", "--port", str(ports["gateway"])]
        gateway += ["--upstream", setup.mock, "--api-key", setup.key, "--admin-key"]
        gateway += [setup.admin_key]
        for role, command in (("mock", mock), ("gateway", gateway)):
            process = stack.enter_context(child_process(role, command, port=ports[role]))
            setup.pids[role] = process.pid
        has_header = sanity(setup)
        if not has_header:
            print(
                f"NOTE: the gateway sets no {CACHE_HEADER} header: hit rates from upstream counts"
            )
        print(
            f"load generator: {args.loadgen}; {args.connections} connections; upstream "
            f"{args.ttft_ms:g} ms per call; {args.rounds} rounds of {args.duration_s:g} s "
            f"(+{args.warmup_s:g} s warm-up) per rate"
        )
        for index in range(args.rounds):
            shift = index % len(rates)
            for rate in rates[shift:] + rates[:shift]:
                result = trial(setup, rate, index)
                trials[f"{rate:g}"].append(result)
                print(
                    f"  round {index + 1}/{args.rounds} hit rate {rate:4.0%}: "
                    f"{result['rps']:7,.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                    f"p99 {result['p99_ms']:6.2f} ms  hit rate: upstream "
                    f"{result['hit_rate']:6.1%}, header {result['header_hit_rate']:6.1%}  "
                    f"gateway {result['gateway_cores']:.2f} cores "
                    f"({result['gateway_cpu_us_per_request']:.0f} CPU-µs/req)  "
                    f"mock {result['mock_cores']:.2f}  loadgen {result['loadgen_cores']:.2f} "
                    f"cores  errors {result['errors']:.0f}",
                    flush=True,
                )
    metrics = ["rps", "p50_ms", "p99_ms", "hit_rate", "hot_share_sent", "header_hit_rate"]
    metrics += ["gateway_cpu_us_per_request", "gateway_cores", "mock_cores", "loadgen_cores"]
    summary: dict[str, dict[str, float]] = {
        name: {m: median([t[m] for t in runs]) for m in metrics} for name, runs in trials.items()
    }
    base = f"{rates[0]:g}"
    ratios: dict[str, dict[str, float]] = {}
    for name, runs in trials.items():
        summary[name]["errors"] = sum(t["errors"] for t in runs)
        ratios[name] = {
            m: median([t[m] / b[m] for t, b in zip(runs, trials[base], strict=True)])
            for m in ("rps", "p50_ms", "p99_ms")
        }
    rows = []
    for name, s in summary.items():
        r = ratios[name]
        rows.append(
            [
                f"{float(name):.0%}",
                f"{s['hot_share_sent']:.1%}",
                f"{s['hit_rate']:.1%}",
                f"{s['header_hit_rate']:.1%}" if has_header else "-",
                s["rps"],
                s["p50_ms"],
                s["p99_ms"],
                s["gateway_cpu_us_per_request"],
                s["gateway_cores"],
                s["mock_cores"],
                s["loadgen_cores"],
                f"{r['rps']:.2f}×",
                f"{r['p50_ms']:.2f}×",
                f"{r['p99_ms']:.2f}×",
                f"{s['errors']:.0f}",
            ]
        )
    print()
    headers = ["hit rate", "hot sent", "by upstream", "by header", "req/s", "p50 ms", "p99 ms"]
    headers += ["gw CPU µs/req"]
    headers += ["gw cores", "mock cores", "loadgen cores", "req/s ×0%", "p50 ×0%", "p99 ×0%"]
    headers += ["errors"]
    print_table(headers, rows)
    results: dict[str, Any] = {"benchmark": "cache_gateway", "machine": info}
    results["settings"] = {**vars(args), "mock_args": mock_args}
    results["gateway_sets_cache_header"] = has_header
    results.update(summary=summary, ratios_to_baseline=ratios, trials=trials)
    print(f"results: {write_results('cache_gateway', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

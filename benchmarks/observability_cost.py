"""What observability costs the gateway: req/s with metrics and logs on, and off, side by side.

Server processes on loopback (see ``_servers.py``): an upstream that answers at once and
surgeflow gateways forwarding to it: one with ``--observability on`` (request metrics, the
monitor sampling them every second and the default alert rules, JSON logs with an access line
per request through the writer thread, written to /dev/null), one with ``--observability off``
(none of it), and with ``--traced`` a third with all of "on" plus an OpenTelemetry span tree
for every request (made, then dropped: exporter none). wrk loads one gateway at a time, rotating
which goes first each round; reported are the medians of req/s, p50/p99 and CPU µs per request,
and the medians of the per-round ratios to off. The issue's target: on ≥ 0.9× off.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import PYTHON, child_process, free_port, machine, median, print_table, write_results
from gateway_proxy import LUA, SERVERS, Servers, check, expect, request_body, trial


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=8.0, help="per measured trial")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="before every trial")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--target-ratio", type=float, default=0.9)
    parser.add_argument(
        "--traced", action="store_true", help="also a gateway with tracing on (sample ratio 1)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also gateways with only metrics (and the monitor and alerts) and only logs on",
    )
    args = parser.parse_args()
    targets: tuple[str, ...] = ("on", "off")
    if args.breakdown:
        targets += ("metrics", "logs")
    if args.traced:
        targets += ("traced",)
    if not shutil.which("wrk"):
        print("this benchmark needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2
    args.loadgen = "wrk"
    key = "sk-bench-" + secrets.token_hex(16)
    ports = {name: free_port() for name in ("upstream", *targets)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    results: dict[str, Any] = {"benchmark": "observability_cost", "machine": machine()}
    results["settings"] = dict(vars(args))
    trials: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    ratios: dict[str, list[float]] = {t: [] for t in targets if t != "off"}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-obs-")))
        pids: dict[str, int] = {}
        command = [PYTHON, SERVERS, "upstream", "--port", str(ports["upstream"])]
        pids["upstream"] = stack.enter_context(
            child_process("upstream", command, port=ports["upstream"])
        ).pid
        for target in targets:
            command = [PYTHON, SERVERS, "gateway", "--port", str(ports[target])]
            command += ["--upstream", urls["upstream"], "--api-key", key]
            command += ["--observability", target]
            pids[target] = stack.enter_context(
                child_process(target, command, port=ports[target])
            ).pid
        servers = Servers(urls, pids, key)
        body = request_body(False)
        for target in targets:
            expect(check(urls[target], body, key, False), 200, target)
        lua = tmp / "chat.lua"
        lua.write_text(LUA % {"body": body, "key": key}, encoding="utf-8")
        for index in range(args.rounds):
            shift = index % len(targets)
            order = targets[shift:] + targets[:shift]
            for target in order:
                trial(args, servers, target, body, lua, args.warmup_s)
                result = trial(args, servers, target, body, lua, args.duration_s)
                trials[target].append(result)
                print(
                    f"  round {index + 1}/{args.rounds} {target:6} {result['rps']:8,.0f} req/s"
                    f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
                    f"  {result['cpu_us_per_request']:4.0f} CPU-µs/req"
                    f"  errors {result['errors']:.0f}",
                    flush=True,
                )
            for target, own in ratios.items():
                own.append(trials[target][-1]["rps"] / trials["off"][-1]["rps"])
    summary = {
        target: {
            metric: median([r[metric] for r in runs])
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
        }
        | {"errors": sum(r["errors"] for r in runs)}
        for target, runs in trials.items()
    }
    results.update(
        summary=summary,
        ratio_on_over_off=median(ratios["on"]),
        ratios_over_off={target: median(own) for target, own in ratios.items()},
        ratios=ratios,
        trials=trials,
    )
    print()
    print_table(
        ["observability", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "errors"],
        [
            [t, s["rps"], s["p50_ms"], s["p99_ms"], s["cpu_us_per_request"], s["errors"]]
            for t, s in summary.items()
        ],
    )
    ratio = median(ratios["on"])
    verdict = "meets" if ratio >= args.target_ratio else "MISSES"
    print(f"on / off = {ratio:.3f} in req/s ({verdict} the {args.target_ratio}x target)")
    for target, own in ratios.items():
        if target != "on":
            print(f"{target} / off = {median(own):.3f} in req/s")
    print(f"results: {write_results('observability_cost', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

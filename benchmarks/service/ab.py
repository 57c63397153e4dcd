"""Two builds of the service, measured in turns: is a change faster, on a noisy machine?

`python -m benchmarks.service.ab --before DIR [--rounds 7] [--seconds 4] [--db sqlite]
[--case binary:1:32] [--case json:1:32]` serves this checkout and DIR (another checkout's
`app/` and `models/`, e.g. `git archive <commit> | tar -x -C DIR`) on one throw-away database
with one trained series, then runs each case against the two servers alternately, `rounds`
times, from the load client in its own process. Alternating puts both under the same passing
load from other work; the figures are medians over the rounds and the ratio after/before of
per-round pairs. Each case is `wire:windows per request:concurrency`.

Writes `benchmarks/out/service_ab_<name>.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.service.common import (
    Load,
    Server,
    cpu_seconds,
    database,
    log,
    median,
    provenance,
    run_load,
    score_requests,
    serve,
    trained_series,
    write_result,
)


def measure(server: Server, requests: list[bytes], concurrency: int, seconds: float) -> Any:
    pids = server.serving_pids()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    result = run_load(server, requests, Load(concurrency, seconds, warmup=1.0))
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    total = result["requests"] * (1 + 1.0 / seconds)  # CPU spans warm-up and measurement
    result["server_cpu_ms_per_request"] = round(cpu / total * 1000, 3) if total else None
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = [tuple(case.split(":")) for case in args.case]
    rows: dict[str, dict[str, list[Any]]] = {
        case: {"after": [], "before": []} for case in args.case
    }
    with database(args.db) as url, serve(url) as after:
        series_id = trained_series(after, url)
        # Both with their embedded worker (idle: no job is queued), as `vigil serve` runs by
        # default: a worker beside the API puts its metrics in multiprocess mode, which costs
        # every request more, so a build without one would measure a cheaper configuration.
        with serve(url, app_dir=Path(args.before)) as before:
            before.key = after.key  # the bootstrap key is made once per database
            servers = {"after": after, "before": before}
            for round_ in range(args.rounds):
                # Alternate which build goes first, so neither always follows the other.
                order = ("after", "before") if round_ % 2 == 0 else ("before", "after")
                for (wire, windows, concurrency), name in zip(cases, args.case, strict=True):
                    for build in order:
                        server = servers[build]
                        requests = score_requests(
                            server, series_id, windows=int(windows), wire=wire
                        )
                        result = measure(server, requests, int(concurrency), args.seconds)
                        rows[name][build].append(result)
                        log(
                            f"round {round_ + 1} {name:14} {build:6}: "
                            f"{result['windows_per_s']:8.1f} win/s p99 {result['p99_ms']:7.2f} ms "
                            f"{result['server_cpu_ms_per_request']} ms CPU/request"
                        )
    summary = {}
    for name, builds in rows.items():
        entry: dict[str, Any] = {}
        for build, results in builds.items():
            entry[build] = {
                metric: median([r[metric] for r in results])
                for metric in ("windows_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
            }
        pairs = zip(builds["after"], builds["before"], strict=True)
        entry["throughput_ratio_after_before"] = round(
            median([a["windows_per_s"] / b["windows_per_s"] for a, b in pairs]), 3
        )
        summary[name] = entry
    return {"rounds": args.rounds, "seconds": args.seconds, "summary": summary, "raw": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="directory with the other app/, models/")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--case", action="append", default=None)
    parser.add_argument("--name", default="ab")
    args = parser.parse_args()
    args.case = args.case or ["binary:1:32", "json:1:32"]
    command = "python -m benchmarks.service.ab " + " ".join(sys.argv[1:])
    result = {**provenance(command), "before_dir": args.before, **run(args)}
    path = write_result(f"ab_{args.name}", result)
    for name, entry in result["summary"].items():
        log(
            f"{name}: after {entry['after']} | before {entry['before']} | "
            f"throughput after/before {entry['throughput_ratio_after_before']}x"
        )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Detection quality through the API (issue 13): Vigil as a client gets it, beside peers.

    .venv/bin/python -m benchmarks.quality                       # tasks a-d, 3 seeds
    .venv/bin/python -m benchmarks.quality --quick --tasks a,c   # smoke test
    .venv/bin/python -m benchmarks.quality --tasks d --arms fp,fn   # task (d), two arms
    .venv/bin/python -m benchmarks.quality.report /tmp/vigil-quality.json   # tables again

One `vigil serve` (SQLite in a temporary folder, embedded worker, default settings) serves the
whole run; the peers run in this process with one thread, while the service's worker trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import models
from benchmarks.quality import class_anomaly, classify, faults, feedback
from benchmarks.quality.common import log, vigil_service
from benchmarks.quality.report import markdown
from benchmarks.service.common import machine_cpu, provenance, steal_share

TASKS = {
    "a": class_anomaly.run,
    "b": faults.run,
    "c": classify.run,
    "d": feedback.run,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--seeds", type=int, default=3, help="repetitions (training seeds)")
    parser.add_argument("--quick", action="store_true", help="a tiny subset, ~1-2 min")
    parser.add_argument(
        "--arms",
        default=None,
        help=f"task (d)'s arms, comma-separated from {','.join(feedback.ARMS)} "
        f"(default {','.join(feedback.DEFAULT_ARMS)})",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/vigil-quality.json"))
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else None
    bad_arms = sorted(set(arms or ()) - set(feedback.ARMS))
    if bad_arms:
        parser.error(f"unknown arm(s) {bad_arms}; choose from {list(feedback.ARMS)}")
    options: dict[str, dict[str, Any]] = {"d": {"arms": arms}}
    if args.quick:
        args.seeds = min(args.seeds, 1)
    seeds = list(range(args.seeds))
    models.set_threads(1)

    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    result: dict[str, Any] = {
        "provenance": provenance(command.strip()),
        "args": {"tasks": tasks, "seeds": args.seeds, "quick": args.quick, "arms": arms},
        "tasks": {},
    }
    cpu_start = machine_cpu()
    started = time.perf_counter()
    with vigil_service() as vigil:
        log(f"vigil serve is up at {vigil.http.base_url}")
        for task in tasks:
            task_started = time.perf_counter()
            log(f"task ({task}) starts")
            rows = TASKS[task](vigil, seeds, quick=args.quick, **options.get(task, {}))
            seconds = time.perf_counter() - task_started
            result["tasks"][task] = {"rows": rows, "wall_seconds": round(seconds, 1)}
            log(f"task ({task}) done in {seconds:.0f} s")
            _write(args.out, result, started, cpu_start, vigil.auto_retrain_races)
    _write(args.out, result, started, cpu_start, vigil.auto_retrain_races)
    print(markdown(result))
    log(f"written {args.out}; wall {time.perf_counter() - started:.0f} s")


def _write(
    path: Path, result: dict[str, Any], started: float, cpu_start: tuple[int, int], races: int
) -> None:
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["cpu_steal_share"] = steal_share(cpu_start, machine_cpu())
    result["load_average_at_end"] = os.getloadavg()
    result["auto_retrain_races"] = races
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_default) + "\n")


def _default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    main()

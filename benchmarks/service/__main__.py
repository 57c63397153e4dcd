"""Every service benchmark of issue 4, one after the other.

`python -m benchmarks.service [--quick] [--only scoring,ingest,retrain,growth,memory,profile]`

The full run takes about 15 minutes on two cores; `--quick` about 6 (shorter measurements,
growth up to 10^6 points). Each part writes its own `benchmarks/out/service_*.json`; this
prints a one-line verdict per target at the end. The profile needs py-spy (see README.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.service import growth, ingest, memory, retrain, scoring
from benchmarks.service.common import log, postgres_available

PARTS = ("scoring", "ingest", "retrain", "growth", "memory", "profile")


def _profile(quick: bool) -> dict[str, Any]:
    from benchmarks.service import profile

    results = {}
    # One request at a time (where a request's time goes), and concurrency 32 counting only
    # the thread that holds the GIL (what limits throughput).
    for wire, concurrency in (("json", 1), ("binary", 1), ("json", 32), ("binary", 32)):
        argv = ["--db", "sqlite", "--wire", wire, "--seconds", "6" if quick else "10"]
        argv += ["--concurrency", str(concurrency), *(["--gil"] if concurrency > 1 else [])]
        sys.argv = ["profile", *argv]
        profile.main()
        results[f"{wire}_c{concurrency}"] = argv
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(PARTS))
    args = parser.parse_args()
    if reason := postgres_available():
        log(f"warning: {reason}; the Postgres parts will fail")
    quick = ["--quick"] if args.quick else []
    started = time.monotonic()
    verdicts: list[str] = []
    for part in args.only.split(","):
        log(f"== {part}")
        if part == "scoring":
            result = scoring.main(quick)
            for db in ("sqlite", "postgres"):
                for wire, checks in result.get(db, {}).get("verdict", {}).items():
                    for name, check in checks.items():
                        verdicts.append(f"scoring {db} {wire} {name}: {_line(check)}")
        elif part == "ingest":
            for name, check in ingest.main(quick)["verdict"].items():
                verdicts.append(f"ingest {name}: {_line(check)}")
        elif part == "retrain":
            result = retrain.main(quick)
            for mode in ("worker", "embedded"):
                r = result[mode]
                verdicts.append(
                    f"retrain {mode}: p99 {r['training_p99_ms']} ms vs idle {r['idle_p99_ms']} ms"
                    f" = {r['ratio']}x (target <= 2x) {'met' if r['met'] else 'NOT met'}"
                )
        elif part == "growth":
            flat = growth.main(quick)["flatness"]
            verdicts.append(f"growth, cost per point at the largest size / at 10^4: {flat}")
        elif part == "memory":
            for run in memory.main(quick)["runs"]:
                verdicts.append(
                    f"memory cache {run['model_cache_size']}: peak RSS {run['rss_peak_mib']} MiB "
                    f"(target <= 1536) {'met' if run['met'] else 'NOT met'}"
                )
        elif part == "profile":
            if not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
                log("skipping the profile: py-spy is not installed (pip install py-spy)")
                continue
            _profile(args.quick)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    for line in verdicts:
        print(line)


def _line(check: dict[str, Any]) -> str:
    return f"{check['measured']} (target {check['target']}) {'met' if check['met'] else 'NOT met'}"


if __name__ == "__main__":
    main()

"""Where the time of a /v1/score request goes: py-spy samples the real `vigil serve` while the
load client sends one-window requests at concurrency 1, and the samples are sorted into
the stages of a request.

`python -m benchmarks.service.profile [--db sqlite|postgres] [--seconds 10] [--wire json]
[--concurrency 1] [--gil]` writes `benchmarks/out/service_profile_<db>_<wire>_c<N>[_gil].json`
(stage shares, the heaviest frames)
and the raw collapsed stacks beside it (`.txt`, for flame-graph tools).

py-spy samples threads that are on CPU (it leaves idle ones out), from outside the process,
the API process and its scoring child: the service runs unmodified. With `--gil` each
process's GIL holder is sampled (the child has a GIL of its own). Its sampling pauses the
processes briefly, so the latency measured meanwhile is a little worse than without it; the
stage shares are what this is for.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.service.common import (
    OUT_DIR,
    Load,
    database,
    log,
    provenance,
    run_load,
    score_requests,
    serve,
    trained_series,
    write_result,
)

# (stage, predicate on one frame "function (file:line)"), checked from the leaf up; the first
# stage found in a stack names the sample, in this order of precedence.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("idle (waiting for work)", ()),  # see IDLE_LEAVES
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("model (TrainedModel.score, torch)", ("models/", "torch/")),
    ("score log (append, flush)", ("ScoreLog", "app/scoring/log.py")),
    ("scoring child: pipe and framing", ("app/scoring/process.py",)),
    ("auth (key lookup in the database)", ("authenticate", "app/api/deps.py", "security.py")),
    ("database driver, SQLAlchemy", ("sqlalchemy/", "psycopg/", "sqlite3")),
    (
        "request parsing (JSON/binary -> numpy)",
        ("_parse_json", "_windows_from_json", "_parse_binary", "_check_shape"),
    ),
    ("response building", ("_results", "orjson", "_score (app/api")),
    ("micro-batcher", ("MicroBatcher", "app/scoring/registry.py")),
    ("middleware (request id, body limit)", ("app/middleware.py", "app/idempotency.py")),
    ("FastAPI, Starlette (routing, dependencies)", ("fastapi/", "starlette/", "anyio/")),
    ("uvicorn, HTTP parsing", ("uvicorn/", "httptools", "h11/")),
    ("event loop, threads", ("asyncio/", "uvloop", "concurrent/futures", "threading.py")),
]


# Leaves at which a thread waits rather than works (py-spy does not always leave them out).
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "Runner.run (asyncio/runners.py",
    "run (uvloop/",
    "sleep",
    "_read_exactly (app/scoring/process.py",  # the scoring child waiting for its next batch
)


def classify(stack: list[str]) -> str:
    if any(stack[-1].startswith(leaf) for leaf in IDLE_LEAVES):
        return "idle (waiting for work)"
    for frame in reversed(stack):  # leaf first
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def summarise(raw: str) -> dict[str, Any]:
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        stages[classify(frames)] += count
        leaves[frames[-1]] += count
    busy = total - stages["idle (waiting for work)"]
    return {
        "samples": total,
        "busy_samples": busy,
        "busy_stages": [
            {"stage": s, "share_of_busy": round(n / busy, 3)}
            for s, n in stages.most_common()
            if not s.startswith("idle")
        ],
        "stages": [
            {"stage": s, "share": round(n / total, 3), "samples": n}
            for s, n in stages.most_common()
        ],
        "top_leaf_frames": [
            {"frame": f, "share": round(n / total, 3)} for f, n in leaves.most_common(25)
        ],
    }


def profile(
    db: str, wire: str, seconds: float, extra: dict[str, str], *, concurrency: int, gil: bool
) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with database(db) as url, serve(url, **extra) as server:
        series_id = trained_series(server, url)
        requests = score_requests(server, series_id, windows=1, wire=wire)
        run_load(server, requests, Load(1, 2.0))  # warm
        pid = server.api_pids()[0]
        with tempfile.TemporaryDirectory() as folder:
            raw_path = Path(folder) / "stacks.txt"
            holder: dict[str, Any] = {}

            def drive() -> None:
                holder["load"] = run_load(server, requests, Load(concurrency, seconds, warmup=0.5))

            thread = threading.Thread(target=drive)
            thread.start()
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(int(seconds)),
                    "-r",
                    "400",
                    "-f",
                    "raw",
                    "-o",
                    str(raw_path),
                    "--threads",
                    "--subprocesses",  # the scoring child (app/scoring/process.py) too
                    *(["--gil"] if gil else []),
                ],
                check=True,
                capture_output=True,
            )
            thread.join()
            raw = raw_path.read_text()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"service_profile_{db}_{wire}_c{concurrency}{'_gil' if gil else ''}.txt").write_text(
        raw
    )
    return {"load_while_sampled": holder["load"], **summarise(raw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--wire", default="json", choices=["json", "binary"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (py-spy --gil)"
    )
    parser.add_argument("--set", action="append", default=[], help="VIGIL setting: name=value")
    parser.add_argument("--name", help="output name (default: profile_<db>_<wire>_c<N>[_gil])")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    command = "python -m benchmarks.service.profile " + " ".join(sys.argv[1:])
    result = {
        **provenance(command),
        "db": args.db,
        "wire": args.wire,
        "concurrency": args.concurrency,
        "gil_only": args.gil,
        "settings": extra,
    }
    log(f"profiling /v1/score ({args.db}, {args.wire}) for {args.seconds:.0f} s")
    result.update(
        profile(
            args.db,
            args.wire,
            args.seconds,
            extra,
            concurrency=args.concurrency,
            gil=args.gil,
        )
    )
    suffix = f"_c{args.concurrency}" + ("_gil" if args.gil else "")
    path = write_result(args.name or f"profile_{args.db}_{args.wire}{suffix}", result)
    for row in result["stages"]:
        print(f"{row['share']:6.1%}  {row['stage']}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

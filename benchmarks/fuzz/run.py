"""The long fuzz run: the tests of tests/fuzz with many more examples, fresh random input each
run, and the cases of known issues (bugs reported in code owned elsewhere) sent as well.

    .venv/bin/python -m benchmarks.fuzz.run --examples 300            # both databases
    .venv/bin/python -m benchmarks.fuzz.run --examples 50 --sqlite-only

`make test` runs the same tests with 20 examples per operation and a fixed derandomised seed.
Writes `benchmarks/out/fuzz_<examples>.json` and prints a markdown summary: responses per
operation and status, and each failing test with its first lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "benchmarks" / "out"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=300, help="per operation and database")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--skip-known-issues", action="store_true", help="as make test does")
    parser.add_argument("--derandomize", action="store_true", help="the fixed seed of make test")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vigil-fuzz-"))
    responses, junit = work / "responses.tsv", work / "junit.xml"
    env = {
        **os.environ,
        "VIGIL_FUZZ_EXAMPLES": str(args.examples),
        "VIGIL_FUZZ_RESPONSE_LOG": str(responses),
    }
    if not args.derandomize:
        env["VIGIL_FUZZ_RANDOM"] = "1"
    if not args.skip_known_issues:
        env["VIGIL_FUZZ_KNOWN_ISSUES"] = "send"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:warnings",
        "-p",
        "no:cacheprovider",
        "tests/fuzz",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    if args.sqlite_only:
        command += ["-k", "sqlite"]
    started = time.monotonic()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    if responses.exists():
        for line in responses.read_text().splitlines():
            who, operation, status = line.split("\t")
            counts[f"{operation} ({who})"][status] += 1
            total += 1
    tests, failures = _junit(junit)
    result: dict[str, Any] = {
        "command": " ".join([".venv/bin/python -m benchmarks.fuzz.run", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "examples_per_operation": args.examples,
        "databases": ["sqlite"] if args.sqlite_only else ["sqlite", "postgres"],
        "known_issues_sent": not args.skip_known_issues,
        "seconds": round(elapsed, 1),
        "tests": tests,
        "failed": len(failures),
        "responses": total,
        "five_xx": sum(n for c in counts.values() for s, n in c.items() if s.startswith("5")),
        "by_operation": {op: dict(sorted(c.items())) for op, c in sorted(counts.items())},
        "failures": failures,
        "pytest_tail": completed.stdout.splitlines()[-5:],
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"fuzz_{args.examples}.json"
    out.write_text(json.dumps(result, indent=2))
    print(_summary(result, out))
    return 0 if completed.returncode == 0 else 1


def _junit(path: Path) -> tuple[int, list[dict[str, str]]]:
    if not path.exists():
        return 0, [{"test": "(pytest did not run)", "message": ""}]
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failures = []
    for case in cases:
        for problem in [*case.findall("failure"), *case.findall("error")]:
            text = (problem.get("message") or "") + "\n" + (problem.text or "")
            lines = [ln for ln in text.splitlines() if ln.strip()][:12]
            failures.append({"test": case.get("name", "?"), "message": "\n".join(lines)})
    return len(cases), failures


def _summary(result: dict[str, Any], out: Path) -> str:
    lines = [
        f"Fuzz: {result['examples_per_operation']} examples per operation on "
        f"{' and '.join(result['databases'])}, {result['responses']} responses in "
        f"{result['seconds']} s: {result['tests']} tests, {result['failed']} failed, "
        f"{result['five_xx']} responses 5xx",
        "",
        "| operation | responses by status |",
        "|---|---|",
        *(
            f"| {op} | {', '.join(f'{s}: {n}' for s, n in statuses.items())} |"
            for op, statuses in result["by_operation"].items()
        ),
    ]
    for failure in result["failures"]:
        lines += ["", f"FAILED {failure['test']}", failure["message"]]
    lines += ["", f"written to {out.relative_to(REPO)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

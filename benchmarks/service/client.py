"""The load generator: a separate process that drives the service over loopback HTTP/1.1.

Run by the benchmark scripts as `python -m benchmarks.service.client SPEC.json`; it prints one
JSON object of results on stdout. The spec names a file of ready-made HTTP requests (raw bytes,
one request per entry) that the connections send in turn.

Why our own client rather than httpx, wrk or hey: httpx spends about half a millisecond of
Python per request, which on a two-core machine would take CPU from the server it measures;
this client sends pre-built request bytes on keep-alive connections over uvloop and reads
the reply by its Content-Length, so it costs tens of microseconds a request, and it records
every latency itself (exact percentiles, errors by status) with nothing to install.
Its own CPU time is reported with the results, so its share of the machine is visible.

Each connection is one closed loop: send, wait for the whole response, record, send again.
`concurrency` connections run at once; the run stops by itself after `duration` seconds (or
`requests` requests), after a `warmup` whose requests are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Spec:
    host: str
    port: int
    requests_file: str  # pickle of list[bytes]: complete HTTP/1.1 requests
    concurrency: int = 1
    duration: float = 5.0  # seconds measured, after the warm-up
    warmup: float = 1.0
    requests: int = 0  # > 0: stop after this many recorded requests instead of `duration`
    windows_per_request: int = 1
    check_body: bool = False  # parse one JSON reply per connection to check it


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sample_body: bytes | None = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError("a response without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    length = int(lower[at + 17 : end])
    body = await reader.readexactly(length)
    return status, body


async def _connection(
    spec: Spec, requests: list[bytes], offset: int, state: dict[str, Any], stats: Stats
) -> None:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    i = offset
    perf = time.perf_counter
    try:
        while not state["stop"]:
            request = requests[i % len(requests)]
            i += 1
            started = perf()
            writer.write(request)
            status, body = await _read_response(reader)
            elapsed = perf() - started
            if state["recording"]:
                stats.latencies.append(elapsed)
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                if status != 200 and len(stats.errors) < 5:
                    stats.errors.append(body[:300].decode("utf-8", "replace"))
                if stats.sample_body is None and status == 200:
                    stats.sample_body = body
                if spec.requests and len(stats.latencies) >= spec.requests:
                    state["stop"] = True
    finally:
        writer.close()


async def run(spec: Spec) -> dict[str, Any]:
    with open(spec.requests_file, "rb") as fh:
        requests: list[bytes] = pickle.load(fh)  # our own file
    stats = Stats()
    state: dict[str, Any] = {"stop": False, "recording": False}
    tasks = [
        asyncio.ensure_future(_connection(spec, requests, k, state, stats))
        for k in range(spec.concurrency)
    ]
    await asyncio.sleep(spec.warmup)
    state["recording"] = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + (spec.duration if not spec.requests else 600.0)
    while not state["stop"] and time.perf_counter() < deadline:
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    state["recording"] = False
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    state["stop"] = True
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    lat = np.array(stats.latencies) * 1000.0
    n = len(lat)
    out: dict[str, Any] = {
        "concurrency": spec.concurrency,
        "windows_per_request": spec.windows_per_request,
        "requests": n,
        "seconds": round(wall, 3),
        "requests_per_s": round(n / wall, 1) if wall else 0.0,
        "windows_per_s": round(n * spec.windows_per_request / wall, 1) if wall else 0.0,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": stats.errors,
        "connection_failures": failures[:3],
        "client_cpu_share": round(cpu / wall, 3) if wall else 0.0,
    }
    if n:
        for q in (50, 90, 99):
            out[f"p{q}_ms"] = round(float(np.percentile(lat, q)), 3)
        out["mean_ms"] = round(float(lat.mean()), 3)
        out["max_ms"] = round(float(lat.max()), 3)
    if spec.check_body and stats.sample_body is not None:
        out["sample"] = json.loads(stats.sample_body)
    return out


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = Spec(**json.load(fh))
    import uvloop  # uvicorn[standard] brings it

    result = uvloop.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

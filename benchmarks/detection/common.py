"""What the detection benchmarks share: 10 Hz x 8-channel streams, series with an active
model trained with a tiny budget, a client that streams one batch a second per series, the
CPU time of the serving process tree, and percentiles.

Nothing here measures anything by itself. The pure helpers (`batch_body`, `percentile`,
`parse_us`, `batch_span_us`) are tested in tests/benchmarks/test_detection_helpers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks.service.common import Server, children, cpu_seconds, log

HZ = 10
"""Points per second of every stream."""
CHANNELS = [f"ch{i}" for i in range(8)]
WINDOW = 50
"""5 s windows ..."""
STRIDE = HZ
"""... one every second: each one-second batch completes exactly one window."""
HISTORY = 600
"""Points (one minute) sent before training; never scored (no model yet)."""
T0_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
STEP_US = 1_000_000 // HZ
TRAIN_SETTINGS = {"train_min_steps": "8", "train_max_steps": "16", "train_members": "1"}
"""Tiny training budgets: these benchmarks measure cost and lag, not model quality."""


# -- pure helpers ---------------------------------------------------------------------------
def iso(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{micros:06d}Z"


def parse_us(text: str) -> int:
    """An RFC 3339 UTC timestamp as the service writes it -> epoch microseconds."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def batch_span_us(first: int, n: int) -> tuple[int, int]:
    """(first, last) timestamp in µs of points first .. first + n - 1 of a stream."""
    return T0_US + first * STEP_US, T0_US + (first + n - 1) * STEP_US


def batch_body(first: int, n: int, *, seed: int) -> bytes:
    """Points first .. first + n - 1 of a healthy 8-channel stream (sines and noise)."""
    t = np.arange(first, first + n, dtype=np.float64)
    phases = np.linspace(0.0, np.pi, len(CHANNELS))
    values = np.sin(2 * np.pi * t[:, None] / 37.0 + phases[None, :])
    values += 0.05 * np.random.default_rng([seed, first]).standard_normal(values.shape)
    stamps = [iso(T0_US + int(k) * STEP_US) for k in t.astype(np.int64)]
    return orjson.dumps({"timestamps": stamps, "values": np.round(values, 5).tolist()})


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


# -- the process tree -----------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of `vigil serve` and every live descendant (API, scorer, worker)."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


# -- series ---------------------------------------------------------------------------------
def create_series(server: Server, name: str) -> int:
    response = httpx.post(
        f"{server.base}/v1/series",
        headers=server.headers,
        json={"name": name, "channels": CHANNELS, "window_size": WINDOW, "stride": STRIDE},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["id"])


def post_points(client: httpx.Client, server: Server, series_id: int, body: bytes) -> Any:
    response = client.post(
        f"{server.base}/v1/series/{series_id}/points",
        headers={**server.headers, "Content-Type": "application/json"},
        content=body,
    )
    response.raise_for_status()
    return response.json()


def has_active_model(server: Server, series_id: int) -> bool:
    response = httpx.get(
        f"{server.base}/v1/series/{series_id}/models", headers=server.headers, timeout=30
    )
    response.raise_for_status()
    data = response.json()
    items = (
        data if isinstance(data, list) else next(v for v in data.values() if isinstance(v, list))
    )
    return any(item.get("status") == "active" for item in items)


def train_through_api(server: Server, series_id: int, timeout: float = 300) -> float:
    """POST /train and wait until the series has an active version; seconds it took."""
    started = time.monotonic()
    response = httpx.post(
        f"{server.base}/v1/series/{series_id}/train", headers=server.headers, timeout=30
    )
    response.raise_for_status()
    while not has_active_model(server, series_id):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"series {series_id}: no active model after {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - started


def copy_active_model(url: str, source: int, targets: list[int]) -> None:
    """Give `targets` the active version of `source` (same channels and window): training
    100 models would take longer than the measurement, and what a model scores does not
    depend on which series trained it. Written with the service's own models and session."""
    from sqlalchemy import select

    from app.db.base import utcnow
    from app.db.models import MODEL_ACTIVE, ModelVersion
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(url, role="bench")
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            model = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.series_id == source, ModelVersion.status == MODEL_ACTIVE
                )
            )
            assert model is not None
            for target in targets:
                session.add(
                    ModelVersion(
                        series_id=target,
                        version=1,
                        status=MODEL_ACTIVE,
                        artifact=model.artifact,
                        sha256=model.sha256,
                        metrics=model.metrics,
                        note=f"benchmark copy of series {source}'s version {model.version}",
                        activated_at=utcnow(),
                    )
                )
    finally:
        engine.dispose()


def prepare(server: Server, url: str, n: int, *, prefix: str) -> list[int]:
    """n series with a minute of history each and the same active model."""
    ids = [create_series(server, f"{prefix}-{k}") for k in range(n)]
    with httpx.Client(timeout=120) as client:
        for k, series_id in enumerate(ids):
            post_points(client, server, series_id, batch_body(0, HISTORY, seed=k))
    took = train_through_api(server, ids[0])
    log(f"  trained series {ids[0]} through the API in {took:.1f} s")
    if len(ids) > 1:
        copy_active_model(url, ids[0], ids[1:])
    return ids


# -- streaming ------------------------------------------------------------------------------
@dataclass
class Sent:
    series_id: int
    last_us: int
    """Timestamp of the batch's last point: its window ends there."""
    committed: float
    """time.time() when the POST's response arrived."""
    seen: float | None = None
    """time.time() when the client first saw the window's score (polling only)."""


@dataclass
class Stream:
    series_ids: list[int]
    seconds: float
    next_point: dict[int, int] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    failures: int = 0


async def _one(
    client: httpx.AsyncClient,
    server: Server,
    stream: Stream,
    index: int,
    series_id: int,
    started: float,
    poll: float | None,
) -> None:
    count = len(stream.series_ids)
    tick = 0
    pending: list[asyncio.Task[None]] = []
    while True:
        due = started + tick + index / count  # spread the series over the second
        if due - started >= stream.seconds:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        first = stream.next_point.get(series_id, HISTORY)
        body = batch_body(first, HZ, seed=series_id)
        try:
            response = await client.post(
                f"/v1/series/{series_id}/points",
                headers={"Content-Type": "application/json"},
                content=body,
            )
            response.raise_for_status()
        except httpx.HTTPError:
            stream.failures += 1
            tick += 1
            continue
        sent = Sent(series_id, batch_span_us(first, HZ)[1], time.time())
        stream.sent.append(sent)
        stream.next_point[series_id] = first + HZ
        if poll is not None:
            pending.append(asyncio.create_task(_watch(client, sent, poll)))
        tick += 1
    if pending:
        await asyncio.gather(*pending)


async def _watch(client: httpx.AsyncClient, sent: Sent, poll: float, timeout: float = 30) -> None:
    """Poll GET /scores until the window ending at the batch's last point is there."""
    since = iso(sent.last_us - (WINDOW - 1) * STEP_US)
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = await client.get(
            f"/v1/series/{sent.series_id}/scores", params={"start": since, "limit": 10}
        )
        if response.status_code == 200 and any(
            parse_us(s["end"]) == sent.last_us for s in response.json()["scores"]
        ):
            sent.seen = time.time()
            return
        await asyncio.sleep(poll)


def stream(server: Server, state: Stream, *, poll: float | None = None) -> None:
    """Every series of `state` sends one 10-point batch a second for `state.seconds`;
    with `poll`, each batch's score is then polled for every `poll` seconds."""

    async def main() -> None:
        limits = httpx.Limits(max_connections=max(8, 2 * len(state.series_ids)))
        async with httpx.AsyncClient(
            base_url=server.base, headers=server.headers, timeout=60, limits=limits
        ) as client:
            started = time.monotonic()
            await asyncio.gather(
                *(
                    _one(client, server, state, k, sid, started, poll)
                    for k, sid in enumerate(state.series_ids)
                )
            )

    asyncio.run(main())


def scored_at(server: Server, series_id: int, since_us: int) -> dict[int, float]:
    """end timestamp (µs) -> `scored_at` (epoch seconds) of the series' stored windows."""
    found: dict[int, float] = {}
    cursor = None
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as client:
        while True:
            params: dict[str, Any] = {"start": iso(since_us), "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            response = client.get(f"/v1/series/{series_id}/scores", params=params)
            response.raise_for_status()
            page = response.json()
            for s in page["scores"]:
                if s["scored_at"]:
                    found[parse_us(s["end"])] = parse_us(s["scored_at"]) / 1e6
            cursor = page["next_cursor"]
            if not cursor:
                return found

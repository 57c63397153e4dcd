"""Synthetic sensor streams with injected faults, and direct database seeding for tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import BUILTIN_CLASSES_KINDS, Point, Series

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
STEP_US = 1_000_000  # one point a second


@dataclass
class Stream:
    ts: np.ndarray  # (P,) int64 µs
    values: np.ndarray  # (P, F) float64
    faults: list[tuple[int, int]]  # [start, stop) point indices of injected faults


def make_stream(
    n_points: int,
    *,
    channels: int = 3,
    faults: list[tuple[int, int]] | None = None,
    benign: list[tuple[int, int]] | None = None,
    seed: int = 0,
) -> Stream:
    """Phase-shifted sines plus noise. A fault adds a large offset and extra noise to every
    channel. A benign episode (think of a cleaning cycle) holds the last channel on a plateau:
    unusual, so it may raise false alarms, but normal for the plant."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_points, dtype=np.float64)
    phases = np.linspace(0.0, np.pi, channels)
    values = np.sin(2 * np.pi * t[:, None] / 32.0 + phases[None, :])
    values += 0.05 * rng.standard_normal((n_points, channels))
    for start, stop in faults or []:
        values[start:stop] += 3.0 + 0.5 * rng.standard_normal((stop - start, channels))
    for start, stop in benign or []:
        values[start:stop, -1] = 1.8 + 0.05 * rng.standard_normal(stop - start)
    ts = T0_US + np.arange(n_points, dtype=np.int64) * STEP_US
    return Stream(ts=ts, values=values, faults=list(faults or []))


def create_series(
    sessions: sessionmaker[Session],
    *,
    name: str = "pump-1",
    channels: int = 3,
    window_size: int = 16,
    stride: int = 8,
) -> int:
    with sessions() as session, session.begin():
        series = Series(
            name=name,
            channels=[f"c{i}" for i in range(channels)],
            window_size=window_size,
            stride=stride,
            classes=dict(BUILTIN_CLASSES_KINDS),
            threshold_quantile=0.99,
        )
        session.add(series)
        session.flush()
        return series.id


def insert_points(sessions: sessionmaker[Session], series_id: int, stream: Stream) -> None:
    rows = [
        {"series_id": series_id, "ts": int(ts), "values": row.astype("<f8").tobytes()}
        for ts, row in zip(stream.ts, stream.values, strict=True)
    ]
    with sessions() as session, session.begin():
        session.execute(insert(Point), rows)


def windows_of(stream: Stream, *, window_size: int, stride: int) -> np.ndarray:
    starts = np.arange(0, len(stream.ts) - window_size + 1, stride)
    return np.stack([stream.values[s : s + window_size] for s in starts]).astype(np.float32)

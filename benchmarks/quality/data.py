"""Data for the quality tasks: the UEA/UCR sets in benchmarks/data/, the Daphnet recording, a
synthetic plant, and the faults injected into streams.

Sets are read from the long CSVs (`sample,label,t,<channels>`). Each sample becomes one window.
JapaneseVowels' utterances are 7-26 frames long; every sample is padded to the longest training
sample (26 frames) by repeating its last frame, and longer test samples (none in our copy) would
be cut to that length.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "benchmarks" / "data"

SETS = ("basicmotions", "gunpoint", "arrowhead", "italypowerdemand", "japanesevowels")


@dataclass(frozen=True)
class Split:
    windows: np.ndarray  # (N, T, F) float64, raw values
    y: np.ndarray  # (N,) int, index into LabelledSet.classes


@dataclass(frozen=True)
class LabelledSet:
    name: str
    channels: tuple[str, ...]
    classes: tuple[str, ...]  # sorted
    train: Split
    test: Split


def _read(path: Path) -> tuple[list[str], list[np.ndarray], list[str]]:
    rows: dict[int, list[tuple[int, list[float]]]] = {}
    label_of: dict[int, str] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        channels = header[3:]
        for row in reader:
            sample = int(row[0])
            label_of[sample] = row[1]
            rows.setdefault(sample, []).append((int(row[2]), [float(v) for v in row[3:]]))
    samples = sorted(rows)
    arrays = [np.array([v for _, v in sorted(rows[s])], dtype=np.float64) for s in samples]
    return channels, arrays, [label_of[s] for s in samples]


def _fixed_length(samples: list[np.ndarray], length: int) -> np.ndarray:
    """(N, length, F): each sample cut to `length` or padded by repeating its last step."""
    out = []
    for s in samples:
        s = s[:length]
        pad = length - s.shape[0]
        out.append(np.concatenate([s, np.repeat(s[-1:], pad, axis=0)]) if pad else s)
    return np.stack(out)


def load_set(name: str) -> LabelledSet:
    folder = DATA_DIR / name
    channels, train_samples, train_labels = _read(folder / f"{name}_train.csv")
    _, test_samples, test_labels = _read(folder / f"{name}_test.csv")
    length = max(s.shape[0] for s in train_samples)
    classes = tuple(sorted(set(train_labels), key=lambda c: (len(c), c)))  # "2" before "10"

    def split(samples: list[np.ndarray], labels: list[str]) -> Split:
        y = np.array([classes.index(label) for label in labels], dtype=np.int64)
        return Split(_fixed_length(samples, length), y)

    return LabelledSet(
        name=name,
        channels=tuple(channels),
        classes=classes,
        train=split(train_samples, train_labels),
        test=split(test_samples, test_labels),
    )


def class_slug(name: str) -> str:
    """A class name Vigil accepts (letters, digits, '-', '_', '.'): numbers get a prefix."""
    slug = name.lower()
    return slug if slug[:1].isalpha() else f"class-{slug}"


# -- streams ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    name: str
    channels: tuple[str, ...]
    values: np.ndarray  # (P, F) float64


def daphnet() -> Stream:
    """The Daphnet recording S06R02E0: 7,040 rows at 64 Hz, 9 accelerometer channels (mg)."""
    path = DATA_DIR / "daphnet" / "daphnet_s06r02e0.csv"
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    channels = tuple(header[1:10])
    values = np.genfromtxt(path, delimiter=",", skip_header=1, usecols=range(1, 10))
    return Stream("daphnet", channels, values.astype(np.float64))


PLANT_CHANNELS = ("vib_x", "vib_y", "current", "flow", "pressure", "temperature")


def plant(n: int, seed: int) -> Stream:
    """A synthetic machine: a load that follows a slow cycle, with an idle period every 2,000
    steps (its duty cycle); two vibration axes oscillating at period 25 in quadrature with an
    amplitude set by the load; current, flow and pressure tied to the load (so the channels are
    correlated); a temperature lagging the load; white noise on every sensor."""
    rng = np.random.default_rng([seed, 7])
    t = np.arange(n, dtype=np.float64)
    load = 0.75 + 0.2 * np.sin(2 * np.pi * t / 1500.0)
    idle = (t % 2000) >= 1800
    load = np.where(idle, 0.15, load)
    # first-order lag so that start-ups and shut-downs ramp instead of jumping
    smooth = np.empty(n)
    smooth[0] = load[0]
    for i in range(1, n):
        smooth[i] = smooth[i - 1] + 0.05 * (load[i] - smooth[i - 1])
    temp = np.empty(n)
    temp[0] = 40 + 20 * smooth[0]
    for i in range(1, n):
        temp[i] = temp[i - 1] + 0.005 * (40 + 20 * smooth[i] - temp[i - 1])
    phase = 2 * np.pi * t / 25.0
    clean = np.stack(
        [
            smooth * np.sin(phase),
            smooth * np.cos(phase),
            8 + 30 * smooth**2,
            120 * smooth,
            1.5 + 4 * smooth**2 + 0.1 * np.sin(2 * np.pi * t / 40.0),
            temp,
        ],
        axis=1,
    )
    noise = np.array([0.08, 0.08, 0.4, 1.2, 0.05, 0.15])
    return Stream("plant", PLANT_CHANNELS, clean + noise * rng.standard_normal(clean.shape))


# -- faults -----------------------------------------------------------------------------------
FAULT_KINDS = (
    "spike",
    "level_shift",
    "drift",
    "stuck",
    "noise_burst",
    "frequency",
    "correlation_break",
)


@dataclass(frozen=True)
class Fault:
    kind: str
    start: int  # first step, inclusive
    end: int  # last step, exclusive
    channel: int  # -1: all channels


def plan_faults(
    kind: str, n: int, count: int, rng: np.random.Generator, n_channels: int
) -> list[Fault]:
    """`count` non-overlapping events of one kind in a stream of n steps."""
    return plan_mixed([kind] * count, n, rng, n_channels)


def plan_mixed(kinds: list[str], n: int, rng: np.random.Generator, n_channels: int) -> list[Fault]:
    """One event per entry of `kinds`, non-overlapping, 64 steps apart at least and clear of
    both ends of a stream of n steps. Spikes last 1-3 steps; other faults 96-192."""
    faults: list[Fault] = []
    for _ in range(200 * len(kinds)):
        if len(faults) == len(kinds):
            break
        kind = kinds[len(faults)]
        length = int(rng.integers(1, 4)) if kind == "spike" else int(rng.integers(96, 193))
        start = int(rng.integers(32, n - length - 32))
        if any(start < f.end + 64 and f.start < start + length + 64 for f in faults):
            continue
        channel = -1 if kind == "frequency" else int(rng.integers(n_channels))
        faults.append(Fault(kind, start, start + length, channel))
    return sorted(faults, key=lambda f: f.start)


def inject(
    values: np.ndarray, faults: list[Fault], sd: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A copy of `values` (P, F) with the faults applied. Sizes are in units of `sd`, each
    channel's standard deviation on the training part."""
    out = values.copy()
    n = values.shape[0]
    for f in faults:
        c, seg = f.channel, slice(f.start, f.end)
        length = f.end - f.start
        sign = float(rng.choice([-1.0, 1.0]))
        if f.kind == "spike":  # single-step spikes of 6 sd
            out[seg, c] += sign * 6.0 * sd[c]
        elif f.kind == "level_shift":  # the channel jumps by 2 sd and stays there
            out[seg, c] += sign * 2.0 * sd[c]
        elif f.kind == "drift":  # a linear ramp from 0 to 3 sd
            out[seg, c] += sign * np.linspace(0.0, 3.0 * sd[c], length)
        elif f.kind == "stuck":  # the sensor repeats its last reading
            out[seg, c] = values[f.start - 1, c]
        elif f.kind == "noise_burst":  # extra white noise of 1.5 sd
            out[seg, c] += 1.5 * sd[c] * rng.standard_normal(length)
        elif f.kind == "frequency":  # every channel runs twice as fast (time compressed)
            source = np.minimum(f.start + 2.0 * np.arange(length), n - 1)
            for j in range(values.shape[1]):
                out[seg, j] = np.interp(source, np.arange(n), values[:, j])
        elif f.kind == "correlation_break":  # one channel replays another time: its own
            # distribution, but out of step with the channels it normally moves with
            shift = n // 3 + int(rng.integers(0, n // 3))
            out[seg, c] = values[(np.arange(f.start, f.end) + shift) % n, c]
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")
    return out


def window_starts(n: int, window: int, stride: int) -> np.ndarray:
    return np.arange(0, n - window + 1, stride)


def cut(values: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(P, F) -> (N, window, F) windows at `starts`."""
    return values[starts[:, None] + np.arange(window)[None, :]]


def window_truth(starts: np.ndarray, window: int, faults: list[Fault]) -> np.ndarray:
    """(N,) bool: the window [s, s + window) overlaps a fault."""
    truth = np.zeros(starts.size, dtype=bool)
    for f in faults:
        truth |= (starts < f.end) & (starts + window > f.start)
    return truth

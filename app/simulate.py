"""`vigil simulate`: a plant of pumps streaming into a running Vigil, with faults to catch.

Two layers, kept apart so that the first can be tested without a server:

* **The plant model** (pure, seeded numpy): pump profiles, clean signals with daily duty
  cycles, set-point changes, thermal lag and sensor noise; fault planning and injection
  (bearing wear, cavitation, sensor drift, stuck sensor); and the ground truth of which
  window overlaps which fault.
* **The driver** (httpx, public API only): creates one series per pump, streams points
  on a simulated clock, trains once enough healthy data exists, scores each new window,
  plays an operator who labels faults and marks false alarms and missed faults, and
  keeps precision and recall against the injected truth.

Two clocks: the plant's own (daily cycles, fault durations; `--speed` times faster than
the wall clock) and the timestamps sent to Vigil, which are the wall-clock time each point
is produced, so dashboards and alerts see a live plant whose day passes in minutes. Only
the unpaced mode (`--speed 0`) stamps points with the plant clock, backfilled up to now.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import httpx
import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

FloatArray = npt.NDArray[np.float64]

# --------------------------------------------------------------------------------------
# The plant model
# --------------------------------------------------------------------------------------

CHANNELS: Final = ("vibration_rms", "bearing_temp", "motor_current", "flow", "pressure")
VIBRATION, TEMPERATURE, CURRENT, FLOW, PRESSURE = range(len(CHANNELS))
N_CHANNELS: Final = len(CHANNELS)
DAY_S: Final = 86_400.0

LOAD_HOLD_S: Final = 3 * 3600.0  # mean time an operator keeps a speed set-point
LOAD_TAU_S: Final = 10 * 60.0  # drive ramp: the pump follows a new set-point within minutes
TEMP_TAU_S: Final = 45 * 60.0  # bearing housing thermal time constant


class FaultKind(StrEnum):
    BEARING_WEAR = "bearing_wear"
    CAVITATION = "cavitation"
    SENSOR_DRIFT = "sensor_drift"
    STUCK_SENSOR = "stuck_sensor"


FAULT_KINDS: Final = tuple(FaultKind)
FAULT_HOURS: Final[Mapping[FaultKind, tuple[float, float]]] = {
    FaultKind.BEARING_WEAR: (4.0, 8.0),  # compressed: real wear takes weeks
    FaultKind.CAVITATION: (1.0, 3.0),
    FaultKind.SENSOR_DRIFT: (4.0, 8.0),
    FaultKind.STUCK_SENSOR: (1.0, 3.0),
}
MIN_FAULT_GAP_S: Final = 2 * 3600.0  # repair and recovery between two faults of one pump
POSITIVE_OVERLAP: Final = 0.25  # a window is "faulty" when a fault covers this share of it


@dataclass(frozen=True)
class PumpProfile:
    """Nameplate and site conditions of one centrifugal pump on a variable-speed drive."""

    name: str
    vibration_mm_s: float  # RMS velocity at full speed (ISO 10816 zone A for a small pump)
    ambient_c: float  # mean ambient temperature around the bearing housing
    temp_rise_c: float  # bearing temperature rise above ambient at full speed
    current_noload_a: float  # motor current at zero flow
    current_full_a: float  # motor current at full speed (power goes with speed cubed)
    flow_m3h: float  # flow at full speed (affinity law: flow goes with speed)
    pressure_static_bar: float  # discharge pressure from the static head alone
    pressure_dynamic_bar: float  # pressure added at full speed (goes with speed squared)
    day_phase_h: float  # shift of this pump's daily duty cycle

    def nominal(self) -> FloatArray:
        """Typical reading of each channel at three-quarter speed: the scale of drifts."""
        load = 0.75
        return np.array(
            [
                self.vibration_mm_s * (0.35 + 0.65 * load**2),
                self.ambient_c + self.temp_rise_c * load,
                self.current_noload_a + (self.current_full_a - self.current_noload_a) * load**3,
                self.flow_m3h * load,
                self.pressure_static_bar + self.pressure_dynamic_bar * load**2,
            ]
        )

    def noise(self) -> FloatArray:
        """Standard deviation of each sensor's white noise."""
        return np.array(
            [
                0.04 * self.vibration_mm_s,
                0.15,
                0.015 * self.current_full_a,
                0.01 * self.flow_m3h,
                0.01 * (self.pressure_static_bar + self.pressure_dynamic_bar),
            ]
        )


def make_profiles(count: int, seed: int, prefix: str = "pump") -> list[PumpProfile]:
    """`count` pumps of the same family with their own ratings, named `<prefix>-01`, ..."""
    rng = np.random.default_rng([seed, 0x9E3779B1])
    profiles = []
    for index in range(count):
        u = rng.random(9)
        profiles.append(
            PumpProfile(
                name=f"{prefix}-{index + 1:02d}",
                vibration_mm_s=1.2 + 1.3 * u[0],
                ambient_c=18.0 + 8.0 * u[1],
                temp_rise_c=20.0 + 10.0 * u[2],
                current_noload_a=8.0 + 4.0 * u[3],
                current_full_a=35.0 + 20.0 * u[4],
                flow_m3h=60.0 + 80.0 * u[5],
                pressure_static_bar=0.8 + 0.7 * u[6],
                pressure_dynamic_bar=3.0 + 3.0 * u[7],
                day_phase_h=-2.0 + 4.0 * u[8],
            )
        )
    return profiles


def duty_cycle(epoch_s: FloatArray, day_phase_h: float) -> FloatArray:
    """Demand over the day: lowest around 02:00, highest around 14:00 (plus the phase)."""
    hour = (epoch_s / 3600.0 - day_phase_h) % 24.0
    return 0.72 + 0.22 * np.sin(2.0 * np.pi * (hour - 8.0) / 24.0)


def ambient_cycle(epoch_s: FloatArray, mean_c: float) -> FloatArray:
    """Ambient temperature over the day: warmest mid-afternoon, 4 °C above the mean."""
    hour = (epoch_s / 3600.0) % 24.0
    return mean_c + 4.0 * np.sin(2.0 * np.pi * (hour - 9.0) / 24.0)


class PumpSignal:
    """The healthy telemetry of one pump, generated block by block.

    Deterministic under `seed`, and independent of how the steps are split into blocks:
    each random stream draws a fixed number of values per step, in step order.
    """

    def __init__(
        self, profile: PumpProfile, *, seed: int, index: int, epoch0: float, sample_period_s: float
    ) -> None:
        self.profile = profile
        self.epoch0 = epoch0
        self.sample_period_s = sample_period_s
        self.step = 0
        self._load_rng = np.random.default_rng([seed, index, 1])
        self._noise_rng = np.random.default_rng([seed, index, 2])
        self._noise = profile.noise()
        start = np.array([epoch0])
        self._setpoint = 0.9
        self._load = float(self._setpoint * duty_cycle(start, profile.day_phase_h)[0])
        self._temp = float(ambient_cycle(start, profile.ambient_c)[0]) + (
            profile.temp_rise_c * self._load
        )

    def generate(self, n: int) -> FloatArray:
        """The next `n` samples, shape (n, N_CHANNELS)."""
        p = self.profile
        epoch = self.epoch0 + (self.step + np.arange(n, dtype=np.float64)) * self.sample_period_s
        duty = duty_cycle(epoch, p.day_phase_h)
        ambient = ambient_cycle(epoch, p.ambient_c)
        draws = self._load_rng.random((n, 2))  # (n, 2): set-point change?, new set-point
        noise = self._noise_rng.standard_normal((n, N_CHANNELS))  # (n, C)
        change_p = 1.0 - math.exp(-self.sample_period_s / LOAD_HOLD_S)
        follow = 1.0 - math.exp(-self.sample_period_s / LOAD_TAU_S)
        heat = 1.0 - math.exp(-self.sample_period_s / TEMP_TAU_S)

        load = np.empty(n)
        temp = np.empty(n)
        setpoint, current_load, current_temp = self._setpoint, self._load, self._temp
        for i in range(n):
            if draws[i, 0] < change_p:
                setpoint = 0.75 + 0.25 * float(draws[i, 1])
            current_load += follow * (setpoint * float(duty[i]) - current_load)
            current_temp += heat * (float(ambient[i]) + p.temp_rise_c * current_load - current_temp)
            load[i] = current_load
            temp[i] = current_temp
        self._setpoint, self._load, self._temp = setpoint, current_load, current_temp
        self.step += n

        clean = np.stack(
            [
                p.vibration_mm_s * (0.35 + 0.65 * load**2),
                temp,
                p.current_noload_a + (p.current_full_a - p.current_noload_a) * load**3,
                p.flow_m3h * load,
                p.pressure_static_bar + p.pressure_dynamic_bar * load**2,
            ],
            axis=1,
        )  # (n, C)
        values = clean + noise * self._noise
        values[:, VIBRATION] = np.maximum(values[:, VIBRATION], 0.0)
        return values


@dataclass(frozen=True)
class Fault:
    """One injected fault: what, on which pump, over which steps [start, end)."""

    machine: int
    kind: FaultKind
    start: int
    end: int
    channel: int  # the sensor at fault for drift and stuck; the main symptom otherwise
    magnitude: float  # drift: signed offset reached at the end; else a severity near 1
    seed: int

    @property
    def channels(self) -> tuple[int, ...]:
        """The channels this fault changes."""
        if self.kind is FaultKind.BEARING_WEAR:
            return (VIBRATION, TEMPERATURE)
        if self.kind is FaultKind.CAVITATION:
            return (VIBRATION, FLOW, PRESSURE)
        return (self.channel,)

    @property
    def length(self) -> int:
        return self.end - self.start

    def overlap(self, start: int, stop: int) -> int:
        """Steps of [start, stop) that this fault covers."""
        return max(0, min(self.end, stop) - max(self.start, start))

    def describe(self) -> str:
        if self.kind in (FaultKind.SENSOR_DRIFT, FaultKind.STUCK_SENSOR):
            return f"{self.kind.value} ({CHANNELS[self.channel]})"
        return self.kind.value


def plan_faults(
    *,
    machine: int,
    start: int,
    stop: int,
    sample_period_s: float,
    faults_per_day: float,
    nominal: FloatArray,
    rng: np.random.Generator,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
) -> list[Fault]:
    """Faults of one pump starting and ending within [start, stop), never overlapping.

    Onsets follow a Poisson process of `faults_per_day`, with a recovery gap after each.
    """
    if faults_per_day <= 0 or not kinds:
        return []
    day = DAY_S / sample_period_s
    mean_gap = day / faults_per_day
    min_gap = max(1, round(MIN_FAULT_GAP_S / sample_period_s))
    faults: list[Fault] = []
    onset = start + rng.exponential(mean_gap)
    while onset < stop:
        kind = kinds[int(rng.integers(len(kinds)))]
        low, high = FAULT_HOURS[kind]
        length = max(2, round(rng.uniform(low, high) * 3600.0 / sample_period_s))
        first = int(onset)
        if first + length > stop:
            break
        channel = int(rng.integers(N_CHANNELS))
        severity = float(rng.uniform(0.7, 1.3))
        if kind is FaultKind.SENSOR_DRIFT:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            magnitude = sign * float(rng.uniform(0.10, 0.25)) * float(nominal[channel])
        else:
            magnitude = severity
        if kind is FaultKind.BEARING_WEAR:
            channel = VIBRATION
        elif kind is FaultKind.CAVITATION:
            channel = PRESSURE
        faults.append(
            Fault(
                machine=machine,
                kind=kind,
                start=first,
                end=first + length,
                channel=channel,
                magnitude=magnitude,
                seed=int(rng.integers(2**31)),
            )
        )
        onset = first + length + min_gap + rng.exponential(mean_gap)
    return faults


def apply_faults(
    values: FloatArray,
    *,
    first_step: int,
    faults: Iterable[Fault],
    nominal: FloatArray,
    held: Mapping[Fault, float],
) -> FloatArray:
    """A copy of `values` (rows are steps first_step, first_step + 1, ...) with the faults.

    `held` gives each stuck-sensor fault the reading it froze at (the last good one).
    """
    out = values.copy()
    n = values.shape[0]
    for fault in faults:
        low, high = max(fault.start, first_step), min(fault.end, first_step + n)
        if low >= high:
            continue
        rows = slice(low - first_step, high - first_step)
        progress = (np.arange(low, high) - fault.start) / fault.length  # in [0, 1)
        severity = fault.magnitude
        if fault.kind is FaultKind.BEARING_WEAR:
            # A spall appears, then wear accelerates: a step, then growth with the square of
            # the elapsed fraction.
            wear = severity * (0.15 + 0.85 * progress**2)
            jitter = _fault_noise(fault, low, high, 1)[:, 0]
            out[rows, VIBRATION] *= 1.0 + 2.0 * wear * (1.0 + 0.15 * jitter)
            out[rows, TEMPERATURE] += 12.0 * wear
        elif fault.kind is FaultKind.CAVITATION:
            # Vapour bubbles: flow and head drop and become noisy, the casing rattles.
            z = _fault_noise(fault, low, high, 3)
            out[rows, FLOW] = out[rows, FLOW] * (1.0 - 0.15 * severity) + (
                0.04 * severity * nominal[FLOW] * z[:, 0]
            )
            out[rows, PRESSURE] = out[rows, PRESSURE] * (1.0 - 0.25 * severity) + (
                0.08 * severity * nominal[PRESSURE] * z[:, 1]
            )
            out[rows, VIBRATION] *= 1.0 + 0.4 * severity + 0.15 * severity * np.abs(z[:, 2])
        elif fault.kind is FaultKind.SENSOR_DRIFT:
            out[rows, fault.channel] += severity * progress
        else:
            out[rows, fault.channel] = held[fault]
    return out


def _fault_noise(fault: Fault, low: int, high: int, width: int) -> FloatArray:
    """The fault's own noise for steps [low, high): the same whichever block asks."""
    z = np.random.default_rng([fault.seed, 7]).standard_normal((fault.length, width))
    return z[low - fault.start : high - fault.start]


class WindowTruth(StrEnum):
    NORMAL = "normal"  # no fault touches the window
    FAULT = "fault"  # a fault covers at least POSITIVE_OVERLAP of it
    PARTIAL = "partial"  # a fault grazes it: counted neither way


def window_truth(
    start: int, size: int, faults: Iterable[Fault]
) -> tuple[WindowTruth, Fault | None, float]:
    """Ground truth of the window [start, start + size): verdict, main fault, covered share."""
    best: Fault | None = None
    best_overlap = 0
    for fault in faults:
        overlap = fault.overlap(start, start + size)
        if overlap > best_overlap:
            best, best_overlap = fault, overlap
    share = best_overlap / size
    if best is None:
        return WindowTruth.NORMAL, None, 0.0
    if share >= POSITIVE_OVERLAP:
        return WindowTruth.FAULT, best, share
    return WindowTruth.PARTIAL, best, share


class Plant:
    """Several pumps, their fault schedule and the faulty telemetry, advanced step by step.

    Faults start only after `warmup_steps` (commissioning: the first model trains on
    healthy data) and are planned one simulated day at a time, so runs may be unbounded.
    """

    def __init__(
        self,
        profiles: Sequence[PumpProfile],
        *,
        seed: int,
        epoch0: float,
        sample_period_s: float,
        warmup_steps: int,
        faults_per_day: float,
        kinds: Sequence[FaultKind] = FAULT_KINDS,
    ) -> None:
        self.profiles = list(profiles)
        self.seed = seed
        self.epoch0 = epoch0
        self.sample_period_s = sample_period_s
        self.warmup_steps = warmup_steps
        self.faults_per_day = faults_per_day
        self.kinds = tuple(kinds)
        self.step = 0
        self.faults: list[Fault] = []
        self._signals = [
            PumpSignal(p, seed=seed, index=i, epoch0=epoch0, sample_period_s=sample_period_s)
            for i, p in enumerate(self.profiles)
        ]
        self._nominal = [p.nominal() for p in self.profiles]
        self._held: dict[Fault, float] = {}
        self._last_clean: list[FloatArray | None] = [None] * len(self.profiles)
        self._horizon = max(1, round(DAY_S / sample_period_s))
        self._planned = 0  # horizons planned so far

    @property
    def machines(self) -> int:
        return len(self.profiles)

    def timestamp(self, step: int) -> float:
        """The plant clock at a step (Unix time): what the daily cycles follow."""
        return self.epoch0 + step * self.sample_period_s

    def faults_of(self, machine: int) -> list[Fault]:
        return [f for f in self.faults if f.machine == machine]

    def advance(self, n: int) -> FloatArray:
        """The next `n` samples of every pump, shape (machines, n, N_CHANNELS)."""
        first = self.step
        self._plan_through(first + n)
        out = np.empty((self.machines, n, N_CHANNELS))
        for machine, signal in enumerate(self._signals):
            clean = signal.generate(n)
            active = [
                f
                for f in self.faults
                if f.machine == machine and f.start < first + n and f.end > first
            ]
            for fault in active:
                if fault.kind is FaultKind.STUCK_SENSOR and fault not in self._held:
                    self._held[fault] = self._last_good(machine, clean, first, fault)
            out[machine] = apply_faults(
                clean,
                first_step=first,
                faults=active,
                nominal=self._nominal[machine],
                held=self._held,
            )
            self._last_clean[machine] = clean[-1].copy()
        self.step += n
        return out

    def _last_good(self, machine: int, clean: FloatArray, first: int, fault: Fault) -> float:
        before = fault.start - 1 - first
        if before >= 0:
            return float(clean[before, fault.channel])
        previous = self._last_clean[machine]
        if previous is None:  # the fault starts at step 0: freeze the first reading
            return float(clean[0, fault.channel])
        return float(previous[fault.channel])

    def _plan_through(self, stop: int) -> None:
        while self.warmup_steps + self._planned * self._horizon < stop:
            low = self.warmup_steps + self._planned * self._horizon
            for machine in range(self.machines):
                rng = np.random.default_rng([self.seed, machine, self._planned, 3])
                self.faults.extend(
                    plan_faults(
                        machine=machine,
                        start=low,
                        stop=low + self._horizon,
                        sample_period_s=self.sample_period_s,
                        faults_per_day=self.faults_per_day,
                        nominal=self._nominal[machine],
                        rng=rng,
                        kinds=self.kinds,
                    )
                )
            self._planned += 1


def stamp_clock(
    now: float, steps: int | None, speed: float, sample_period_s: float
) -> tuple[float, float]:
    """(timestamp of step 0, seconds between two timestamps) of the points sent to Vigil.

    Paced, step k is produced at wall time now + k * period / speed and stamped so: the
    stamps never run ahead of the wall clock. Unpaced (speed 0), the plant's own period is
    used and the run is backfilled so that its last point is the present.
    """
    if speed > 0:
        return round(now, 3), sample_period_s / speed
    if steps is None:
        raise ValueError("an unpaced run (speed 0) needs a bounded number of steps")
    first = math.floor((now - (steps - 1) * sample_period_s) / sample_period_s) * sample_period_s
    return first, sample_period_s


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}


def parse_duration(text: str) -> float | None:
    """'3d', '36h', '90m', '600s' or '600' -> seconds; 'forever' -> None."""
    if text.strip().lower() in {"forever", "inf", "infinite"}:
        return None
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 3d, 36h, 90m, 600s or forever)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


# --------------------------------------------------------------------------------------
# The HTTP driver
# --------------------------------------------------------------------------------------

JSON = dict[str, Any]
Id = int | str  # resource ids, passed back exactly as the API returned them
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
OPERATOR: Final = "simulator-operator"
LABEL_ATTEMPTS: Final = 10  # rounds a label waits for its score to be stored
MIN_STAMP_PERIOD_S: Final = 0.001  # timestamps are stored in microseconds: keep them apart


class SimulatorError(Exception):
    """The simulation cannot go on (service unreachable, key refused, contract broken)."""


class ApiError(SimulatorError):
    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        self.status_code = response.status_code
        detail = response.text[:300]
        try:
            problem = response.json()
            if isinstance(problem, dict):
                detail = str(problem.get("detail") or problem.get("title") or detail)
        except ValueError:
            pass
        super().__init__(f"{method} {path} -> {response.status_code}: {detail}")


class VigilApi:
    """The slice of Vigil's public HTTP API that the simulator uses."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 4,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "vigil-simulate"},
            timeout=timeout_s,
        )
        self._retries = retries

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: JSON | None = None) -> httpx.Response:
        failure = "no attempt"
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                failure = f"{exc.__class__.__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUSES:
                failure = f"HTTP {response.status_code}"
                continue
            return response
        raise SimulatorError(
            f"{method} {path} failed after {self._retries + 1} attempts: {failure}"
        )

    def _call(self, method: str, path: str, body: JSON | None = None) -> JSON:
        response = self._request(method, path, body)
        if response.status_code >= 400:
            raise ApiError(method, path, response)
        payload = response.json() if response.content else {}
        if not isinstance(payload, dict):
            raise SimulatorError(f"{method} {path}: expected a JSON object")
        return payload

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for /readyz (database reachable and migrated)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                response = self._http.get("/readyz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise SimulatorError(f"Vigil at {self._http.base_url} is not ready: {last}")
            time.sleep(0.5)

    def check_key(self) -> None:
        response = self._request("GET", "/v1/series")
        if response.status_code in (401, 403):
            raise SimulatorError(
                "the API key was refused: pass --api-key or set VIGIL_API_KEY to a key with "
                "the admin scope (or read, ingest, score, label and train)"
            )
        if response.status_code >= 400:
            raise ApiError("GET", "/v1/series", response)

    def create_series(
        self, *, name: str, window_size: int, stride: int, classes: Mapping[str, str]
    ) -> Id | None:
        """The new series' id, or None when the name is taken."""
        body: JSON = {
            "name": name,
            "channels": list(CHANNELS),
            "window_size": window_size,
            "stride": stride,
            "classes": dict(classes),
        }
        response = self._request("POST", "/v1/series", body)
        if response.status_code == 409:
            return None
        if response.status_code >= 400:
            raise ApiError("POST", "/v1/series", response)
        return _id(response.json()["id"])

    def post_points(
        self, series_id: Id, timestamps: Sequence[str], values: Sequence[Sequence[float]]
    ) -> None:
        self._call(
            "POST",
            f"/v1/series/{series_id}/points",
            {"timestamps": list(timestamps), "values": [list(v) for v in values]},
        )

    def train(self, series_id: Id) -> Id:
        return _id(self._call("POST", f"/v1/series/{series_id}/train")["job_id"])

    def job(self, job_id: Id) -> JSON:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def score_range(self, series_id: Id, start: str, end: str) -> JSON | None:
        """Scores of the windows in [start, end], or None while the series has no model."""
        body: JSON = {"series_id": series_id, "start": start, "end": end}
        response = self._request("POST", "/v1/score", body)
        if response.status_code == 409:
            return None
        if response.status_code >= 400:
            raise ApiError("POST", "/v1/score", response)
        payload = response.json()
        if not isinstance(payload, dict):
            raise SimulatorError("POST /v1/score: expected a JSON object")
        return payload

    def create_label(self, body: JSON) -> None:
        """POST /v1/labels: a range label or feedback on a score."""
        self._call("POST", "/v1/labels", body)


def _id(value: object) -> Id:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SimulatorError(f"not a resource id: {value!r}")
    return value


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> float:
    """A timestamp from the API (ISO-8601 or epoch seconds) as Unix seconds."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise SimulatorError(f"not a timestamp: {value!r}")


@dataclass(frozen=True)
class OperatorPolicy:
    """How diligent the simulated operator is (probabilities per decision)."""

    label_detected_fault: float = 0.7  # names the class of a fault an alarm caught
    mark_false_alarm: float = 0.8  # marks an alarm on a healthy window false_positive
    report_missed_fault: float = 0.6  # marks a fault no alarm caught false_negative


@dataclass
class Tally:
    """Window-level confusion counts against the injected truth, plus fault-level recall."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    partial: int = 0
    faults_detected: int = 0
    faults_missed: int = 0

    @property
    def scored(self) -> int:
        return self.tp + self.fp + self.fn + self.tn + self.partial

    @property
    def alarms(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def fault_recall(self) -> float | None:
        total = self.faults_detected + self.faults_missed
        return self.faults_detected / total if total else None

    def add(self, other: Tally) -> None:
        for name in ("tp", "fp", "fn", "tn", "partial", "faults_detected", "faults_missed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class PendingLabel:
    """A label the operator decided on, until the API has accepted it."""

    run: MachineRun
    body: JSON
    message: str
    attempts: int = 0


@dataclass
class ScoredWindow:
    score_id: Id
    start: int
    flagged: bool
    share: float


@dataclass
class MachineRun:
    """The driver's book-keeping for one pump and its series."""

    index: int
    profile: PumpProfile
    series_id: Id
    series_name: str
    posted: int = 0  # steps stored in Vigil
    next_window: int = 0  # start step of the next window to score
    model_version: str | None = None
    job_id: Id | None = None
    train_requested: bool = False
    train_after: int = 0  # steps that must be stored before the first training request
    feedback_since_train: int = 0
    feedback: int = 0
    trainings: int = 0
    tally: Tally = field(default_factory=Tally)
    fault_windows: dict[Fault, list[ScoredWindow]] = field(default_factory=dict)
    faults_decided: set[Fault] = field(default_factory=set)  # the operator looked at them
    faults_closed: set[Fault] = field(default_factory=set)  # fully scored and counted


@dataclass(frozen=True)
class SimulationConfig:
    url: str
    api_key: str
    machines: int = 4
    steps: int | None = None  # None runs until interrupted
    sample_period_s: float = 60.0
    speed: float = 1440.0  # simulated seconds per wall second; 0 = as fast as possible
    seed: int = 7
    operator: bool = True
    warmup_steps: int = 1440
    window_size: int = 64
    stride: int = 32
    faults_per_day: float = 2.0
    prefix: str = "pump"
    retrain_after_feedback: int = 3
    ready_timeout_s: float = 60.0
    drain_timeout_s: float = 600.0
    max_windows_per_request: int = 64
    max_points_per_request: int = 5000
    policy: OperatorPolicy = field(default_factory=OperatorPolicy)


@dataclass
class SimulationReport:
    """What a run achieved, for the summary and for tests driving a live service."""

    steps: int
    machines: list[MachineRun]
    faults: list[Fault]
    total: Tally
    events: list[str]
    interrupted: bool = False


class Simulation:
    """Drives one plant against one Vigil through its public API."""

    def __init__(
        self,
        config: SimulationConfig,
        *,
        api: VigilApi,
        console: Console,
        now: Callable[[], float] = time.time,
    ) -> None:
        if config.steps is None and config.speed <= 0:
            raise SimulatorError("an unpaced run (--speed 0) needs --steps or --duration")
        if config.speed > 0 and config.sample_period_s / config.speed < MIN_STAMP_PERIOD_S:
            raise SimulatorError(
                f"--speed {config.speed:g} would send more than {1 / MIN_STAMP_PERIOD_S:.0f} "
                "points a second per pump: lower it or raise --sample-period"
            )
        if config.stride <= 0 or config.stride > config.window_size:
            raise SimulatorError("the stride must be between 1 and the window size")
        self.config = config
        self.api = api
        self.console = console
        wall = now()
        self.stamp0, self.stamp_period = stamp_clock(
            wall, config.steps, config.speed, config.sample_period_s
        )
        # The plant clock starts at the present time of day (unpaced: where the stamps do).
        period = config.sample_period_s
        epoch0 = self.stamp0 if config.speed <= 0 else math.floor(wall / period) * period
        warmup = -(-config.warmup_steps // config.stride) * config.stride  # on the stride grid
        self.warmup_steps = max(warmup, config.window_size)
        self.plant = Plant(
            make_profiles(config.machines, config.seed, config.prefix),
            seed=config.seed,
            epoch0=epoch0,
            sample_period_s=config.sample_period_s,
            warmup_steps=self.warmup_steps,
            faults_per_day=config.faults_per_day,
        )
        self.runs: list[MachineRun] = []
        self.events: deque[str] = deque(maxlen=10)
        self.history: list[str] = []
        self._operator_rng = np.random.default_rng([config.seed, 0x0BE5])
        self._announced: set[Fault] = set()
        self._outbox: list[PendingLabel] = []
        self._live = console.is_terminal
        self._last_status = 0.0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[clock]}"),
            console=console,
        )
        self._task = self._progress.add_task("plant", total=config.steps, clock=self._clock_text(0))

    # -- set-up ------------------------------------------------------------------------

    def setup(self) -> None:
        self.api.wait_ready(self.config.ready_timeout_s)
        self.api.check_key()
        classes = {kind.value: "anomaly" for kind in FAULT_KINDS}
        tag = datetime.now(UTC).strftime("%H%M%S")
        for index, profile in enumerate(self.plant.profiles):
            name = profile.name
            series_id = self.api.create_series(
                name=name,
                window_size=self.config.window_size,
                stride=self.config.stride,
                classes=classes,
            )
            if series_id is None:  # a previous run used the name: keep both apart
                name = f"{profile.name}-{tag}"
                series_id = self.api.create_series(
                    name=name,
                    window_size=self.config.window_size,
                    stride=self.config.stride,
                    classes=classes,
                )
                if series_id is None:
                    raise SimulatorError(f"series names {profile.name!r} and {name!r} are taken")
            self.runs.append(
                MachineRun(
                    index=index,
                    profile=profile,
                    series_id=series_id,
                    series_name=name,
                    next_window=self.warmup_steps,
                )
            )
            self._event(f"{name}: series {series_id} created")

    # -- the main loop -----------------------------------------------------------------

    def run(self) -> SimulationReport:
        self.setup()
        interrupted = False
        live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        if self._live:
            live.start()
        try:
            self._stream(live)
            self._drain(live)
        except KeyboardInterrupt:
            interrupted = True
            self._event("interrupted: stopping")
        finally:
            if self._live:
                live.update(self._render())
                live.stop()
        report = self.report(interrupted=interrupted)
        if not self._live:
            self.console.print(self._table())
        return report

    def _stream(self, live: Live) -> None:
        config = self.config
        started = time.monotonic()
        while config.steps is None or self.plant.step < config.steps:
            if config.speed > 0:
                elapsed = time.monotonic() - started
                due = int(elapsed * config.speed / config.sample_period_s) + 1
            else:
                due = self.plant.step + 8 * config.stride
            if config.steps is not None:
                due = min(due, config.steps)
            if due > self.plant.step:
                self._emit(self.plant.advance(due - self.plant.step))
            self._service_round()
            self._refresh(live)
            if config.speed > 0:
                next_step_at = started + self.plant.step * config.sample_period_s / config.speed
                time.sleep(min(1.0, max(0.05, next_step_at - time.monotonic())))

    def _drain(self, live: Live) -> None:
        """After the last point: wait for pending training and score what is left."""
        if not any(run.train_requested for run in self.runs):
            self._event(f"the run ended within the warm-up ({self.warmup_steps} samples): no model")
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            self._service_round()
            self._refresh(live)
            waiting = [
                run
                for run in self.runs
                if run.job_id is not None
                or (run.model_version is None and run.train_requested)
                or self._windows_ready(run) > 0
            ]
            if not waiting and not self._outbox:
                break
            time.sleep(1.0)
        else:
            self._event(f"drain timed out after {self.config.drain_timeout_s:.0f}s")
        for run in self.runs:
            self._close_faults(run, final=True)

    def _service_round(self) -> None:
        self._send_labels()
        for run in self.runs:
            self._poll_job(run)
            self._score(run)
            self._close_faults(run, final=False)
            self._maybe_train(run)  # last, so that this round's feedback counts

    # -- streaming -----------------------------------------------------------------------

    def _emit(self, block: FloatArray) -> None:
        """Post a block (machines, n, C) of fresh samples, one request per series and chunk."""
        first = self.plant.step - block.shape[1]
        for fault in self.plant.faults:
            if fault not in self._announced and fault.start < self.plant.step:
                self._announced.add(fault)
                run = self.runs[fault.machine]
                self._event(
                    f"{run.series_name}: injected {fault.describe()} "
                    f"{self._clock_text(fault.start)} → {self._clock_text(fault.end)}"
                )
        limit = self.config.max_points_per_request
        for run in self.runs:
            rows = np.round(block[run.index], 4)
            for low in range(0, rows.shape[0], limit):
                chunk = rows[low : low + limit]
                stamps = [iso(self._stamp(first + low + i)) for i in range(len(chunk))]
                self.api.post_points(run.series_id, stamps, chunk.tolist())
            run.posted = self.plant.step

    # -- training ------------------------------------------------------------------------

    def _maybe_train(self, run: MachineRun) -> None:
        if run.job_id is not None:
            return
        first = not run.train_requested and run.posted >= max(self.warmup_steps, run.train_after)
        again = (
            run.train_requested
            and self.config.retrain_after_feedback > 0
            and run.feedback_since_train >= self.config.retrain_after_feedback
        )
        if not (first or again):
            return
        run.job_id = self.api.train(run.series_id)
        run.train_requested = True
        run.feedback_since_train = 0
        reason = "healthy warm-up complete" if first else "operator feedback"
        self._event(f"{run.series_name}: training job {run.job_id} queued ({reason})")

    def _poll_job(self, run: MachineRun) -> None:
        if run.job_id is None:
            return
        job = self.api.job(run.job_id)
        status = job.get("status")
        if status == "succeeded":
            run.trainings += 1
            version = job.get("model_version")
            self._event(f"{run.series_name}: job {run.job_id} succeeded: trained v{version}")
            run.job_id = None
        elif status == "failed":
            self._event(f"{run.series_name}: job {run.job_id} failed: {job.get('error')}")
            run.job_id = None
            if run.model_version is None:  # try again once more data is stored
                run.train_requested = False
                run.train_after = run.posted + max(self.config.stride, self.warmup_steps // 2)

    # -- scoring and the operator --------------------------------------------------------

    def _windows_ready(self, run: MachineRun) -> int:
        size, stride = self.config.window_size, self.config.stride
        if run.posted < run.next_window + size:
            return 0
        return (run.posted - run.next_window - size) // stride + 1

    def _score(self, run: MachineRun) -> None:
        if not run.train_requested:
            return
        size, stride = self.config.window_size, self.config.stride
        while (ready := self._windows_ready(run)) > 0:
            count = min(ready, self.config.max_windows_per_request)
            last_step = run.next_window + size - 1 + (count - 1) * stride
            # Half a period past the last point: the same windows were `end` exclusive.
            start = iso(self._stamp(run.next_window))
            end = iso(self._stamp(last_step) + self.stamp_period / 2)
            response = self.api.score_range(run.series_id, start, end)
            if response is None:
                return  # no model yet: the backlog waits for it
            results = response.get("results") or []
            if not results:
                raise SimulatorError(
                    f"POST /v1/score returned no windows for {run.series_name} [{start}, {end}]"
                )
            self._note_model(run, response.get("model_version"))
            starts = []
            for position, result in enumerate(results):
                window_start = self._result_step(result, run.next_window + position * stride)
                starts.append(window_start)
                self._judge(run, result, window_start)
            run.next_window = max(starts) + stride

    def _result_step(self, result: Mapping[str, Any], fallback: int) -> int:
        if result.get("start") is None:
            return fallback
        return round((parse_time(result["start"]) - self.stamp0) / self.stamp_period)

    def _note_model(self, run: MachineRun, version: object) -> None:
        if version is None:
            return
        version_text = str(version)
        if version_text != run.model_version:
            before = run.model_version
            run.model_version = version_text
            change = f"v{before} → v{version_text}" if before else f"v{version_text}"
            self._event(f"{run.series_name}: scoring with model {change}")

    def _judge(self, run: MachineRun, result: Mapping[str, Any], start: int) -> None:
        size = self.config.window_size
        faults = self.plant.faults_of(run.index)
        verdict, fault, share = window_truth(start, size, faults)
        flagged = bool(result.get("is_anomaly"))
        score_id = _id(result.get("score_id"))
        tally = run.tally
        if verdict is WindowTruth.FAULT:
            if flagged:
                tally.tp += 1
            else:
                tally.fn += 1
        elif verdict is WindowTruth.NORMAL:
            if flagged:
                tally.fp += 1
            else:
                tally.tn += 1
        else:
            tally.partial += 1
        if fault is not None:
            run.fault_windows.setdefault(fault, []).append(
                ScoredWindow(score_id=score_id, start=start, flagged=flagged, share=share)
            )
        if not self.config.operator or not flagged:
            return
        policy = self.config.policy
        if verdict is WindowTruth.NORMAL:
            if self._operator_rng.random() < policy.mark_false_alarm:
                self._label(
                    run,
                    {"score_id": score_id, "label": "false_positive"},
                    f"false alarm at {self._clock_text(start)} → false_positive",
                )
        elif verdict is WindowTruth.FAULT and fault is not None:
            if fault in run.faults_decided:
                return
            run.faults_decided.add(fault)
            if self._operator_rng.random() < policy.label_detected_fault:
                seen_until = min(fault.end, start + size)
                body: JSON = {
                    "series_id": run.series_id,
                    "start": iso(self._stamp(fault.start)),
                    "end": iso(self._stamp(seen_until - 1)),
                    "label": fault.kind.value,
                    "author": OPERATOR,
                    "note": f"confirmed {fault.describe()} after alarm {score_id}",
                }
                self._label(run, body, f"alarm confirmed: labelled {fault.describe()}")

    def _close_faults(self, run: MachineRun, *, final: bool) -> None:
        """Count each fault once all its windows are scored; report the missed ones."""
        for fault in self.plant.faults_of(run.index):
            if fault in run.faults_closed:
                continue
            scored = run.next_window >= fault.end
            windows = [w for w in run.fault_windows.get(fault, []) if w.share >= POSITIVE_OVERLAP]
            if not scored and not (final and windows):  # at the end: judge what was seen
                continue
            if not windows:  # no window overlapped it enough to judge
                run.faults_closed.add(fault)
                continue
            run.faults_closed.add(fault)
            if any(w.flagged for w in windows):
                run.tally.faults_detected += 1
                continue
            run.tally.faults_missed += 1
            self._event(f"{run.series_name}: missed {fault.describe()}")
            if (
                self.config.operator
                and self._operator_rng.random() < self.config.policy.report_missed_fault
            ):
                worst = max(windows, key=lambda w: w.share)
                self._label(
                    run,
                    {"score_id": worst.score_id, "label": "false_negative"},
                    f"missed {fault.describe()} → false_negative",
                )

    def _label(self, run: MachineRun, body: JSON, message: str) -> None:
        self._outbox.append(PendingLabel(run=run, body=body, message=message))
        self._send_labels()

    def _send_labels(self) -> None:
        """Post the operator's labels. A score the API does not know yet (its score log is
        written in batches) is tried again on later rounds; a refusal is reported, not fatal.
        """
        waiting = []
        for pending in self._outbox:
            pending.attempts += 1
            run = pending.run
            try:
                self.api.create_label(pending.body)
            except ApiError as exc:
                if exc.status_code == 404 and pending.attempts < LABEL_ATTEMPTS:
                    waiting.append(pending)
                else:
                    self._event(f"{run.series_name}: operator: label refused: {exc}")
                continue
            run.feedback += 1
            run.feedback_since_train += 1
            self._event(f"{run.series_name}: operator: {pending.message}")
        self._outbox = waiting

    # -- reporting -----------------------------------------------------------------------

    def report(self, *, interrupted: bool = False) -> SimulationReport:
        total = Tally()
        for run in self.runs:
            total.add(run.tally)
        return SimulationReport(
            steps=self.plant.step,
            machines=list(self.runs),
            faults=[f for f in self.plant.faults if f.start < self.plant.step],
            total=total,
            events=list(self.history),
            interrupted=interrupted,
        )

    def _event(self, message: str) -> None:
        line = f"[{self._clock_text(self.plant.step)}] {message}"
        self.events.append(line)
        self.history.append(line)
        if not self._live:
            self.console.print(line, markup=False, highlight=False)

    def _stamp(self, step: int) -> float:
        """The timestamp Vigil stores for a step."""
        return self.stamp0 + step * self.stamp_period

    def _clock_text(self, step: int) -> str:
        """The plant clock at a step, for people."""
        return datetime.fromtimestamp(self.plant.timestamp(step), UTC).strftime("%a %H:%M")

    def _refresh(self, live: Live) -> None:
        self._progress.update(
            self._task, completed=self.plant.step, clock=self._clock_text(self.plant.step)
        )
        if self._live:
            live.update(self._render())
            return
        if time.monotonic() - self._last_status >= 30.0:
            self._last_status = time.monotonic()
            total = self.report().total
            self.console.print(
                f"step {self.plant.step}"
                + (f"/{self.config.steps}" if self.config.steps else "")
                + f"  scored {total.scored}  alarms {total.alarms}"
                + f"  precision {_ratio(total.precision)}  recall {_ratio(total.recall)}",
                markup=False,
                highlight=False,
            )

    def _render(self) -> RenderableType:
        events = Text("\n".join(self.events) if self.events else "waiting for the first events")
        return Group(self._progress, self._table(), events)

    def _table(self) -> Table:
        table = Table(title="Vigil plant simulator")
        for column in TABLE_COLUMNS:
            justify: Literal["left", "right"] = "left" if column in ("series", "state") else "right"
            table.add_column(column, justify=justify)
        total = Tally()
        for run in self.runs:
            total.add(run.tally)
            model = f"v{run.model_version}" if run.model_version else "-"
            if run.job_id is not None:
                model += " (training)"
            table.add_row(
                *_tally_row(run.series_name, run.posted, model, run.tally, run.feedback),
                self._active_fault(run),
            )
        table.add_section()
        posted = sum(r.posted for r in self.runs)
        feedback = sum(r.feedback for r in self.runs)
        table.add_row(*_tally_row("all", posted, "", total, feedback), "")
        return table

    def _active_fault(self, run: MachineRun) -> str:
        step = self.plant.step - 1
        for fault in self.plant.faults_of(run.index):
            if fault.start <= step < fault.end:
                return fault.describe()
        return "healthy"


TABLE_COLUMNS: Final = (
    "series",
    "points",
    "model",
    "scored",
    "alarms",
    "TP",
    "FP",
    "FN",
    "precision",
    "recall",
    "faults caught",
    "feedback",
    "state",
)


def _tally_row(name: str, posted: int, model: str, t: Tally, feedback: int) -> list[str]:
    return [
        name,
        str(posted),
        model,
        str(t.scored),
        str(t.alarms),
        str(t.tp),
        str(t.fp),
        str(t.fn),
        _ratio(t.precision),
        _ratio(t.recall),
        f"{t.faults_detected}/{t.faults_detected + t.faults_missed}",
        str(feedback),
    ]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def simulate_command(
    url: Annotated[
        str, typer.Option(envvar="VIGIL_URL", help="Base URL of the running Vigil.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VIGIL_API_KEY",
            show_default=False,
            help="API key with the admin scope, or read, ingest, score, label and train.",
        ),
    ] = None,
    machines: Annotated[int, typer.Option(min=1, max=64, help="Pumps to simulate.")] = 4,
    duration: Annotated[
        str,
        typer.Option(help="Plant time to cover: 3d, 36h, 90m, 600s, or 'forever'."),
    ] = "3d",
    steps: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Samples per pump; overrides --duration."),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Plant seconds per wall-clock second: 1 is real time, 1440 a plant day per "
            "minute (points carry wall-clock timestamps), 0 as fast as Vigil accepts "
            "(backfilled with plant timestamps up to now).",
        ),
    ] = 1440.0,
    sample_period: Annotated[
        float, typer.Option(min=0.001, help="Plant seconds between two samples.")
    ] = 60.0,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the pumps, their faults and the operator (the plant clock starts at "
            "the present time of day)."
        ),
    ] = 7,
    operator: Annotated[
        bool,
        typer.Option(
            "--operator/--no-operator",
            help="Play an operator who labels faults and reports false alarms and misses.",
        ),
    ] = True,
    warmup: Annotated[
        str, typer.Option(help="Healthy commissioning time before the first training.")
    ] = "1d",
    window_size: Annotated[
        int, typer.Option(min=4, help="Window size of the series created (stride: half).")
    ] = 64,
    fault_rate: Annotated[
        float,
        typer.Option(min=0.0, help="Fault onsets per pump per plant day of healthy running."),
    ] = 2.0,
    prefix: Annotated[str, typer.Option(help="Series names are <prefix>-01, <prefix>-02, ...")] = (
        "pump"
    ),
    retrain_after: Annotated[
        int,
        typer.Option(min=0, help="Request a retrain after this many feedback labels (0: never)."),
    ] = 3,
    ready_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait for /readyz at start.")
    ] = 60.0,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds to wait at the end for training and scoring."),
    ] = 600.0,
) -> None:
    """Simulate a plant of pumps streaming into Vigil, inject faults and play the operator."""
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the summary table
        console = Console(width=max(console.width, 140))
    if not api_key:
        console.print("[red]no API key: pass --api-key or set VIGIL_API_KEY[/red]")
        raise typer.Exit(2)
    try:
        span = parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from exc
    try:
        warmup_s = parse_duration(warmup)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--warmup") from exc
    if warmup_s is None:
        raise typer.BadParameter("the warm-up must be finite", param_hint="--warmup")
    total_steps = steps
    if total_steps is None and span is not None:
        total_steps = max(1, round(span / sample_period))
    config = SimulationConfig(
        url=url,
        api_key=api_key,
        machines=machines,
        steps=total_steps,
        sample_period_s=sample_period,
        speed=speed,
        seed=seed,
        operator=operator,
        warmup_steps=max(1, round(warmup_s / sample_period)),
        window_size=window_size,
        stride=max(1, window_size // 2),
        faults_per_day=fault_rate,
        prefix=prefix,
        retrain_after_feedback=retrain_after,
        ready_timeout_s=ready_timeout,
        drain_timeout_s=drain_timeout,
    )
    api = VigilApi(url, api_key)
    try:
        report = Simulation(config, api=api, console=console).run()
    except SimulatorError as exc:
        console.print(f"[red]simulation stopped: {exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        api.close()
    total = report.total
    console.print(
        f"{report.steps} samples per pump, {len(report.faults)} fault(s) injected; "
        f"window precision {_ratio(total.precision)}, recall {_ratio(total.recall)}, "
        f"faults caught {total.faults_detected}/{total.faults_detected + total.faults_missed}"
    )
    if report.interrupted:
        raise typer.Exit(130)

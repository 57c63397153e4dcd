"""The plant: pumps, their healthy telemetry, the faults injected into it, and the ground truth.

Pure, seeded numpy: pump profiles, clean signals with daily duty cycles, set-point changes,
thermal lag and sensor noise; fault planning and injection (bearing wear, cavitation, sensor
drift, stuck sensor); and which window overlaps which fault. Nothing here talks to Vigil.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

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

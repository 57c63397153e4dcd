"""The driver: one plant against one Vigil, through its public API (`vigil_client`).

It creates one series per pump, streams points on a simulated clock, trains once enough
healthy data exists, scores each new window, lets the operator answer, and keeps precision
and recall against the injected truth. With the alarms API (`/v1/alarms` in the service's
OpenAPI document) the operator judges alarms, the service's events, one verdict each; without
it, the operator labels scored windows as before.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.text import Text
from vigil_client import (
    ApiError,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    TransportError,
    Unauthorized,
)
from vigil_client.models import Alarm, ScoreResult

from app.simulator.clock import MIN_STAMP_PERIOD_S, iso, parse_time, stamp_clock
from app.simulator.operator import (
    OPERATOR,
    AlarmVerdict,
    Decision,
    Operator,
    OperatorPolicy,
    RangeLabel,
    ScoreLabel,
    alarm_truth,
)
from app.simulator.plant import (
    CHANNELS,
    FAULT_KINDS,
    POSITIVE_OVERLAP,
    Fault,
    FloatArray,
    Plant,
    PumpProfile,
    WindowTruth,
    make_profiles,
    window_truth,
)
from app.simulator.report import SimulationReport, Tally, machine_table, ratio

Id = int
LABEL_ATTEMPTS: Final = 10  # rounds a label waits for its score (or alarm) to be stored
ALARMS_PATH: Final = "/v1/alarms"


class SimulatorError(Exception):
    """The simulation cannot go on (service unreachable, key refused, contract broken)."""


@dataclass
class Pending:
    """A decision of the operator, until the API has accepted it."""

    run: MachineRun
    decision: Decision
    message: str
    attempts: int = 0


@dataclass
class ScoredWindow:
    score_id: str
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
    alarms: dict[int | str, Alarm] = field(default_factory=dict)  # the service's, by id
    verdicts: int = 0  # alarms the operator gave a verdict on


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
    alarm_poll_s: float = 2.0  # wall seconds between two listings of the service's alarms
    detection_timeout_s: float = 60.0  # at the end: wait for detection on ingest this long
    use_alarms: bool | None = None  # None: when the service has the alarms API
    policy: OperatorPolicy = field(default_factory=OperatorPolicy)


class Simulation:
    """Drives one plant against one Vigil through its public API."""

    def __init__(
        self,
        config: SimulationConfig,
        *,
        client: Client,
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
        self.client = client
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
        self.alarms_api = False
        self.events: deque[str] = deque(maxlen=10)
        self.history: list[str] = []
        self.operator = Operator(config.policy, np.random.default_rng([config.seed, 0x0BE5]))
        self._announced: set[Fault] = set()
        self._outbox: list[Pending] = []
        self._live = console.is_terminal
        self._last_status = 0.0
        self._last_alarm_poll = -math.inf
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
        try:
            self.client.wait_ready(self.config.ready_timeout_s)
        except TimeoutError as exc:
            raise SimulatorError(str(exc)) from exc
        try:
            self.client.list_series(limit=1)
        except (Unauthorized, Forbidden) as exc:
            raise SimulatorError(
                "the API key was refused: pass --api-key or set VIGIL_API_KEY to a key with "
                "the admin scope (or read, ingest, score, label and train)"
            ) from exc
        self.alarms_api = self._has_alarms_api()
        if self.alarms_api:
            self._event(
                "the service has the alarms API: the operator judges alarms"
                if self.config.operator
                else "the service has the alarms API: alarms are left to you (--no-operator)"
            )
        classes = {kind.value: "anomaly" for kind in FAULT_KINDS}
        tag = datetime.now(UTC).strftime("%H%M%S")
        for index, profile in enumerate(self.plant.profiles):
            name = profile.name
            series_id = self._create_series(name, classes)
            if series_id is None:  # a previous run used the name: keep both apart
                name = f"{profile.name}-{tag}"
                series_id = self._create_series(name, classes)
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

    def _has_alarms_api(self) -> bool:
        if self.config.use_alarms is not None:
            return self.config.use_alarms
        paths = self.client.openapi().get("paths", {})
        return ALARMS_PATH in paths and any(p.endswith("/verdict") for p in paths)

    def _create_series(self, name: str, classes: Mapping[str, str]) -> Id | None:
        """The new series' id, or None when the name is taken."""
        try:
            series = self.client.create_series(
                name=name,
                channels=CHANNELS,
                window_size=self.config.window_size,
                stride=self.config.stride,
                classes=classes,
            )
        except Conflict:
            return None
        return series.id

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
        except (ApiError, TransportError) as exc:
            raise SimulatorError(str(exc)) from exc
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
            holding = self._awaiting_first_model()
            if holding:
                due = self.plant.step
            if due > self.plant.step:
                self._emit(self.plant.advance(due - self.plant.step))
            self._service_round()
            self._refresh(live)
            if holding:
                time.sleep(0.5)
            if config.speed > 0:
                next_step_at = started + self.plant.step * config.sample_period_s / config.speed
                time.sleep(min(1.0, max(0.05, next_step_at - time.monotonic())))

    def _awaiting_first_model(self) -> bool:
        """Unpaced runs on a service that detects on ingest hold the stream after the warm-up
        until every first model is trained: the service scores (and alarms on) only points
        that arrive once a series has an active model, and a backfill would otherwise have
        sent them all before then. Paced runs stream on, as a plant does."""
        if self.config.speed > 0 or not self.alarms_api:
            return False
        return any(run.train_requested and run.trainings == 0 for run in self.runs)

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
        if self.alarms_api:
            self._await_detection(live)
            self._poll_alarms(force=True)
            self._send_decisions()
        for run in self.runs:
            self._close_faults(run, final=True)

    def _await_detection(self, live: Live) -> None:
        """Wait (at most `detection_timeout_s`) until the service has scored every series'
        last window on ingest, so that the alarms of the last points are seen too."""
        deadline = time.monotonic() + self.config.detection_timeout_s
        pending = [run for run in self.runs if run.trainings > 0]
        while pending and time.monotonic() < deadline:
            pending = [run for run in pending if not self._detected_to_the_end(run)]
            self._poll_alarms()
            self._send_decisions()
            self._refresh(live)
            if pending:
                time.sleep(0.5)
        if pending:
            names = ", ".join(run.series_name for run in pending)
            self._event(f"detection on ingest had not caught up with {names}")

    def _detected_to_the_end(self, run: MachineRun) -> bool:
        size, stride = self.config.window_size, self.config.stride
        if run.posted < size:
            return True
        last_start = (run.posted - size) // stride * stride
        since = iso(self._stamp(last_start) - self.stamp_period / 2)
        return bool(self.client.list_scores(run.series_id, start=since, limit=1).items)

    def _service_round(self) -> None:
        self._send_decisions()
        for run in self.runs:
            self._poll_job(run)
            self._score(run)
            self._close_faults(run, final=False)
        if self.alarms_api:
            self._poll_alarms()
        for run in self.runs:
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
                self.client.ingest_points(run.series_id, stamps, chunk)
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
        run.job_id = self.client.train(run.series_id).id
        run.train_requested = True
        run.feedback_since_train = 0
        reason = "healthy warm-up complete" if first else "operator feedback"
        self._event(f"{run.series_name}: training job {run.job_id} queued ({reason})")

    def _poll_job(self, run: MachineRun) -> None:
        if run.job_id is None:
            return
        job = self.client.get_job(run.job_id)
        if job.status == "succeeded":
            run.trainings += 1
            self._event(
                f"{run.series_name}: job {run.job_id} succeeded: trained v{job.model_version}"
            )
            run.job_id = None
        elif job.status == "failed":
            self._event(f"{run.series_name}: job {run.job_id} failed: {job.error}")
            run.job_id = None
            if run.model_version is None:  # try again once more data is stored
                run.train_requested = False
                run.train_after = run.posted + max(self.config.stride, self.warmup_steps // 2)

    # -- scoring ------------------------------------------------------------------------------

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
            try:
                version, results = self._score_range(run.series_id, start, end)
            except Conflict:
                return  # no model yet: the backlog waits for it
            if not results:
                raise SimulatorError(
                    f"POST /v1/score returned no windows for {run.series_name} [{start}, {end}]"
                )
            self._note_model(run, version)
            starts = []
            for position, result in enumerate(results):
                window_start = self._result_step(result, run.next_window + position * stride)
                starts.append(window_start)
                self._judge(run, result, window_start)
            run.next_window = max(starts) + stride

    def _score_range(self, series_id: Id, start: str, end: str) -> tuple[int, list[ScoreResult]]:
        """The model version and every window of [start, end], page by page."""
        response = self.client.score_range(series_id, start=start, end=end)
        results = list(response.results)
        while response.next_cursor and response.results:
            response = self.client.score_range(
                series_id, start=start, end=end, cursor=response.next_cursor
            )
            results.extend(response.results)
        return response.model_version, results

    def _result_step(self, result: ScoreResult, fallback: int) -> int:
        if result.start is None:
            return fallback
        return self._step_of(result.start)

    def _step_of(self, when: object) -> int:
        return round((parse_time(when) - self.stamp0) / self.stamp_period)

    def _note_model(self, run: MachineRun, version: object) -> None:
        if version is None:
            return
        version_text = str(version)
        if version_text != run.model_version:
            before = run.model_version
            run.model_version = version_text
            change = f"v{before} → v{version_text}" if before else f"v{version_text}"
            self._event(f"{run.series_name}: scoring with model {change}")

    def _judge(self, run: MachineRun, result: ScoreResult, start: int) -> None:
        """Count a scored window against the truth; without the alarms API the operator
        answers flagged windows here."""
        size = self.config.window_size
        if not result.scored or result.score_id is None:  # too much missing data
            run.tally.unscored += 1
            return
        verdict, fault, share = window_truth(start, size, self.plant.faults_of(run.index))
        flagged = result.is_anomaly
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
                ScoredWindow(score_id=result.score_id, start=start, flagged=flagged, share=share)
            )
        if not self.config.operator or not flagged or self.alarms_api:
            return
        if verdict is WindowTruth.NORMAL:
            label = self.operator.false_alarm_window(result.score_id)
            if label is not None:
                self._decide(
                    run, label, f"false alarm at {self._clock_text(start)} → false_positive"
                )
        elif verdict is WindowTruth.FAULT and fault is not None:
            if fault in run.faults_decided:
                return
            run.faults_decided.add(fault)
            seen_until = min(fault.end, start + size)
            ranged = self.operator.caught_fault(
                fault, seen_until=seen_until, score_id=result.score_id
            )
            if ranged is not None:
                self._decide(run, ranged, f"alarm confirmed: labelled {fault.describe()}")

    def _close_faults(self, run: MachineRun, *, final: bool) -> None:
        """Count each fault once all its windows are scored; report the missed ones."""
        for fault in self.plant.faults_of(run.index):
            if fault in run.faults_closed:
                continue
            scored = run.next_window >= fault.end
            windows = [w for w in run.fault_windows.get(fault, []) if w.share >= POSITIVE_OVERLAP]
            if not scored and not (final and windows):  # at the end: judge what was seen
                continue
            run.faults_closed.add(fault)
            if not windows:  # no window overlapped it enough to judge
                continue
            if any(w.flagged for w in windows):
                run.tally.faults_detected += 1
                continue
            run.tally.faults_missed += 1
            self._event(f"{run.series_name}: missed {fault.describe()}")
            if self.config.operator:
                worst = max(windows, key=lambda w: w.share)
                label = self.operator.missed_fault(worst.score_id)
                if label is not None:
                    self._decide(run, label, f"missed {fault.describe()} → false_negative")

    # -- alarms (the alarms API) --------------------------------------------------------------

    def _poll_alarms(self, *, force: bool = False) -> None:
        """List the service's alarms of these series; show new and changed ones as events,
        and let the operator judge each new one."""
        now = time.monotonic()
        if not force and now - self._last_alarm_poll < self.config.alarm_poll_s:
            return
        self._last_alarm_poll = now
        by_series = {run.series_id: run for run in self.runs}
        since = iso(self.stamp0)
        for run in self.runs:
            for alarm in self.client.iter_alarms(series_id=run.series_id, since=since):
                if alarm.series_id in by_series:
                    self._note_alarm(by_series[alarm.series_id], alarm)

    def _note_alarm(self, run: MachineRun, alarm: Alarm) -> None:
        before = run.alarms.get(alarm.id)
        run.alarms[alarm.id] = alarm
        start = self._step_of(alarm.start)
        if before is not None:
            if before.status != alarm.status:
                self._event(f"{run.series_name}: alarm {alarm.id} {alarm.status}")
            return
        end = self._step_of(alarm.end) if alarm.end is not None else start
        truth = alarm_truth(
            start,
            end + self.config.window_size - 1,
            self.plant.faults_of(run.index),
            window_size=self.config.window_size,
        )
        if truth.fault is None:
            run.tally.alarm_events_false += 1
        else:
            run.tally.alarm_events_true += 1
        channels = ", ".join(f"{c.name} {c.share:.0%}" for c in alarm.channels[:2])
        what = alarm.check or alarm.kind or "score"
        peak = f" peak {alarm.peak_score:.2f}" if alarm.peak_score is not None else ""
        self._event(
            f"{run.series_name}: alarm {alarm.id} opened at {self._clock_text(start)} "
            f"({what}{peak}{'; ' + channels if channels else ''})"
        )
        if not self.config.operator or alarm.verdict:
            return
        verdict = self.operator.alarm(alarm.id, truth)
        if verdict is None:
            return
        if truth.fault is not None:
            run.faults_decided.add(truth.fault)
        self._decide(run, verdict, f"alarm {alarm.id} → {verdict.label}")

    # -- sending the operator's decisions -------------------------------------------------------

    def _decide(self, run: MachineRun, decision: Decision, message: str) -> None:
        self._outbox.append(Pending(run=run, decision=decision, message=message))
        self._send_decisions()

    def _send_decisions(self) -> None:
        """Send the operator's decisions. A score or alarm the API does not know yet (the
        score log is written in batches) is tried again on later rounds; a refusal is
        reported, not fatal."""
        waiting = []
        for pending in self._outbox:
            pending.attempts += 1
            run = pending.run
            try:
                self._send(run, pending.decision)
            except NotFound as exc:
                if pending.attempts < LABEL_ATTEMPTS:
                    waiting.append(pending)
                else:
                    self._event(f"{run.series_name}: operator: refused: {exc}")
                continue
            except (ApiError, TransportError) as exc:
                self._event(f"{run.series_name}: operator: refused: {exc}")
                continue
            run.feedback += 1
            run.feedback_since_train += 1
            if isinstance(pending.decision, AlarmVerdict):
                run.verdicts += 1
            self._event(f"{run.series_name}: operator: {pending.message}")
        self._outbox = waiting

    def _send(self, run: MachineRun, decision: Decision) -> None:
        if isinstance(decision, AlarmVerdict):
            self.client.alarm_verdict(decision.alarm_id, decision.label, note=decision.note)
        elif isinstance(decision, ScoreLabel):
            self.client.label_score(decision.score_id, label=decision.label)
        elif isinstance(decision, RangeLabel):
            self.client.label_range(
                run.series_id,
                start=iso(self._stamp(decision.start)),
                end=iso(self._stamp(decision.end)),
                label=decision.label,
                author=OPERATOR,
                note=decision.note,
            )

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
            alarms_api=self.alarms_api,
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
                + f"  precision {ratio(total.precision)}  recall {ratio(total.recall)}",
                markup=False,
                highlight=False,
            )

    def _render(self) -> RenderableType:
        events = Text("\n".join(self.events) if self.events else "waiting for the first events")
        return Group(self._progress, self._table(), events)

    def _table(self) -> RenderableType:
        return machine_table(self.runs, state=self._active_fault, alarms_api=self.alarms_api)

    def _active_fault(self, run: MachineRun) -> str:
        step = self.plant.step - 1
        for fault in self.plant.faults_of(run.index):
            if fault.start <= step < fault.end:
                return fault.describe()
        return "healthy"

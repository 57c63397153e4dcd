"""What a run achieved: counts against the injected truth, the live table and the summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final, Literal

from rich.table import Table

from app.simulator.plant import Fault

if TYPE_CHECKING:
    from app.simulator.driver import MachineRun


@dataclass
class Tally:
    """Window-level confusion counts against the injected truth, fault-level recall, and
    (with the alarms API) alarm-level counts: alarms on a fault and alarms on healthy running."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    partial: int = 0
    faults_detected: int = 0
    faults_missed: int = 0
    unscored: int = 0  # windows the service did not score (too much missing data)
    alarm_events_true: int = 0
    alarm_events_false: int = 0

    @property
    def scored(self) -> int:
        return self.tp + self.fp + self.fn + self.tn + self.partial

    @property
    def alarms(self) -> int:
        return self.tp + self.fp

    @property
    def alarm_events(self) -> int:
        return self.alarm_events_true + self.alarm_events_false

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

    @property
    def alarm_precision(self) -> float | None:
        """Share of the service's alarms (events) that were on a fault."""
        return self.alarm_events_true / self.alarm_events if self.alarm_events else None

    def add(self, other: Tally) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))


@dataclass
class SimulationReport:
    """What a run achieved, for the summary and for tests driving a live service."""

    steps: int
    machines: list[MachineRun]
    faults: list[Fault]
    total: Tally
    events: list[str]
    interrupted: bool = False
    alarms_api: bool = False


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
EVENT_COLUMNS: Final = ("events", "events on faults")
"""Added with the alarms API: the service's alarms (events), and how many were on a fault."""


def machine_table(
    runs: Sequence[MachineRun], *, state: Callable[[MachineRun], str], alarms_api: bool
) -> Table:
    table = Table(title="Vigil plant simulator")
    columns = list(TABLE_COLUMNS)
    if alarms_api:
        columns[-1:-1] = EVENT_COLUMNS
    for column in columns:
        justify: Literal["left", "right"] = "left" if column in ("series", "state") else "right"
        table.add_column(column, justify=justify)
    total = Tally()
    for run in runs:
        total.add(run.tally)
        model = f"v{run.model_version}" if run.model_version else "-"
        if run.job_id is not None:
            model += " (training)"
        table.add_row(
            *_row(run.series_name, run.posted, model, run.tally, run.feedback, alarms_api),
            state(run),
        )
    table.add_section()
    posted = sum(r.posted for r in runs)
    feedback = sum(r.feedback for r in runs)
    table.add_row(*_row("all", posted, "", total, feedback, alarms_api), "")
    return table


def _row(
    name: str, posted: int, model: str, t: Tally, feedback: int, alarms_api: bool
) -> list[str]:
    row = [
        name,
        str(posted),
        model,
        str(t.scored),
        str(t.alarms),
        str(t.tp),
        str(t.fp),
        str(t.fn),
        ratio(t.precision),
        ratio(t.recall),
        f"{t.faults_detected}/{t.faults_detected + t.faults_missed}",
        str(feedback),
    ]
    if alarms_api:
        row += [str(t.alarm_events), str(t.alarm_events_true)]
    return row


def summary(report: SimulationReport) -> str:
    total = report.total
    line = (
        f"{report.steps} samples per pump, {len(report.faults)} fault(s) injected; "
        f"window precision {ratio(total.precision)}, recall {ratio(total.recall)}, "
        f"faults caught {total.faults_detected}/{total.faults_detected + total.faults_missed}"
    )
    if report.alarms_api:
        line += (
            f"; {total.alarm_events} alarm event(s), {total.alarm_events_true} on a fault "
            f"(precision {ratio(total.alarm_precision)})"
        )
    return line


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"

"""The simulated operator: what a person at the plant says about alarms, given the truth.

The operator knows which faults were injected (the plant's ground truth) and answers, with
the diligence `OperatorPolicy` gives, the way Vigil asks:

* with the alarms API (`/v1/alarms`), one verdict per alarm: the fault's class for an alarm
  on a fault, `false_positive` for one on healthy running;
* without it, per scored window: a range label naming the fault a flagged window caught, and
  `false_positive` on a flagged healthy window;
* either way, `false_negative` on the worst window of a fault no alarm caught.

Decisions are values (`RangeLabel`, `ScoreLabel`, `AlarmVerdict`); the driver sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from app.simulator.plant import POSITIVE_OVERLAP, Fault

OPERATOR = "simulator-operator"


@dataclass(frozen=True)
class OperatorPolicy:
    """How diligent the simulated operator is (probabilities per decision)."""

    label_detected_fault: float = 0.7  # names the class of a fault an alarm caught
    mark_false_alarm: float = 0.8  # marks an alarm on a healthy window false_positive
    report_missed_fault: float = 0.6  # marks a fault no alarm caught false_negative


@dataclass(frozen=True)
class RangeLabel:
    """Label the steps [start, end] of the series with a class."""

    start: int
    end: int
    label: str
    note: str


@dataclass(frozen=True)
class ScoreLabel:
    """Feedback on one scored window."""

    score_id: str
    label: str


@dataclass(frozen=True)
class AlarmVerdict:
    """The verdict on one alarm of the alarms API."""

    alarm_id: int | str
    label: str
    note: str


Decision = RangeLabel | ScoreLabel | AlarmVerdict


@dataclass(frozen=True)
class AlarmTruth:
    """What an alarm covered: the fault it overlaps most (None: healthy running)."""

    fault: Fault | None
    overlap: int


def alarm_truth(start: int, end: int, faults: Iterable[Fault], *, window_size: int) -> AlarmTruth:
    """The fault an alarm over steps [start, end] caught: the one it overlaps most, if that
    overlap is at least the share of a window that makes a window faulty."""
    best: Fault | None = None
    best_overlap = 0
    for fault in faults:
        overlap = fault.overlap(start, end + 1)
        if overlap > best_overlap:
            best, best_overlap = fault, overlap
    if best is None or best_overlap < POSITIVE_OVERLAP * window_size:
        return AlarmTruth(None, best_overlap)
    return AlarmTruth(best, best_overlap)


class Operator:
    """Decides, with its own seeded randomness, what to tell Vigil."""

    def __init__(self, policy: OperatorPolicy, rng: np.random.Generator) -> None:
        self.policy = policy
        self.rng = rng

    def false_alarm_window(self, score_id: str) -> ScoreLabel | None:
        """A flagged window on healthy running (per-window mode)."""
        if self.rng.random() < self.policy.mark_false_alarm:
            return ScoreLabel(score_id, "false_positive")
        return None

    def caught_fault(self, fault: Fault, *, seen_until: int, score_id: str) -> RangeLabel | None:
        """The first flagged window on a fault (per-window mode): name the fault's class
        over what the operator has seen of it."""
        if self.rng.random() < self.policy.label_detected_fault:
            note = f"confirmed {fault.describe()} after alarm {score_id}"
            return RangeLabel(fault.start, seen_until - 1, fault.kind.value, note)
        return None

    def missed_fault(self, score_id: str) -> ScoreLabel | None:
        """A fault no window alarmed on: `false_negative` on its most covered window."""
        if self.rng.random() < self.policy.report_missed_fault:
            return ScoreLabel(score_id, "false_negative")
        return None

    def alarm(self, alarm_id: int | str, truth: AlarmTruth) -> AlarmVerdict | None:
        """An alarm of the alarms API: its fault's class, or `false_positive`."""
        if truth.fault is None:
            if self.rng.random() < self.policy.mark_false_alarm:
                return AlarmVerdict(alarm_id, "false_positive", "healthy running")
            return None
        if self.rng.random() < self.policy.label_detected_fault:
            fault = truth.fault
            return AlarmVerdict(alarm_id, fault.kind.value, f"confirmed {fault.describe()}")
        return None

"""The simulator's two clocks, and times as the API writes them.

The plant has its own clock (daily cycles, fault durations), `--speed` times faster than the
wall clock. The timestamps sent to Vigil are the wall-clock time each point is produced, so
dashboards and alerts see a live plant whose day passes in minutes; only the unpaced mode
(`--speed 0`) stamps points with the plant clock, backfilled up to now.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Final

from app.simulator.plant import DAY_S

MIN_STAMP_PERIOD_S: Final = 0.001  # timestamps are stored in microseconds: keep them apart


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


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> float:
    """A timestamp from the API (a datetime, ISO-8601 or epoch seconds) as Unix seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise ValueError(f"not a timestamp: {value!r}")

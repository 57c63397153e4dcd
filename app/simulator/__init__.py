"""`vigil simulate`: a plant of pumps streaming into a running Vigil, with faults to catch.

- `plant`: the plant model (pure, seeded numpy): pumps, healthy telemetry, injected faults,
  and the ground truth of which window overlaps which fault.
- `clock`: the plant's clock and the timestamps sent to Vigil.
- `operator`: what the simulated operator answers, given the truth: verdicts on alarms, or
  labels on scored windows where the service has no alarms API.
- `driver`: one plant against one Vigil through `vigil_client`: series, points, training,
  scoring, alarms and the operator's decisions.
- `report`: counts against the truth, the live table and the summary.
- `command`: the `vigil simulate` command line.
"""

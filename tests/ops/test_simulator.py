"""The plant simulator's model: signals, faults and ground truth, without a server."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from app.simulator.clock import parse_duration, parse_time, stamp_clock
from app.simulator.command import simulate_command
from app.simulator.operator import (
    AlarmVerdict,
    Operator,
    OperatorPolicy,
    RangeLabel,
    ScoreLabel,
    alarm_truth,
)
from app.simulator.plant import (
    CHANNELS,
    CURRENT,
    DAY_S,
    FAULT_KINDS,
    FLOW,
    MIN_FAULT_GAP_S,
    N_CHANNELS,
    PRESSURE,
    TEMPERATURE,
    VIBRATION,
    Fault,
    FaultKind,
    Plant,
    PumpSignal,
    WindowTruth,
    apply_faults,
    duty_cycle,
    make_profiles,
    plan_faults,
    window_truth,
)
from app.simulator.report import SimulationReport, Tally, summary

PERIOD = 60.0
DAY = int(DAY_S / PERIOD)


def signal(seed: int = 3, index: int = 0, epoch0: float = 0.0) -> PumpSignal:
    profile = make_profiles(2, seed)[index]
    return PumpSignal(profile, seed=seed, index=index, epoch0=epoch0, sample_period_s=PERIOD)


def plant(
    faults_per_day: float, *, seed: int = 11, kinds: tuple[FaultKind, ...] = FAULT_KINDS
) -> Plant:
    return Plant(
        make_profiles(3, seed),
        seed=seed,
        epoch0=0.0,
        sample_period_s=PERIOD,
        warmup_steps=DAY // 2,
        faults_per_day=faults_per_day,
        kinds=kinds,
    )


def fault(
    kind: FaultKind, start: int, end: int, *, channel: int = FLOW, magnitude: float = 1.0
) -> Fault:
    return Fault(
        machine=0, kind=kind, start=start, end=end, channel=channel, magnitude=magnitude, seed=5
    )


# -- profiles and clean signals ---------------------------------------------------------


def test_profiles_are_named_distinct_and_seeded() -> None:
    profiles = make_profiles(4, seed=1, prefix="line-a")
    assert [p.name for p in profiles] == ["line-a-01", "line-a-02", "line-a-03", "line-a-04"]
    assert make_profiles(4, seed=1, prefix="line-a") == profiles
    assert make_profiles(4, seed=2, prefix="line-a") != profiles
    assert len({p.flow_m3h for p in profiles}) == 4
    for profile in profiles:
        assert profile.nominal().shape == (N_CHANNELS,)
        assert (profile.noise() > 0).all()


def test_signal_shape_and_physical_ranges() -> None:
    values = signal().generate(2 * DAY)
    assert values.shape == (2 * DAY, len(CHANNELS))
    assert np.isfinite(values).all()
    assert (values[:, VIBRATION] >= 0).all()
    assert (values[:, FLOW] > 0).all()
    assert (values[:, PRESSURE] > 0).all()
    assert 10.0 < values[:, TEMPERATURE].min() < values[:, TEMPERATURE].max() < 70.0


def test_signal_is_deterministic_under_seed() -> None:
    assert np.array_equal(signal(seed=3).generate(500), signal(seed=3).generate(500))
    assert not np.allclose(signal(seed=3).generate(500), signal(seed=4).generate(500))


def test_signal_does_not_depend_on_block_sizes() -> None:
    whole = signal().generate(1000)
    pieces = signal()
    split = np.concatenate([pieces.generate(1), pieces.generate(333), pieces.generate(666)])
    assert np.array_equal(whole, split)


def test_signal_follows_the_daily_duty_cycle() -> None:
    values = signal().generate(4 * DAY)
    hours = (np.arange(4 * DAY) * PERIOD / 3600.0) % 24.0
    profile = make_profiles(1, 3)[0]
    assert duty_cycle(np.array([14.0 * 3600]), 0.0)[0] > duty_cycle(np.array([2.0 * 3600]), 0.0)[0]
    afternoon = (hours >= 12 + profile.day_phase_h) & (hours < 16 + profile.day_phase_h)
    night = (hours >= 0 + profile.day_phase_h % 24) & (hours < 4 + profile.day_phase_h % 24)
    assert values[afternoon, FLOW].mean() > values[night, FLOW].mean() * 1.1
    # Flow and motor current both follow the load.
    assert np.corrcoef(values[:, FLOW], values[:, CURRENT])[0, 1] > 0.8


# -- fault planning ------------------------------------------------------------------------


def test_planned_faults_stay_in_the_horizon_apart_and_seeded() -> None:
    nominal = make_profiles(1, 0)[0].nominal()

    def planned(seed: int) -> list[Fault]:
        return plan_faults(
            machine=2,
            start=1000,
            stop=1000 + 30 * DAY,
            sample_period_s=PERIOD,
            faults_per_day=2.0,
            nominal=nominal,
            rng=np.random.default_rng(seed),
        )

    faults = planned(1)
    assert faults == planned(1)
    assert faults != planned(2)
    assert len(faults) >= 20
    assert {f.machine for f in faults} == {2}
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    for f in faults:
        assert 1000 <= f.start < f.end <= 1000 + 30 * DAY
    for before, after in itertools.pairwise(faults):
        assert after.start - before.end >= MIN_FAULT_GAP_S / PERIOD


def test_no_faults_at_zero_rate() -> None:
    nominal = make_profiles(1, 0)[0].nominal()
    rng = np.random.default_rng(0)
    assert (
        plan_faults(
            machine=0,
            start=0,
            stop=5 * DAY,
            sample_period_s=PERIOD,
            faults_per_day=0.0,
            nominal=nominal,
            rng=rng,
        )
        == []
    )


# -- fault injection -----------------------------------------------------------------------


def inject(f: Fault, values: np.ndarray, held: float = 0.0) -> np.ndarray:
    nominal = make_profiles(1, 3)[0].nominal()
    return apply_faults(values, first_step=0, faults=[f], nominal=nominal, held={f: held})


def assert_only(changed: np.ndarray, clean: np.ndarray, f: Fault) -> None:
    """Outside [start, end) and outside the fault's channels nothing moved, to the bit."""
    outside = np.ones(len(clean), dtype=bool)
    outside[f.start : f.end] = False
    assert np.array_equal(changed[outside], clean[outside])
    others = [c for c in range(N_CHANNELS) if c not in f.channels]
    assert np.array_equal(changed[:, others], clean[:, others])


def test_bearing_wear_grows_vibration_and_temperature() -> None:
    clean = signal().generate(600)
    f = fault(FaultKind.BEARING_WEAR, 200, 500)
    faulty = inject(f, clean)
    assert_only(faulty, clean, f)
    assert f.channels == (VIBRATION, TEMPERATURE)
    late = slice(450, 500)
    assert faulty[late, VIBRATION].mean() > 2.0 * clean[late, VIBRATION].mean()
    assert faulty[late, TEMPERATURE].mean() > clean[late, TEMPERATURE].mean() + 8.0
    # A defect appears, then grows: early symptoms are a fraction of the late ones.
    early = slice(200, 230)
    early_rise = (faulty[early, TEMPERATURE] - clean[early, TEMPERATURE]).mean()
    late_rise = (faulty[late, TEMPERATURE] - clean[late, TEMPERATURE]).mean()
    assert 0.5 < early_rise < late_rise / 4


def test_cavitation_drops_and_roughens_flow_and_pressure() -> None:
    clean = signal().generate(600)
    f = fault(FaultKind.CAVITATION, 100, 300)
    faulty = inject(f, clean)
    assert_only(faulty, clean, f)
    during = slice(100, 300)
    assert faulty[during, FLOW].mean() < 0.9 * clean[during, FLOW].mean()
    assert faulty[during, PRESSURE].mean() < 0.85 * clean[during, PRESSURE].mean()
    noise_clean = np.diff(clean[during, PRESSURE]).std()
    assert np.diff(faulty[during, PRESSURE]).std() > 3.0 * noise_clean
    assert faulty[during, VIBRATION].mean() > 1.3 * clean[during, VIBRATION].mean()


def test_sensor_drift_is_a_linear_offset_on_one_channel() -> None:
    clean = signal().generate(400)
    f = fault(FaultKind.SENSOR_DRIFT, 100, 300, channel=TEMPERATURE, magnitude=-5.0)
    faulty = inject(f, clean)
    assert_only(faulty, clean, f)
    offset = faulty[100:300, TEMPERATURE] - clean[100:300, TEMPERATURE]
    assert np.allclose(offset, -5.0 * np.arange(200) / 200)


def test_stuck_sensor_holds_one_value() -> None:
    clean = signal().generate(400)
    f = fault(FaultKind.STUCK_SENSOR, 150, 250, channel=CURRENT)
    faulty = inject(f, clean, held=21.5)
    assert_only(faulty, clean, f)
    assert (faulty[150:250, CURRENT] == 21.5).all()


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_injection_does_not_depend_on_block_sizes(kind: FaultKind) -> None:
    clean = signal().generate(500)
    f = fault(kind, 120, 420, channel=PRESSURE, magnitude=1.1)
    nominal = make_profiles(1, 3)[0].nominal()
    held = {f: 3.0}
    whole = apply_faults(clean, first_step=0, faults=[f], nominal=nominal, held=held)
    parts = [
        apply_faults(clean[a:b], first_step=a, faults=[f], nominal=nominal, held=held)
        for a, b in ((0, 200), (200, 201), (201, 500))
    ]
    assert np.array_equal(whole, np.concatenate(parts))


# -- the plant and its ground truth --------------------------------------------------------


def test_plant_is_deterministic_and_block_independent() -> None:
    first = plant(3.0)
    whole = first.advance(3 * DAY)
    second = plant(3.0)
    split = np.concatenate([second.advance(DAY + 17), second.advance(2 * DAY - 17)], axis=1)
    assert whole.shape == (3, 3 * DAY, N_CHANNELS)
    assert first.faults == second.faults
    assert np.array_equal(whole, split)


def test_stuck_sensor_freezes_the_last_good_reading_across_blocks() -> None:
    p = plant(4.0, kinds=(FaultKind.STUCK_SENSOR,))
    p.advance(DAY // 2)  # the warm-up: planning starts after it
    assert p.faults == []
    first_block = p.advance(1)
    stuck = min((f for f in p.faults if f.machine == 0), key=lambda f: f.start)
    rest = p.advance(stuck.end + 10 - p.step)
    values = np.concatenate([first_block, rest], axis=1)[0]
    offset = DAY // 2
    frozen = values[stuck.start - offset : stuck.end - offset, stuck.channel]
    assert (frozen == values[stuck.start - offset - 1, stuck.channel]).all()
    assert values[stuck.end - offset, stuck.channel] != frozen[0]


def test_ground_truth_marks_exactly_where_the_signal_differs() -> None:
    healthy = plant(0.0).advance(4 * DAY)
    faulty_plant = plant(2.5)
    faulty = faulty_plant.advance(4 * DAY)
    # Planning runs a simulated day ahead: keep the faults that began within the run.
    faults = [f for f in faulty_plant.faults if f.start < 4 * DAY]
    assert len(faults) >= 6
    assert all(f.start >= DAY // 2 for f in faults)  # none during the warm-up
    expected = np.zeros(faulty.shape, dtype=bool)
    for f in faults:
        for channel in f.channels:
            expected[f.machine, f.start : f.end, channel] = True
    differs = faulty != healthy
    assert not differs[~expected].any()
    for f in faults:
        assert differs[f.machine, f.start : f.end].any(), f


def test_window_truth() -> None:
    f = fault(FaultKind.CAVITATION, 100, 200)
    g = fault(FaultKind.BEARING_WEAR, 300, 400)
    assert window_truth(0, 64, [f, g]) == (WindowTruth.NORMAL, None, 0.0)
    assert window_truth(200, 64, [f, g]) == (WindowTruth.NORMAL, None, 0.0)
    assert window_truth(50, 64, [f, g]) == (WindowTruth.PARTIAL, f, 14 / 64)
    assert window_truth(64, 64, [f, g]) == (WindowTruth.FAULT, f, 28 / 64)
    assert window_truth(120, 64, [f, g]) == (WindowTruth.FAULT, f, 1.0)
    assert window_truth(250, 64, [f, g]) == (WindowTruth.PARTIAL, g, 14 / 64)


# -- clock, parsing, counting ----------------------------------------------------------


def test_paced_stamps_never_run_ahead_of_the_wall() -> None:
    now, speed = 1_700_000_000.1234, 1440.0
    stamp0, period = stamp_clock(now, 4320, speed, PERIOD)
    assert (stamp0, period) == (round(now, 3), PERIOD / speed)
    # The driver emits step k once k * PERIOD / speed wall seconds have passed.
    steps = np.arange(4320)
    emitted_at = now + steps * PERIOD / speed
    assert (stamp0 + steps * period <= emitted_at + 1e-3).all()
    assert stamp_clock(now, None, 1.0, PERIOD) == (round(now, 3), PERIOD)  # real time, no end


def test_unpaced_stamps_backfill_up_to_now() -> None:
    now = 1_700_000_000.0
    stamp0, period = stamp_clock(now, 1000, 0.0, PERIOD)
    assert period == PERIOD and stamp0 % PERIOD == 0
    last = stamp0 + 999 * period
    assert now - PERIOD < last <= now
    with pytest.raises(ValueError):
        stamp_clock(now, None, 0.0, PERIOD)


def test_parse_duration_and_time() -> None:
    assert parse_duration("3d") == 3 * DAY_S
    assert parse_duration("36h") == 36 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("600") == parse_duration("600s") == 600
    assert parse_duration("forever") is None
    with pytest.raises(ValueError):
        parse_duration("three days")
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time("1970-01-01T00:01:00") == 60.0
    assert parse_time(60) == 60.0


def test_tally_precision_and_recall() -> None:
    tally = Tally(tp=6, fp=2, fn=3, tn=80, partial=4, faults_detected=3, faults_missed=1)
    assert tally.precision == 0.75
    assert tally.recall == 6 / 9
    assert tally.fault_recall == 0.75
    assert tally.scored == 95
    assert Tally().precision is None and Tally().recall is None


def test_alarm_level_tally_and_summary() -> None:
    tally = Tally(tp=6, fp=2, fn=3, alarm_events_true=3, alarm_events_false=1)
    assert tally.alarm_events == 4 and tally.alarm_precision == 0.75
    assert Tally().alarm_precision is None
    report = SimulationReport(steps=10, machines=[], faults=[], total=tally, events=[])
    assert "alarm event" not in summary(report)
    report.alarms_api = True
    assert "4 alarm event(s), 3 on a fault (precision 0.75)" in summary(report)


# -- the operator ------------------------------------------------------------------------


def test_an_alarm_is_on_the_fault_it_overlaps_by_a_quarter_window() -> None:
    faults = [fault(FaultKind.CAVITATION, 100, 200), fault(FaultKind.BEARING_WEAR, 300, 400)]
    assert alarm_truth(150, 170, faults, window_size=16).fault is faults[0]
    assert alarm_truth(380, 450, faults, window_size=16).fault is faults[1]
    assert alarm_truth(190, 320, faults, window_size=16).fault is faults[1], "the larger overlap"
    assert alarm_truth(220, 260, faults, window_size=16).fault is None, "healthy running"
    grazing = alarm_truth(197, 230, faults, window_size=16)  # 3 steps < 16 / 4
    assert grazing.fault is None and grazing.overlap == 3


def always() -> Operator:
    return Operator(OperatorPolicy(1.0, 1.0, 1.0), np.random.default_rng(0))


def never() -> Operator:
    return Operator(OperatorPolicy(0.0, 0.0, 0.0), np.random.default_rng(0))


def test_the_operator_judges_alarms_by_the_truth() -> None:
    wear = fault(FaultKind.BEARING_WEAR, 100, 200)
    on_fault = alarm_truth(120, 140, [wear], window_size=16)
    assert always().alarm(7, on_fault) == AlarmVerdict(7, "bearing_wear", "confirmed bearing_wear")
    healthy = alarm_truth(300, 320, [wear], window_size=16)
    assert always().alarm(8, healthy) == AlarmVerdict(8, "false_positive", "healthy running")
    assert never().alarm(7, on_fault) is None and never().alarm(8, healthy) is None


def test_the_operator_labels_windows_without_the_alarms_api() -> None:
    drift = fault(FaultKind.SENSOR_DRIFT, 100, 200, channel=FLOW)
    assert always().false_alarm_window("s1") == ScoreLabel("s1", "false_positive")
    assert always().missed_fault("s2") == ScoreLabel("s2", "false_negative")
    ranged = always().caught_fault(drift, seen_until=150, score_id="s3")
    assert ranged == RangeLabel(
        100, 149, "sensor_drift", "confirmed sensor_drift (flow) after alarm s3"
    )
    assert never().caught_fault(drift, seen_until=150, score_id="s3") is None
    assert never().false_alarm_window("s1") is None and never().missed_fault("s2") is None


# -- the command line ----------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(simulate_command)
    return app


def test_command_requires_a_key() -> None:
    result = CliRunner().invoke(cli(), [], env={"VIGIL_API_KEY": ""})
    assert result.exit_code == 2
    assert "VIGIL_API_KEY" in result.output


def test_command_rejects_a_bad_duration() -> None:
    result = CliRunner().invoke(cli(), ["--api-key", "k", "--duration", "soon"])
    assert result.exit_code == 2


def test_command_refuses_an_endless_unpaced_run() -> None:
    result = CliRunner().invoke(
        cli(), ["--api-key", "k", "--duration", "forever", "--speed", "0", "--ready-timeout", "0"]
    )
    assert result.exit_code == 1
    assert "needs --steps or --duration" in result.output


def test_command_refuses_a_speed_beyond_timestamp_resolution() -> None:
    result = CliRunner().invoke(
        cli(), ["--api-key", "k", "--speed", "1000000", "--ready-timeout", "0"]
    )
    assert result.exit_code == 1
    assert "points a second per pump" in result.output


def test_command_reports_an_unreachable_service() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    result = CliRunner().invoke(
        cli(), ["--api-key", "k", "--url", "http://127.0.0.1:9", "--ready-timeout", "0"]
    )
    assert result.exit_code == 1
    assert "not ready" in result.output

"""`vigil simulate`: the command line of the plant simulator."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from app.simulator.clock import parse_duration


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
            help="Play an operator who gives verdicts on alarms (labels faults, marks false "
            "alarms) and reports missed faults.",
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
    try:  # NOTE: imported here so that every other `vigil` command works without the client
        from vigil_client import Client

        from app.simulator.driver import Simulation, SimulationConfig, SimulatorError
        from app.simulator.report import summary
    except ImportError as exc:
        console.print(
            f"[red]vigil simulate needs vigil-client ({exc}): pip install ./clients/python "
            "from a Vigil checkout[/red]"
        )
        raise typer.Exit(2) from exc
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
    client = Client(url, api_key=api_key, headers={"User-Agent": "vigil-simulate"})
    try:
        report = Simulation(config, client=client, console=console).run()
    except SimulatorError as exc:
        console.print(f"[red]simulation stopped: {exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        client.close()
    console.print(summary(report))
    if report.interrupted:
        raise typer.Exit(130)

"""The `vigil` command line. Settings come from VIGIL_* environment variables.

Imports of the service are deferred into the commands: `serve` must set
PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from typing import Annotated, Any

import typer

cli = typer.Typer(
    name="vigil",
    help="Vigil: anomaly detection for multivariate sensor time series.",
    no_args_is_help=True,
    add_completion=False,
)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
models_cli = typer.Typer(help="Inspect and promote model versions.", no_args_is_help=True)
cli.add_typer(models_cli, name="models")

log = logging.getLogger("app.cli")

NEW_KEY_HINT = (
    "restart with VIGIL_BOOTSTRAP_ADMIN_KEY set to a random string of at least 24 characters "
    "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'), or create one with "
    "`vigil keys create --name me --scopes admin` (in .venv/bin/ of a source checkout)"
)


def _settings(**overrides: Any) -> Any:
    from app.config import Settings

    base = Settings()
    return base.model_copy(update={k: v for k, v in overrides.items() if v is not None})


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [VIGIL_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [VIGIL_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="API processes [VIGIL_WORKERS].")] = None,
) -> None:
    """Run the API (and, unless VIGIL_EMBEDDED_WORKER=false, a training worker beside it)."""
    settings = _settings(host=host, port=port, workers=workers)
    # Metrics are shared through files whenever more than one process serves or trains.
    if (settings.workers > 1 or settings.embedded_worker) and not os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR"
    ):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vigil-metrics-")
    os.environ.update(_settings_env(settings))

    import uvicorn

    from app.logs import configure, uvicorn_log_config

    configure(settings.log_level, settings.log_format)
    _announce(settings)
    worker_process = _start_embedded_worker() if settings.embedded_worker else None
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=uvicorn_log_config(settings.log_level, settings.log_format),
            timeout_graceful_shutdown=30,
        )
    finally:
        if worker_process is not None:
            _stop_process(worker_process)


def _announce(settings: Any) -> None:
    """Log where the API and its docs are, and what a first start still lacks."""
    from app.config import MIN_BOOTSTRAP_KEY_LENGTH
    from app.db.migrate import schema_state

    base = f"http://{_browsable_host(settings.host)}:{settings.port}"
    log.info("Vigil API at %s, interactive docs at %s/docs", base, base)
    key = settings.bootstrap_admin_key
    if key is not None and len(key) < MIN_BOOTSTRAP_KEY_LENGTH:
        log.warning(
            "VIGIL_BOOTSTRAP_ADMIN_KEY is shorter than %d characters: accepted in development, "
            "refused with VIGIL_ENVIRONMENT=production",
            MIN_BOOTSTRAP_KEY_LENGTH,
        )
    state = schema_state(settings.database_url)
    if not state.ready:
        log.error("%s", state.problem)
        return
    live, total = _key_counts(settings.database_url)
    if live == 0 and not (key and total == 0):
        log.warning(
            "no API key exists, so every /v1 request gets 401: %s",
            NEW_KEY_HINT if total == 0 else NEW_KEY_HINT.split(", or ", 1)[1],
        )


def _browsable_host(host: str) -> str:
    """The host part of a URL a browser on this machine can open (not 0.0.0.0)."""
    if host in {"", "0.0.0.0", "::"}:  # noqa: S104 (naming the wildcard, not binding it)
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _key_counts(url: str) -> tuple[int, int]:
    """(live, all) API keys in the database."""
    from sqlalchemy import func, select

    from app.db.models import ApiKey
    from app.db.session import make_engine

    engine = make_engine(url, role="cli")
    try:
        with engine.connect() as connection:
            live = connection.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
            )
            total = connection.scalar(select(func.count()).select_from(ApiKey))
    finally:
        engine.dispose()
    return int(live or 0), int(total or 0)


def _settings_env(settings: Any) -> dict[str, str]:
    """Command-line overrides, passed to uvicorn's worker processes through the environment."""
    return {
        "VIGIL_HOST": settings.host,
        "VIGIL_PORT": str(settings.port),
        "VIGIL_WORKERS": str(settings.workers),
    }


def _start_embedded_worker() -> Any:
    import multiprocessing

    # NOTE: a process, not a thread: training holds the GIL and torch's threads, and must
    # never slow down scoring. `spawn` gives it a clean interpreter.
    process = multiprocessing.get_context("spawn").Process(
        target=_embedded_worker_main, name="vigil-worker", daemon=False
    )
    process.start()
    return process


def _embedded_worker_main() -> None:
    from app.config import Settings
    from app.logs import configure
    from app.training.worker import Worker

    settings = Settings()
    configure(settings.log_level, settings.log_format)
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop_event.set())
    _follow_parent(worker.stop_event)
    worker.run_forever()


def _follow_parent(stop: Any, interval: float = 0.5) -> None:
    """Stop when `vigil serve` is gone, however it went.

    NOTE: uvicorn re-raises SIGTERM once it has shut down, so `serve` dies before it can
    stop this process; without this the worker would live on as an orphan.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _stop_process(process: Any, timeout: float = 60.0) -> None:
    if process.is_alive():
        process.terminate()  # SIGTERM: the worker finishes its epoch or hands back its job
        process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join(5)


@cli.command()
def worker() -> None:
    """Run a training worker (any number may run against Postgres)."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from prometheus_client import start_http_server

    from app.db.migrate import schema_state
    from app.logs import configure
    from app.training.worker import Worker

    settings = _settings()
    state = schema_state(settings.database_url)
    if state.reachable and not state.ready:  # an unreachable database is waited for
        _fail(state.problem)
    configure(settings.log_level, settings.log_format)
    runner = Worker(settings)  # before the metrics server, so its first scrape is complete
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stop_event.set())
    runner.run_forever()


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest migration."""
    from app.db.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    typer.echo("database is at the newest migration")


def _sessions() -> Any:
    """Sessions on a migrated database; otherwise a one-line error and exit status 1.

    NOTE: connecting to a SQLite file that does not exist creates it: `keys list` run from
    the wrong directory would leave an empty vigil.db there and fail on its missing tables.
    """
    from app.db.migrate import schema_state
    from app.db.session import make_engine, make_sessionmaker

    url = _settings().database_url
    state = schema_state(url)
    if not state.ready:
        _fail(state.problem)
    return make_sessionmaker(make_engine(url, role="cli"))


def _fail(message: str | None) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@models_cli.command("list")
def models_list(
    series_id: Annotated[int, typer.Argument(help="The series' id.")],
) -> None:
    """A series' model versions: status, what the job reported, and why a candidate waits."""
    from app.errors import VigilError
    from app.training.versions import list_versions

    try:
        with _sessions()() as session:
            listed = list_versions(session=session, series_id=series_id)
    except VigilError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    for v in listed.versions:
        trained = v.trained_at.isoformat()
        typer.echo(f"{v.version}\t{v.status}\t{trained}\t{v.note or ''}")


@models_cli.command("activate")
def models_activate(
    series_id: Annotated[int, typer.Argument(help="The series' id.")],
    version: Annotated[int, typer.Argument(help="The version to make active.")],
) -> None:
    """Promote a candidate (or roll back to an older version) by hand: what the promotion
    gate refused, an operator may still choose. Every API process serves it from its next
    request on."""
    from app.errors import VigilError
    from app.training.versions import activate_version

    try:
        with _sessions()() as session:
            out = activate_version(
                session=session, series_id=series_id, version=version, by="vigil models activate"
            )
    except VigilError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"series {series_id}: version {out.version} is active")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read, ingest, score, label, train, admin.")
    ],
    expires_in: Annotated[
        str | None,
        typer.Option(help="The key stops working after this long: 90d, 12h, 30m or 45s."),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(help="Comma-separated series ids: the only series the key may use."),
    ] = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from app.db.base import utcnow
    from app.db.session import transaction
    from app.errors import VigilError
    from app.security import create_key, parse_duration, parse_series_ids

    sessions = _sessions()
    try:
        expires_at = utcnow() + parse_duration(expires_in) if expires_in else None
        series_ids = None if series is None else parse_series_ids(series)
        with transaction(sessions) as session:
            record, plain = create_key(
                session=session,
                name=name,
                scopes=scopes.split(","),
                expires_at=expires_at,
                series_ids=series_ids,
            )
            expiry = f" expires={expires_at.isoformat()}" if expires_at else ""
            only = f" series={','.join(map(str, record.series_ids))}" if record.series_ids else ""
            typer.echo(f"id={record.id} scopes={','.join(record.scopes)}{expiry}{only}", err=True)
    except VigilError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(plain)


@keys_cli.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from app.db.base import utcnow
    from app.schemas.common import rfc3339
    from app.security import list_keys

    now = utcnow()
    with _sessions()() as session:
        for key in list_keys(session=session):
            if key.revoked_at:
                state = f"revoked {rfc3339(key.revoked_at)}"
            elif key.expires_at and key.expires_at <= now:
                state = f"expired {rfc3339(key.expires_at)}"
            elif key.expires_at:
                state = f"active, expires {rfc3339(key.expires_at)}"
            else:
                state = "active"
            if key.series_ids is not None:
                state += f", series {','.join(map(str, key.series_ids))} only"
            typer.echo(f"{key.id}\t{key.prefix}…\t{key.name}\t{','.join(key.scopes)}\t{state}")


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke a key; it stops working on its next request."""
    from app.db.session import transaction
    from app.errors import VigilError
    from app.security import revoke_key

    sessions = _sessions()
    try:
        with transaction(sessions) as session:
            revoke_key(session=session, key_id=key_id)
    except VigilError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"key {key_id} revoked")


def _register_simulator() -> None:
    from app.simulator.command import simulate_command

    cli.command(
        "simulate",
        help="Stream a simulated plant with injected faults into a running Vigil.",
    )(simulate_command)


_register_simulator()


def main() -> None:
    cli()

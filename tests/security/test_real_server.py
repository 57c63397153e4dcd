"""A real `vigil serve --workers 2` with DEBUG logs: a revoked key stops working at once in
every process, and no key or database password reaches the log."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.security import create_key, revoke_key
from tests.utils.proc import VIGIL, free_port, stop, vigil_env, wait_until_up

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

REQUESTS = 12


def test_revocation_holds_across_processes_and_logs_keep_no_secret(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    bootstrap = "boot-" + secrets.token_urlsafe(30)
    password = "Pa55-" + secrets.token_hex(8)
    # The shared server trusts loopback, so any password connects: it only has to stay unseen.
    with_password = database_url.replace("postgres@", f"postgres:{password}@", 1)
    assert password in with_password
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="vigil-secrets-")) / "serve.log"
    env = vigil_env(
        with_password,
        VIGIL_WORKERS="2",
        VIGIL_LOG_LEVEL="DEBUG",
        VIGIL_LOG_FORMAT="json",
        VIGIL_BOOTSTRAP_ADMIN_KEY=bootstrap,
    )
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*VIGIL, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(base, process, log_path)
            # After start-up: the bootstrap key is only created while no key exists.
            with sessions() as session, session.begin():
                record, reader = create_key(session=session, name="reader", scopes=["read"])
            as_reader = {"Authorization": f"Bearer {reader}"}
            # A new connection per request, so that both processes take some of them.
            before = [
                httpx.get(f"{base}/v1/series", headers=as_reader, timeout=10).status_code
                for _ in range(REQUESTS)
            ]
            with sessions() as session, session.begin():
                revoke_key(session=session, key_id=record.id)
            after = [
                httpx.get(f"{base}/v1/series", headers=as_reader, timeout=10).status_code
                for _ in range(REQUESTS)
            ]
            as_admin = {"Authorization": f"Bearer {bootstrap}"}
            others = [
                httpx.get(f"{base}/v1/series", headers=as_admin, timeout=10),
                httpx.post(f"{base}/v1/series", json={}, headers=as_admin, timeout=10),
                httpx.get(f"{base}/v1/series", headers={"Authorization": "Bearer nope"}),
                httpx.get(f"{base}/readyz", timeout=10),
            ]
        finally:
            stop(process)
    logged = log_path.read_text()
    os.unlink(log_path)
    assert before == [200] * REQUESTS
    assert after == [401] * REQUESTS
    assert [r.status_code for r in others] == [200, 422, 401, 200]
    assert logged.count("Started server process") >= 2, logged[-2000:]
    for response in others:
        assert bootstrap not in response.text and password not in response.text
    for secret in (bootstrap, reader, password):
        assert secret not in logged, f"{secret[:6]}… is in the log"
        assert secret[12:] not in logged

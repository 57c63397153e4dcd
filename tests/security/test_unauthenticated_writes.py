"""A request without a valid key writes nothing, not even an idempotency record.

Found by the long fuzz run (benchmarks/fuzz/run.py): FastAPI parses a JSON body before the
key is checked, so a malformed body gets 422 before 401, and app/idempotency.py used to
remember that 422 under the Idempotency-Key for 24 h: anyone, without a key, could fill the
idempotency_keys table. It now remembers only responses to authenticated requests.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import IdempotencyRecord

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_unauthenticated_requests_leave_no_idempotency_record(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    for index, authorization in enumerate([None, "Bearer not-a-key", "Basic eDp5"]):
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"spam-{index}"}
        if authorization:
            headers["Authorization"] = authorization
        for body in (b"{", b"[" * 10_000):
            response = client.post("/v1/labels", content=body, headers=headers)
            assert response.status_code in (401, 422)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0

"""The batched API-key lookup (revocation still takes effect on the next request), the bulk
histogram update, and the per-model threshold cache."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.metrics import observe_many
from app.runtime import KeyLookup, Principal
from app.security import create_key, revoke_key


def _key(sessions: sessionmaker[Session], *scopes: str) -> tuple[int, str]:
    with sessions() as session, session.begin():
        record, plain = create_key(session=session, name="k", scopes=scopes or ("score",))
        return record.id, plain


def test_concurrent_lookups_share_one_query(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    _, first = _key(sessions, "score")
    _, second = _key(sessions, "read", "ingest")

    async def run() -> tuple[list[object], int]:
        keys = KeyLookup(engine)
        # The first lookup starts a query at once; the 19 that arrive meanwhile share the next.
        found = await asyncio.gather(
            *(keys.authenticate(k) for k in [first, second, "vgl_unknown"] * 6 + [first])
        )
        await keys.close()
        return list(found), keys.queries

    found, queries = asyncio.run(run())
    assert queries <= 2
    assert [getattr(p, "scopes", None) for p in found[:3]] == [("score",), ("ingest", "read"), None]
    assert found[-1] == found[0]


def test_a_key_revoked_while_a_lookup_runs_fails_the_next_request(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    key_id, plain = _key(sessions, "score")
    started, release = threading.Event(), threading.Event()

    class Slow(KeyLookup):
        async def _lookup(self, digests: list[str]) -> dict[str, Principal]:
            result = await super()._lookup(digests)
            if self.queries == 1:
                started.set()
                await asyncio.to_thread(release.wait, 5)
            return result

    async def run() -> tuple[object, object]:
        keys = Slow(engine)
        earlier = asyncio.ensure_future(keys.authenticate(plain))
        await asyncio.to_thread(started.wait, 5)  # its query has read the key: still live
        with sessions() as session, session.begin():
            revoke_key(session=session, key_id=key_id)
        later = asyncio.ensure_future(keys.authenticate(plain))  # arrives after the revocation
        release.set()
        result = await earlier, await later
        await keys.close()
        return result

    earlier, later = asyncio.run(run())
    assert earlier is not None
    assert later is None  # it did not ride on the query that started before it arrived


def test_observe_many_matches_observe_one_by_one() -> None:
    values = np.array([0.05, 0.1, 0.3, 2.0, 7.5, 100.0, 0.1, 3.0])
    buckets = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("h", "h", ["s"], buckets=buckets, registry=one)
    h_many = Histogram("h", "h", ["s"], buckets=buckets, registry=many)
    few = np.array([0.3, 9.0])  # the path for a handful of values (one-window requests)
    for value in [*values.tolist(), *few.tolist()]:
        h_one.labels("a").observe(value)
    observe_many(h_many.labels("a"), values)
    observe_many(h_many.labels("a"), few)
    observe_many(h_many.labels("a"), np.array([]))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for m in registry.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        }

    assert samples(many) == pytest.approx(samples(one))
    assert samples(many)[("h_count", "")] == len(values) + len(few)


def test_a_broken_lookup_connection_is_replaced_without_failing_a_request(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """The lookup keeps one connection between queries; when it breaks (a database restart,
    a cut network) the next lookup opens another and answers, instead of failing with 503."""
    _, plain = _key(sessions, "score")

    async def run() -> tuple[object, object, object]:
        keys = KeyLookup(engine)
        assert await keys.authenticate(plain) is not None
        held = keys._aconnection if keys._postgres else keys._connection
        assert held is not None
        if keys._postgres:  # the server ends the session, as a restart would
            with engine.connect() as other:
                other.execute(
                    text("SELECT pg_terminate_backend(:pid)"), {"pid": held.info.backend_pid}
                )
        else:
            held.connection.dbapi_connection.close()
        found = await keys.authenticate(plain)
        now = keys._aconnection if keys._postgres else keys._connection
        await keys.close()
        return found, held, now

    found, held, now = asyncio.run(run())
    assert found is not None
    assert now is not None and now is not held

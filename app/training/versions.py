"""Model versions: listing, and activation (promotion or rollback) in one transaction,
one activation of a series at a time."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import MODEL_ACTIVE, MODEL_RETIRED, Activations, ModelVersion, Series
from app.detection import events
from app.errors import Conflict, NotFound, SeriesNotFound
from app.schemas.jobs import ModelVersionList, ModelVersionOut
from app.schemas.paging import decode_cursor, page_of

_LISTED = (
    ModelVersion.series_id,
    ModelVersion.version,
    ModelVersion.status,
    ModelVersion.metrics,
    ModelVersion.note,
    ModelVersion.sha256,
    ModelVersion.job_id,
    ModelVersion.trained_at,
    ModelVersion.activated_at,
)


def _out(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        series_id=row.series_id,
        version=row.version,
        status=row.status,  # type: ignore[arg-type]
        active=row.status == MODEL_ACTIVE,
        metrics=row.metrics,
        note=row.note,
        sha256=row.sha256,
        job_id=row.job_id,
        trained_at=row.trained_at,
        activated_at=row.activated_at,
    )


def list_versions(
    *, session: Session, series_id: int, limit: int = 100, cursor: str | None = None
) -> ModelVersionList:
    """A page of the series' versions, oldest first, and the cursor of the next."""
    if session.get(Series, series_id) is None:
        raise SeriesNotFound(series_id)
    after = decode_cursor(cursor, arity=1)
    query = select(*_LISTED).where(ModelVersion.series_id == series_id)
    if after is not None:
        query = query.where(ModelVersion.version > int(after[0]))
    rows = session.execute(query.order_by(ModelVersion.version).limit(limit + 1)).all()
    page, next_cursor = page_of(rows, limit=limit, key=lambda row: (row.version,))
    versions = [_out(row) for row in page]  # type: ignore[arg-type]
    active = session.scalar(
        select(ModelVersion.version).where(
            ModelVersion.series_id == series_id, ModelVersion.status == MODEL_ACTIVE
        )
    )
    return ModelVersionList(
        series_id=series_id, active_version=active, versions=versions, next_cursor=next_cursor
    )


def activate_version(*, session: Session, series_id: int, version: int, by: str) -> ModelVersionOut:
    """Make `version` the series' active one, serialised with every other activation of the
    series: concurrent calls take turns, the last one wins, and none fails."""
    lock_series(session=session, series_id=series_id)
    target = session.scalar(
        select(ModelVersion).where(
            ModelVersion.series_id == series_id, ModelVersion.version == version
        )
    )
    if target is None:
        raise NotFound(f"series {series_id} has no model version {version}")
    if target.status != MODEL_ACTIVE:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.series_id == series_id, ModelVersion.status == MODEL_ACTIVE)
            .values(status=MODEL_RETIRED)
        )
        session.flush()
        target.status = MODEL_ACTIVE
        target.activated_at = utcnow()
        target.note = f"activated by {by}"
        count_activation(session)
        events.emit(
            session=session,
            event=events.MODEL_ACTIVATED,
            data={
                "series_id": series_id,
                "version": version,
                "activated_at": target.activated_at,
                "by": by,
            },
        )
    try:
        session.commit()
    except IntegrityError:
        # Only a writer that does not take the series lock (a training worker storing an
        # active version) can get here: the database kept one active version; say so.
        session.rollback()
        raise Conflict(
            f"another model version of series {series_id} was activated at the same moment; retry"
        ) from None
    return _out(target)


def lock_series(*, session: Session, series_id: int) -> None:
    """Take the series' row lock until commit (Postgres), or the database's write lock
    (SQLite, whose writers take turns): 404 if the series does not exist.

    NOTE: without it, two activations on Postgres each retired the active version they saw
    and activated their own: the second commit broke the one-active-version index (500).
    The lock is FOR NO KEY UPDATE, which serialises activations (and waits for labels'
    counter updates) but not the foreign-key checks of rows written meanwhile (points,
    labels, scores take FOR KEY SHARE on the series): ingestion never waits for a version
    being stored. Deleting the series (FOR UPDATE) still waits for it.
    """
    if session.get_bind().dialect.name == "postgresql":
        found = session.scalar(
            select(Series.id).where(Series.id == series_id).with_for_update(key_share=True)
        )
    else:
        result = session.execute(
            update(Series)
            .where(Series.id == series_id)
            .values(updated_at=Series.updated_at)
            .execution_options(synchronize_session=False)
        )
        found = series_id if result.rowcount else None  # type: ignore[attr-defined]
    if found is None:
        raise SeriesNotFound(series_id)


def count_activation(session: Session) -> None:
    """Bump the activation generation in the caller's transaction (see db/models.py
    Activations): API processes re-read active versions before their next request."""
    session.execute(
        update(Activations).where(Activations.id == 1).values(generation=Activations.generation + 1)
    )

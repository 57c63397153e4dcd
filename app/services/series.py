"""Series: creation, lookup and the few changes a trained model can live with."""

from __future__ import annotations

from sqlalchemy import Table, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import Base
from app.db.models import Series
from app.errors import Conflict, InvalidInput, SeriesNotFound
from app.schemas.common import BUILTIN_CLASSES
from app.schemas.paging import decode_cursor, page_of
from app.schemas.series import MAX_USER_CLASSES, SeriesCreate, SeriesUpdate
from app.services.audit import audit
from app.training.versions import count_activation

MAX_CLASSES = MAX_USER_CLASSES + len(BUILTIN_CLASSES)


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a series named {name!r} already exists")


def create_series(*, session: Session, spec: SeriesCreate) -> Series:
    """Store a new series with the built-in classes merged into its classes; 409 on a taken name."""
    if session.scalar(select(Series.id).where(Series.name == spec.name)) is not None:
        raise _name_taken(spec.name)
    series = Series(
        name=spec.name,
        channels=list(spec.channels),
        window_size=spec.window_size,
        stride=spec.stride,
        classes={**BUILTIN_CLASSES, **spec.classes},
        threshold_quantile=spec.threshold_quantile,
        labels_since_train=0,
        training=spec.training.model_dump(exclude_none=True) if spec.training else None,
        max_gap=spec.max_gap,
        detect=spec.detect,
        alarm_merge_gap=spec.alarm_merge_gap,
    )
    try:
        with session.begin_nested():
            session.add(series)
    except IntegrityError:
        # Another request took the name between the check and the insert.
        raise _name_taken(spec.name) from None
    session.commit()
    return series


def get_series(*, session: Session, series_id: int) -> Series:
    series = session.get(Series, series_id)
    if series is None:
        raise SeriesNotFound(series_id)
    return series


def list_series(
    *,
    session: Session,
    limit: int,
    cursor: str | None = None,
    offset: int = 0,
    only: frozenset[int] | None = None,
) -> tuple[list[Series], str | None]:
    """A page of series by id, and the cursor of the next; with `only`, just those."""
    after = decode_cursor(cursor, arity=1)
    query = select(Series).order_by(Series.id).limit(limit + 1).offset(offset)
    if after is not None:
        query = query.where(Series.id > int(after[0]))
    if only is not None:
        query = query.where(Series.id.in_(sorted(only)))
    return page_of(list(session.scalars(query)), limit=limit, key=lambda s: (s.id,))


def owned_tables() -> list[Table]:
    """Every table whose rows belong to a series (a foreign key to series.id): a deleted
    series takes their rows with it (ON DELETE CASCADE)."""
    return [
        table
        for table in Base.metadata.sorted_tables
        if any(fk.column.table.name == "series" for fk in table.foreign_keys)
    ]


def delete_series(*, session: Session, series_id: int, key_id: int | None) -> dict[str, int]:
    """Delete the series and everything it owns (points, labels, scores, jobs, model
    versions, ...) in one transaction, with an audit record of the rows removed per table.

    A training job of the series that is running meanwhile loses its job row with the rest:
    its worker finds the lease gone and drops its result (app/training/worker.py), and the
    model version it would store could not refer to the series anyway (foreign key).
    """
    query = select(Series).where(Series.id == series_id)
    if session.get_bind().dialect.name == "postgresql":
        # NOTE: removing a long history takes as long as it takes: the API's statement timeout
        # (VIGIL_DB_STATEMENT_TIMEOUT_SECONDS) would refuse it on every retry. Lock waits stay
        # bounded by the lock timeout.
        session.execute(text("SET LOCAL statement_timeout = 0"))
        query = query.with_for_update()  # waits for a version being stored right now
    series = session.scalar(query)
    if series is None:
        raise SeriesNotFound(series_id)
    removed = {
        table.name: int(
            session.scalar(
                select(func.count()).select_from(table).where(table.c.series_id == series_id)
            )
            or 0
        )
        for table in owned_tables()
    }
    name = series.name
    session.execute(delete(Series).where(Series.id == series_id))
    count_activation(session)  # every API process's registry forgets it
    audit(
        session=session,
        key_id=key_id,
        action="series.delete",
        target=f"series/{series_id}",
        detail={"name": name, "rows": removed},
    )
    session.commit()
    return removed


def update_series(*, session: Session, series_id: int, update: SeriesUpdate) -> Series:
    """Add classes and/or change the threshold quantile.

    A class's kind decides how trained models use its windows, so existing classes can be
    repeated with their kind but neither changed nor removed (409).
    """
    series = get_series(session=session, series_id=series_id)
    if update.classes:
        classes = dict(series.classes)
        for name, kind in update.classes.items():
            current = classes.get(name)
            if kind is None:
                raise Conflict(
                    f"class {name!r} cannot be removed: labels and trained models of series "
                    f"{series.name!r} refer to their classes"
                )
            if current is not None and current != kind:
                raise Conflict(
                    f"class {name!r} of series {series.name!r} has kind {current!r}; changing "
                    f"it to {kind!r} would invalidate its trained models. Add a new class instead"
                )
            classes[name] = kind
        if len(classes) > MAX_CLASSES:
            raise InvalidInput(
                f"a series may have at most {MAX_CLASSES} classes (built-in ones included); "
                f"this update would give it {len(classes)}",
                field="classes",
            )
        if classes != series.classes:
            series.classes = classes
    if (
        update.threshold_quantile is not None
        and update.threshold_quantile != series.threshold_quantile
    ):
        series.threshold_quantile = update.threshold_quantile
    if update.training is not None:
        series.training = update.training.model_dump(exclude_none=True) or None
    if update.reset_max_gap:
        if update.max_gap is not None:
            raise InvalidInput("send either max_gap or reset_max_gap, not both", field="max_gap")
        series.max_gap = None
    elif update.max_gap is not None and update.max_gap != series.max_gap:
        series.max_gap = update.max_gap
    if update.detect is not None and update.detect != series.detect:
        series.detect = update.detect
    if update.alarm_merge_gap is not None and update.alarm_merge_gap != series.alarm_merge_gap:
        series.alarm_merge_gap = update.alarm_merge_gap
    if session.is_modified(series):
        count_activation(session)  # every API process's registry re-reads the series
    session.commit()
    return series

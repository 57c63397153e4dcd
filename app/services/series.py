"""Series: creation, lookup and the few changes a trained model can live with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Series
from app.errors import Conflict, InvalidInput, SeriesNotFound
from app.schemas.common import BUILTIN_CLASSES
from app.schemas.series import MAX_USER_CLASSES, SeriesCreate, SeriesUpdate

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
    *, session: Session, limit: int, offset: int, only: frozenset[int] | None = None
) -> list[Series]:
    """Series by id; with `only`, just those among them."""
    query = select(Series).order_by(Series.id).limit(limit).offset(offset)
    if only is not None:
        query = query.where(Series.id.in_(sorted(only)))
    return list(session.scalars(query))


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
    if update.detect is not None and update.detect != series.detect:
        series.detect = update.detect
    if update.alarm_merge_gap is not None and update.alarm_merge_gap != series.alarm_merge_gap:
        series.alarm_merge_gap = update.alarm_merge_gap
    session.commit()
    return series

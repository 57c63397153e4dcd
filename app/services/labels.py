"""Labels: time ranges and score feedback, the retrain trigger, and soft deletion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job, Label, Point, ScoreRecord, Series
from app.errors import InvalidInput, NotFound
from app.metrics import FEEDBACK, LABELS
from app.schemas.common import FEEDBACK_CLASSES, naive_warning
from app.schemas.labels import RangeLabelCreate, ScoreLabelCreate
from app.schemas.paging import decode_cursor, page_of
from app.services.series import get_series
from app.training.jobs import arm_retrain
from models import FALSE_NEGATIVE, FALSE_POSITIVE


@dataclass(frozen=True)
class LabelCreated:
    label: Label
    retrain_job: Job | None
    """The retrain this label queued or joined (it waits for quiet: services/jobs.py)."""
    points: int | None = None
    """Stored points in a range label's range (None for feedback on a score)."""
    windows: int | None = None
    """Windows of the series those points hold."""
    warnings: tuple[str, ...] = ()


def create_label(
    *,
    session: Session,
    spec: RangeLabelCreate | ScoreLabelCreate,
    settings: Settings,
    flush_scores: Callable[[], object],
    check_series: Callable[[int], None],
    before_commit: Callable[[Label, Job | None], None] | None = None,
) -> LabelCreated:
    """Store a range label or score feedback; queue a retrain after enough new labels.

    `flush_scores` writes the scored windows still buffered in this process, so that feedback
    on a score made a moment ago finds it. `check_series` raises if the caller may not label
    the series (checked before anything is written). `before_commit` lets a caller record
    its own changes in the same transaction (an alarm's verdict: app/detection/alarms.py).
    """
    points = windows = None
    warnings: list[str] = []
    if isinstance(spec, ScoreLabelCreate):
        score = _find_score(session=session, spec=spec, flush_scores=flush_scores)
        series = get_series(session=session, series_id=score.series_id)
        label = Label(
            series_id=series.id,
            start_ts=score.start_ts,
            end_ts=score.end_ts,
            score_id=score.id,
            model_version=score.model_version,
        )
        warnings.extend(_feedback_warnings(score, spec.label))
    else:
        series = get_series(session=session, series_id=spec.series_id)
        label = Label(series_id=series.id, start_ts=spec.start, end_ts=spec.end)
        points = _points_between(session, series.id, spec.start, spec.end)
        windows = window_count(points, window_size=series.window_size, stride=series.stride)
        if points == 0:
            warnings.append(
                "the range holds no stored points yet, so this label teaches the model nothing "
                "until points in it are ingested (check the range and its time zone)"
            )
        if spec.naive_fields:
            subject = " and ".join(spec.naive_fields)
            warnings.append(naive_warning(subject, plural=len(spec.naive_fields) > 1))
    check_series(series.id)
    _check_class(series, spec.label)
    label.label = spec.label
    label.author = spec.author
    label.note = spec.note
    session.add(label)
    job = _count_towards_retrain(session=session, series=series, settings=settings)
    if job is not None:
        session.flush()
        label.job_id = job.id
    if before_commit is not None:
        before_commit(label, job)
    session.commit()
    LABELS.labels(series=series.name, label=label.label).inc()
    if label.label in FEEDBACK_CLASSES:
        version = "none" if label.model_version is None else str(label.model_version)
        FEEDBACK.labels(series=series.name, model_version=version, kind=label.label).inc()
    return LabelCreated(
        label=label, retrain_job=job, points=points, windows=windows, warnings=tuple(warnings)
    )


def window_count(points: int, *, window_size: int, stride: int) -> int:
    """Windows cut from `points` consecutive points: len(app.training.cut_windows(...))."""
    return 0 if points < window_size else (points - window_size) // stride + 1


def _points_between(session: Session, series_id: int, start: int, end: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Point)
            .where(Point.series_id == series_id, Point.ts >= start, Point.ts <= end)
        )
        or 0
    )


def _feedback_warnings(score: ScoreRecord, label: str) -> list[str]:
    """Feedback that contradicts nothing the model said is kept, and said to be odd."""
    if label == FALSE_POSITIVE and not score.is_anomaly:
        return [
            f"score {score.id} raised no alarm (adjusted score {score.adjusted_score:.4g} was "
            "not above the threshold), so there was no false alarm to mark; the label is kept "
            "and teaches the model that windows like it are normal"
        ]
    if label == FALSE_NEGATIVE and score.is_anomaly:
        return [
            f"score {score.id} raised an alarm, so no fault was missed; the label is kept and "
            "teaches the model that windows like it are anomalies"
        ]
    return []


def _find_score(
    *, session: Session, spec: ScoreLabelCreate, flush_scores: Callable[[], object]
) -> ScoreRecord:
    score = session.get(ScoreRecord, spec.score_id)
    if score is None:
        flush_scores()
        score = session.get(ScoreRecord, spec.score_id)
    if score is None:
        raise NotFound(f"score {spec.score_id} is unknown or has expired")
    if spec.series_id is not None and spec.series_id != score.series_id:
        raise InvalidInput(
            f"score {spec.score_id} belongs to series {score.series_id}, not {spec.series_id}",
            field="series_id",
        )
    return score


def _check_class(series: Series, label: str) -> None:
    if label not in series.classes:
        known = ", ".join(sorted(series.classes))
        raise InvalidInput(
            f"{label!r} is not a class of series {series.name!r}; valid classes: {known}. "
            "Add classes with PATCH /v1/series/{id}",
            field="label",
        )


def _count_towards_retrain(*, session: Session, series: Series, settings: Settings) -> Job | None:
    # An atomic increment: concurrent labels on one series must not lose counts. updated_at is
    # kept as it is, because labelling does not change the series' definition.
    count = session.execute(
        update(Series)
        .where(Series.id == series.id)
        .values(labels_since_train=Series.labels_since_train + 1, updated_at=Series.updated_at)
        .returning(Series.labels_since_train)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    session.expire(series, ["labels_since_train"])
    return arm_retrain(session=session, series=series, settings=settings, count=count)


def list_labels(
    *,
    session: Session,
    series_id: int | None,
    label: str | None,
    include_deleted: bool,
    limit: int,
    cursor: str | None = None,
    offset: int = 0,
    only: frozenset[int] | None = None,
) -> tuple[list[Label], str | None]:
    """A page of labels by id and the cursor of the next; with `only`, just those of these
    series."""
    after = decode_cursor(cursor, arity=1)
    query = select(Label)
    if after is not None:
        query = query.where(Label.id > int(after[0]))
    if only is not None:
        query = query.where(Label.series_id.in_(sorted(only)))
    if series_id is not None:
        get_series(session=session, series_id=series_id)
        query = query.where(Label.series_id == series_id)
    if label is not None:
        query = query.where(Label.label == label)
    if not include_deleted:
        query = query.where(Label.deleted_at.is_(None))
    rows = list(session.scalars(query.order_by(Label.id).limit(limit + 1).offset(offset)))
    return page_of(rows, limit=limit, key=lambda item: (item.id,))


def retrain_jobs(*, session: Session, labels: Sequence[Label]) -> dict[int, Job]:
    """The retrain jobs these labels queued or joined, by id, in one query."""
    ids = {label.job_id for label in labels if label.job_id is not None}
    if not ids:
        return {}
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}


def get_label(*, session: Session, label_id: int) -> Label:
    """A label, deleted or not (deleted ones stay readable for audit)."""
    label = session.get(Label, label_id)
    if label is None:
        raise NotFound(f"label {label_id} does not exist")
    return label


def delete_label(*, session: Session, label_id: int) -> Label:
    """Soft-delete a label (kept for audit). Deleting it again changes nothing: idempotent."""
    label = get_label(session=session, label_id=label_id)
    if label.deleted_at is None:
        label.deleted_at = utcnow()
        session.commit()
    return label

"""Labels: time ranges and score feedback (scope `label`), listing (scope `read`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Labeller, Reader, RuntimeDep, SessionDep
from app.schemas.common import (
    AUTH_RESPONSES,
    IDEMPOTENCY_KEY_PARAMETER,
    IDEMPOTENCY_RESPONSES,
    MAX_DB_ID,
    SLUG_PATTERN,
    LabelIdPath,
)
from app.schemas.labels import LabelCreate, LabelCreatedOut, LabelOut, LabelPage
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.services.labels import (
    create_label,
    delete_label,
    get_label,
    list_labels,
    retrain_jobs,
)

router = APIRouter(prefix="/v1", tags=["labels"], responses=AUTH_RESPONSES)


@router.post(
    "/labels",
    status_code=status.HTTP_201_CREATED,
    summary="Label a time range, or give feedback on a scored window",
    description=(
        'Either `{"series_id", "start", "end", "label"}` labels the time range [start, end] '
        'with a class of the series, or `{"score_id", "label"}` labels the window of a '
        "score: `false_positive` (an alarm that was wrong), `false_negative` (a missed "
        "fault) or any class of the series. On a series with an active model, a label arms "
        "a retrain (after `VIGIL_RETRAIN_AFTER_LABELS` new labels) that starts once no "
        "label has arrived for `VIGIL_RETRAIN_QUIET_SECONDS`, so a batch of verdicts trains "
        "one version with all of them; `retrain` in the answer names that job. Send an "
        "`Idempotency-Key` to make a retry safe. "
        "The response adds the stored points and windows a range covers and `warnings`: a "
        "range with no stored points, times without a UTC offset (taken as UTC), or feedback "
        "that contradicts nothing the model said are accepted, and said to be."
    ),
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
    responses={
        404: {"description": "The series or the score does not exist (or the score expired)"},
        **IDEMPOTENCY_RESPONSES,
        422: {
            "description": (
                "Invalid input, e.g. a label that is not a class of the series, or an "
                "Idempotency-Key reused for another request"
            )
        },
    },
)
def create(
    body: LabelCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    key: Labeller,
) -> LabelCreatedOut:
    created = create_label(
        session=session,
        spec=body,
        settings=runtime.settings,
        flush_scores=runtime.flush_scores,
        check_series=key.require_series,
    )
    response.headers["Location"] = f"/v1/labels/{created.label.id}"
    return LabelCreatedOut.of(
        created.label,
        created.retrain_job,
        points=created.points,
        windows=created.windows,
        warnings=list(created.warnings),
    )


@router.get(
    "/labels",
    summary="List labels, oldest first",
    description=(
        "A page of `limit` labels and `next_cursor`: pass it as `cursor` for the next page "
        "(null: no more). `offset` is deprecated (use the cursor)."
    ),
    responses={404: {"description": "The series named by `series_id` does not exist"}},
)
def list_all(
    session: SessionDep,
    key: Reader,
    series_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
    label: Annotated[str | None, Query(pattern=SLUG_PATTERN, description="A class name")] = None,
    include_deleted: bool = False,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_ID, deprecated=True)] = 0,
) -> LabelPage:
    if series_id is not None:
        key.require_series(series_id)
    found, next_cursor = list_labels(
        session=session,
        series_id=series_id,
        label=label,
        include_deleted=include_deleted,
        limit=limit,
        cursor=cursor,
        offset=offset,
        only=key.series,
    )
    jobs = retrain_jobs(session=session, labels=found)
    return LabelPage(
        labels=[LabelOut.of(item, jobs.get(item.job_id or 0)) for item in found],
        next_cursor=next_cursor,
    )


@router.get(
    "/labels/{label_id}",
    summary="Read a label (deleted ones too, with `deleted_at` set)",
    responses={404: {"description": "The label does not exist"}},
)
def read(label_id: LabelIdPath, session: SessionDep, key: Reader) -> LabelOut:
    label = get_label(session=session, label_id=label_id)
    key.require_series(label.series_id)
    return LabelOut.of(label, retrain_jobs(session=session, labels=[label]).get(label.job_id or 0))


@router.delete(
    "/labels/{label_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a label (soft: kept for audit, no longer used for training)",
    description="Idempotent: deleting a deleted label again also gives 204.",
    responses={404: {"description": "The label does not exist"}},
)
def delete(label_id: LabelIdPath, session: SessionDep, key: Labeller) -> Response:
    key.require_series(get_label(session=session, label_id=label_id).series_id)
    delete_label(session=session, label_id=label_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

"""Model versions of a series: list them, and promote or roll back."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Reader, RuntimeDep, SessionDep, Trainer
from app.schemas.common import AUTH_RESPONSES, SeriesIdPath, VersionPath
from app.schemas.jobs import ModelVersionList, ModelVersionOut
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.training.versions import activate_version, list_versions

router = APIRouter(
    prefix="/v1/series/{series_id}/models", tags=["models"], responses=AUTH_RESPONSES
)


@router.get(
    "",
    summary="The series' model versions with their metrics; which one is active",
    description=(
        "A page of `limit` versions, oldest first, and `next_cursor`: pass it as `cursor` "
        "for the next page (null: no more). `active_version` is the series' active one, "
        "whichever page it is on."
    ),
    responses={404: {"description": "The series does not exist"}},
)
def read_versions(
    series_id: SeriesIdPath,
    session: SessionDep,
    _: Reader,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> ModelVersionList:
    return list_versions(session=session, series_id=series_id, limit=limit, cursor=cursor)


@router.post(
    "/{version}/activate",
    summary="Make a version the active one (promote a candidate or roll back)",
    description=(
        "Retires the active version and activates this one in one transaction; every API "
        "process scores with it within `VIGIL_MODEL_POLL_SECONDS`. Activating the active "
        "version changes nothing."
    ),
    responses={404: {"description": "The series or the version does not exist"}},
)
def activate(
    series_id: SeriesIdPath,
    version: VersionPath,
    session: SessionDep,
    runtime: RuntimeDep,
    key: Trainer,
) -> ModelVersionOut:
    out = activate_version(
        session=session, series_id=series_id, version=version, by=f"API key {key.name!r}"
    )
    runtime.registry.forget_active(series_id)
    return out

"""Scoring: windows in the body (JSON or binary), or a stored time range."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import RuntimeDep, Scorer
from app.schemas.common import MAX_DB_ID
from app.schemas.score_codecs import SHAPE_PATTERN, detail_steps
from app.schemas.scores import ScoreRangeRequest, ScoreResponse, ScoreWindowsRequest
from app.scoring.service import score_body

router = APIRouter(prefix="/v1", tags=["scores"])


_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    ScoreWindowsRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                    ScoreRangeRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                ]
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": (
                "Little-endian float32 windows, C order. Headers: `X-Vigil-Series-Id` and "
                "`X-Vigil-Shape: N,T,F`."
            ),
        },
    },
}


_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "detail",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["steps"]},
        "description": "`steps`: also return each window's per-step contributions.",
    },
    {
        "name": "X-Vigil-Series-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DB_ID},
        "description": "With a binary body (required then): the series whose model scores it.",
    },
    {
        "name": "X-Vigil-Shape",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": SHAPE_PATTERN},
        "description": "With a binary body (required then): `N,T,F`, windows × steps × channels.",
    },
]


@router.post(
    "/score",
    summary="Score windows with the series' active model",
    description=(
        'Send windows (`{"series_id", "windows"}`, or a binary body for high rates), or '
        '`{"series_id", "start", "end"}` to score the stored windows in that range, cut as '
        "training cuts them: never across a gap longer than the series' `max_gap`. A range "
        "answers at most `VIGIL_MAX_SCORE_WINDOWS` windows and `next_cursor`: send it back "
        "as `cursor` with the same range for the next page (null: done). A stored window "
        "with more than `VIGIL_MAX_MISSING_FRACTION` of its values missing comes back with "
        "`scored: false` and no score; the others are imputed and say their "
        "`missing_fraction`. Each scored window is kept for the score retention period so "
        "that operators can point feedback at its `score_id`. 409 while the series has no "
        "trained model."
    ),
    response_model=ScoreResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _PARAMETERS},
    responses={409: {"description": "The series has no trained model yet"}},
)
async def score(request: Request, runtime: RuntimeDep, key: Scorer) -> Response:
    # NOTE: `app.api.score_endpoint` serves POST /v1/score ahead of FastAPI's routing with this
    # same `score_body`; this route documents the operation, answers its other methods
    # (405), and serves it wherever the app runs without that endpoint.
    body = await request.body()
    headers = request.headers
    content = await score_body(
        runtime,
        body=body,
        content_type=headers.get("content-type", ""),
        series_id_header=headers.get("x-vigil-series-id", ""),
        shape_header=headers.get("x-vigil-shape", ""),
        steps=detail_steps(request.query_params.get("detail")),
        principal=key,
    )
    return Response(content, media_type="application/json")

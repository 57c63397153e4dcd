"""Vigil's Python client: `Client` (blocking) and `AsyncClient` (asyncio), one method per
operation of the API, typed results (`vigil_client.models`), typed errors
(`vigil_client.errors`), retries (`Retry`), and `verify_signature` for webhook receivers."""

from vigil_client._async import AsyncClient
from vigil_client._calls import Instant
from vigil_client._retry import Retry
from vigil_client._sync import Client
from vigil_client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidInput,
    JobFailed,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    VigilError,
)
from vigil_client.models import (
    Alarm,
    AlarmDetail,
    AlarmEvent,
    Job,
    Label,
    LabelCreated,
    Page,
    ScoreResponse,
    ScoreResult,
    Series,
)
from vigil_client.webhooks import sign, verify_signature

__all__ = [
    "Alarm",
    "AlarmDetail",
    "AlarmEvent",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "Instant",
    "InvalidInput",
    "Job",
    "JobFailed",
    "Label",
    "LabelCreated",
    "NotFound",
    "Page",
    "RateLimited",
    "Retry",
    "ScoreResponse",
    "ScoreResult",
    "Series",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "VigilError",
    "sign",
    "verify_signature",
]

__version__ = "0.1.0"

"""API keys: random bearer tokens, stored as SHA-256 digests and compared in constant time,
optionally expiring."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ApiKey
from app.errors import InvalidInput, NotFound

SCOPES = ("read", "ingest", "score", "label", "train", "admin")
KEY_PREFIX = "vgl_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def normalise_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise InvalidInput(
            f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}",
            field="scopes",
        )
    if not wanted:
        raise InvalidInput("at least one scope is required", field="scopes")
    return wanted


def parse_series_ids(text: str) -> list[int]:
    """`1,2,5` -> [1, 2, 5] (what `vigil keys create --series` takes)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() and len(part) <= 10 for part in parts):
        raise InvalidInput(f"{text!r} is not a comma-separated list of series ids", field="series")
    return _series_ids(int(part) for part in parts)


def _series_ids(series_ids: Iterable[int]) -> list[int]:
    wanted = sorted(set(series_ids))
    if not wanted:
        raise InvalidInput("a key restricted to series needs at least one", field="series")
    if any(not 1 <= s <= 2**31 - 1 for s in wanted):
        raise InvalidInput("series ids are positive 32-bit integers", field="series")
    return wanted


def has_scope(granted: Sequence[str], needed: str) -> bool:
    return "admin" in granted or needed in granted


def create_key(
    *,
    session: Session,
    name: str,
    scopes: Iterable[str],
    key: str | None = None,
    expires_at: datetime | None = None,
    series_ids: Iterable[int] | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its plain text, which is never stored."""
    plain = key or generate_key()
    # A generated key's first characters identify it in listings; an operator-chosen key
    # (the bootstrap key) may be short, so none of it is kept in clear.
    prefix = plain[:12] if plain.startswith(KEY_PREFIX) and key is None else "(chosen)"
    record = ApiKey(
        name=name,
        key_hash=hash_key(plain),
        prefix=prefix,
        scopes=normalise_scopes(scopes),
        expires_at=expires_at,
        series_ids=None if series_ids is None else _series_ids(series_ids),
    )
    session.add(record)
    session.flush()
    return record, plain


_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s` -> a timedelta (what `vigil keys create --expires-in` takes)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"{text!r} is not a duration: give a whole number and a unit, e.g. 90d, 12h, 30m, 45s",
            field="expires_in",
        )
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def revoke_key(*, session: Session, key_id: int, at: datetime | None = None) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None:
        raise NotFound(f"API key {key_id} does not exist")
    if record.revoked_at is None:
        record.revoked_at = at or utcnow()
    return record


def list_keys(*, session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def ensure_bootstrap_key(*, session: Session, key: str | None) -> bool:
    """Create an admin key from `key` when no key exists at all. True if one was created."""
    if not key or session.scalar(select(ApiKey.id).limit(1)) is not None:
        return False
    create_key(session=session, name="bootstrap-admin", scopes=["admin"], key=key)
    return True

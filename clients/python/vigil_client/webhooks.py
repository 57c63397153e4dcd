"""For webhook receivers: check that a delivery comes from Vigil and is fresh.

Vigil signs each delivery with the webhook's secret: the header
`Vigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (several `v1=`
entries may appear while a secret is rotated; one matching is enough).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

SIGNATURE_HEADER = "Vigil-Signature"
DEFAULT_TOLERANCE_S = 300.0


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, body: str | bytes, timestamp: int) -> str:
    """The `Vigil-Signature` header value for `body` sent at `timestamp` (Unix seconds)."""
    message = str(int(timestamp)).encode() + b"." + _bytes(body)
    digest = hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()
    return f"t={int(timestamp)},v1={digest}"


def verify_signature(
    secret: str | bytes,
    body: str | bytes,
    header: str | None,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether `header` (the `Vigil-Signature` value) signs `body` (the raw request body,
    exactly as received) with `secret`, and its timestamp is within `tolerance` seconds of
    `now` (None: any age; replayed old deliveries are then accepted)."""
    if not header:
        return False
    stamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            stamp = value.strip()
        elif name == "v1":
            candidates.append(value.strip().lower())
    if stamp is None or not stamp.isdigit() or not candidates:
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - int(stamp)) > tolerance:
            return False
    expected = sign(secret, body, int(stamp)).rsplit("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)

"""One self-describing blob per trained model: a safetensors file whose header carries the rest.

Layout: safetensors (https://huggingface.co/docs/safetensors) holds every tensor (the weights,
the normalisation, the calibration scores); its ``__metadata__`` header holds one key, "vigil",
whose value is a JSON object (one key keeps the bytes deterministic: safetensors writes several
metadata keys in hash order):

    format          "vigil-model"
    format_version  FORMAT_VERSION; a newer version than this package knows is refused
    document        a JSON string: config, classes with kinds, channels, calibration, metrics,
                    caller metadata, package version (see TrainedModel.to_bytes)
    sha256          hex digest over the document and every tensor's name, dtype, shape and bytes

Loading parses JSON and raw little-endian tensor bytes only: no pickle, no code runs. Any
corruption (a flipped byte, an edited header, truncation, random bytes) raises ArtifactError.
The digest detects corruption and naive tampering; it is not a signature (anyone can recompute
it), so blobs from untrusted sources need an authenticated channel or store.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from models.errors import ArtifactError

FORMAT = "vigil-model"
FORMAT_VERSION = 1
METADATA_KEY = "vigil"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def _digest(tensors: dict[str, Tensor], document: str) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(b"\0")
    h.update(document.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(b"\0" + name.encode("utf-8") + b"\0")
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def pack(tensors: dict[str, Tensor], document: dict[str, Any]) -> bytes:
    """Serialise tensors and a JSON-able document into one safetensors blob."""
    doc = json.dumps(document, sort_keys=True, separators=(",", ":"))
    owned = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    envelope = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "document": doc,
        "sha256": _digest(owned, doc),
    }
    return st_save(owned, metadata={METADATA_KEY: json.dumps(envelope, sort_keys=True)})


def _envelope(blob: bytes) -> dict[str, Any]:
    """Parse the safetensors header by hand to read our metadata before touching tensors."""
    if len(blob) < 8:
        raise ArtifactError(f"not a model artifact: {len(blob)} bytes is too short")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise ArtifactError("not a model artifact or truncated: the header length is invalid")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError("not a model artifact: the header is not valid JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    raw = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise ArtifactError("not a model artifact: the header has no Vigil metadata")
    try:
        envelope = json.loads(raw)
    except json.JSONDecodeError:
        raise ArtifactError("not a model artifact: the Vigil metadata is not valid JSON") from None
    if not isinstance(envelope, dict):
        raise ArtifactError("not a model artifact: the Vigil metadata is not a JSON object")
    return envelope


def unpack(blob: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Inverse of pack: check format, version and digest; return (tensors, document)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ArtifactError(f"a model artifact must be bytes; got {type(blob).__name__}")
    blob = bytes(blob)
    meta = _envelope(blob)
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"not a model artifact: format is {meta.get('format')!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError("the artifact's format_version is missing or not a number")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format version {version} is newer than this package supports "
            f"({FORMAT_VERSION}); upgrade the models package"
        )
    if version < 1:
        raise ArtifactError(f"artifact format version {version} is not supported")
    doc, expected = meta.get("document"), meta.get("sha256")
    if not isinstance(doc, str) or not isinstance(expected, str):
        raise ArtifactError("the artifact is incomplete: document or checksum missing")
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types for every malformation
        raise ArtifactError(f"the artifact's tensors are corrupt: {exc}") from None
    if _digest(tensors, doc) != expected:
        raise ArtifactError(
            "the artifact failed its integrity check (sha256 mismatch): "
            "it is corrupt or was modified"
        )
    try:
        document = json.loads(doc)
    except json.JSONDecodeError:
        raise ArtifactError("the artifact's document is not valid JSON") from None
    if not isinstance(document, dict):
        raise ArtifactError("the artifact's document is not a JSON object")
    return tensors, document

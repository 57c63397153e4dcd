"""Artifacts: bit-exact round trips, and clear refusals of anything corrupt or incompatible."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save as st_save

from models import ArtifactError, ModelError, TrainedModel, TrainingData, fit
from models.artifact import pack, unpack
from tests.models.models_testkit import CHANNELS, T, quick, sine_windows, tiny_config


def header(blob: bytes) -> tuple[int, dict[str, object]]:
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8 : 8 + n])


def envelope(blob: bytes) -> dict[str, object]:
    _, head = header(blob)
    meta = head["__metadata__"]
    assert isinstance(meta, dict)
    result = json.loads(meta["vigil"])
    assert isinstance(result, dict)
    return result


def repack(blob: bytes, edit: dict[str, object]) -> bytes:
    """A well-formed safetensors blob whose Vigil metadata has been edited."""
    tensors, _ = unpack(blob)
    meta = envelope(blob)
    meta.update(edit)
    return st_save(tensors, metadata={"vigil": json.dumps(meta)})


def test_round_trip_gives_bit_exact_scores(trained_ss: TrainedModel, tmp_path: Path) -> None:
    x = np.concatenate([sine_windows(7, seed=1), sine_windows(3, seed=2) + 3.0])
    blob = trained_ss.to_bytes({"series": "42", "version": "3"})
    again = TrainedModel.from_bytes(blob)
    for n_samples in (1, 4):
        a, b = trained_ss.score(x, n_samples=n_samples), again.score(x, n_samples=n_samples)
        for field in dataclasses.fields(a):
            left, right = getattr(a, field.name), getattr(b, field.name)
            assert np.array_equal(left, right, equal_nan=True), field.name
    assert again.metadata == {"series": "42", "version": "3"}
    assert again.classes == trained_ss.classes
    assert again.channels == trained_ss.channels
    assert again.config == trained_ss.config
    assert again.metrics == trained_ss.metrics
    assert again.label_counts == trained_ss.label_counts
    assert again.threshold(0.9) == trained_ss.threshold(0.9)

    path = tmp_path / "model.safetensors"
    trained_ss.save(path)
    loaded = TrainedModel.load(path)
    assert np.array_equal(loaded.score(x).raw_score, trained_ss.score(x).raw_score)
    assert again.to_bytes({"series": "42", "version": "3"}) == blob  # deterministic bytes


@pytest.mark.parametrize("variant", ["eu", "es"])
def test_round_trip_of_the_equivalents(variant: str) -> None:
    x = sine_windows(24, seed=0)
    model = fit(
        TrainingData(x, np.zeros((24, T), dtype=np.int64)),
        classes=[c for c in __import__("models").BUILTIN_CLASSES],
        channels=CHANNELS,
        model_config=tiny_config(variant=variant),
        train_config=quick(epochs=1),
    )
    again = TrainedModel.from_bytes(model.to_bytes())
    if variant == "eu":
        assert np.array_equal(again.score(x).raw_score, model.score(x).raw_score)
    else:
        assert np.array_equal(again.predict_proba(x), model.predict_proba(x))


def test_flipped_weight_byte_is_detected(trained_ss: TrainedModel) -> None:
    blob = bytearray(trained_ss.to_bytes())
    n, _ = header(bytes(blob))
    for position in (8 + n + 5, len(blob) - 3, (8 + n + len(blob)) // 2):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(ArtifactError, match="integrity check"):
            TrainedModel.from_bytes(bytes(tampered))


def test_edited_metadata_is_detected(trained_ss: TrainedModel) -> None:
    blob = trained_ss.to_bytes()
    document_text = envelope(blob)["document"]
    assert isinstance(document_text, str)
    document = json.loads(document_text)
    document["threshold_quantile"] = 0.5
    with pytest.raises(ArtifactError, match="integrity check"):
        TrainedModel.from_bytes(repack(blob, {"document": json.dumps(document)}))
    # the same edit in place, keeping the header length, so only the checksum can catch it
    old = rb"\\\"threshold_quantile\\\":0.99"  # escaped twice: JSON in JSON in JSON
    assert old in blob
    with pytest.raises(ArtifactError, match="integrity check"):
        TrainedModel.from_bytes(blob.replace(old, old.replace(b"0.99", b"0.10")))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:20],
        lambda b: b[:4],
        lambda b: b"",
        lambda b: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        lambda b: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
        lambda b: st_save({"x": __import__("torch").zeros(2)}),  # a safetensors file, not ours
    ],
)
def test_corrupt_blobs_raise_artifact_error(trained_ss: TrainedModel, corrupt: object) -> None:
    blob = trained_ss.to_bytes()
    with pytest.raises(ArtifactError):
        TrainedModel.from_bytes(corrupt(blob))  # type: ignore[operator]


def test_incompatible_artifacts_are_refused(trained_ss: TrainedModel) -> None:
    blob = trained_ss.to_bytes()
    with pytest.raises(ArtifactError, match="newer than this package supports"):
        TrainedModel.from_bytes(repack(blob, {"format_version": 2}))
    with pytest.raises(ArtifactError, match="not a model artifact"):
        TrainedModel.from_bytes(repack(blob, {"format": "something-else"}))
    # a correctly checksummed artifact whose content this package cannot use
    tensors, document = unpack(blob)
    document["config"]["hidden_layers"] = 3
    with pytest.raises(ArtifactError, match="incompatible"):
        TrainedModel.from_bytes(pack(tensors, document))
    tensors, document = unpack(blob)
    del tensors["weights.pi_head.bias"]
    with pytest.raises(ArtifactError, match="weights do not match"):
        TrainedModel.from_bytes(pack(tensors, document))
    tensors, document = unpack(blob)
    del document["classes"]
    with pytest.raises(ArtifactError, match="missing field 'classes'"):
        TrainedModel.from_bytes(pack(tensors, document))


def test_artifact_errors_are_model_errors_and_load_reports_missing_files(tmp_path: Path) -> None:
    assert issubclass(ArtifactError, ModelError)
    with pytest.raises(ArtifactError, match="cannot read"):
        TrainedModel.load(tmp_path / "missing.safetensors")
    with pytest.raises(ArtifactError, match="must be bytes"):
        TrainedModel.from_bytes("not bytes")  # type: ignore[arg-type]

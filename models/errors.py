"""The package's typed errors. ``str(err)`` is a message an API can pass on unchanged."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error the models package raises on purpose."""


class InvalidInput(ModelError):
    """Wrong ndim, shape, channel count or window length; NaN/inf; empty input; bad settings."""


class UnknownClass(ModelError):
    """A label index or class name that is not one of the model's classes."""


class NotEnoughData(ModelError):
    """Fewer windows (or labels) than a training run needs."""


class TrainingCancelled(ModelError):
    """``should_stop()`` returned True between two epochs."""


class UnsupportedOperation(ModelError):
    """The model's variant cannot do this (e.g. scoring with an ES model, which has no decoder)."""


class ArtifactError(ModelError):
    """A corrupt, tampered or incompatible model artifact."""

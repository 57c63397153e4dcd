"""Vigil's models: a semi-supervised VAE for multivariate sensor windows (pure torch + numpy).

    from models import fit, TrainingData, BUILTIN_CLASSES
    model = fit(TrainingData(windows, labels), classes=BUILTIN_CLASSES, channels=names)
    batch = model.score(new_windows)            # ScoreBatch
    blob = model.to_bytes({"series": "42"})     # one safetensors blob
    model = TrainedModel.from_bytes(blob)

See METHOD.md for the method; model.py, loss.py, train.py and scoring.py for the details.
"""

from models.config import (
    BUILTIN_CLASSES,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    ClassSpec,
    ModelConfig,
    Progress,
    TrainConfig,
    TrainingData,
)
from models.data import channel_means, impute_missing, missing_fraction
from models.errors import (
    ArtifactError,
    InvalidInput,
    ModelError,
    NotEnoughData,
    TrainingCancelled,
    UnknownClass,
    UnsupportedOperation,
)
from models.model import SemiSupervisedVAE
from models.scoring import P_FN_MAX, Calibration, ScoreBatch
from models.train import fit, set_threads
from models.trained import TrainedModel
from models.version import __version__

__all__ = [
    "BUILTIN_CLASSES",
    "FALSE_NEGATIVE",
    "FALSE_POSITIVE",
    "P_FN_MAX",
    "ArtifactError",
    "Calibration",
    "ClassSpec",
    "InvalidInput",
    "ModelConfig",
    "ModelError",
    "NotEnoughData",
    "Progress",
    "ScoreBatch",
    "SemiSupervisedVAE",
    "TrainConfig",
    "TrainedModel",
    "TrainingCancelled",
    "TrainingData",
    "UnknownClass",
    "UnsupportedOperation",
    "__version__",
    "channel_means",
    "fit",
    "impute_missing",
    "missing_fraction",
    "set_threads",
]

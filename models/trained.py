"""A trained model: the network plus everything that turns raw windows into scores.

It carries, like nanoGPT's checkpoints, what rebuilds it: config, classes with kinds, channels,
normalisation, calibration, training metrics and the package version (see to_bytes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import FORMAT_VERSION, pack, unpack
from models.config import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    ClassSpec,
    ModelConfig,
    TrainConfig,
    TrainingData,
    check_quantile,
)
from models.data import Normalisation, check_labels, check_windows, class_index, elbo_eligible
from models.errors import ArtifactError, InvalidInput, ModelError, UnsupportedOperation
from models.loss import class_weights, dataset_objective
from models.model import SemiSupervisedVAE
from models.quality import DataProfile
from models.scoring import (
    Calibration,
    InferenceStep,
    ScoreBatch,
    adjust,
    calibrate,
    floor_false_negative,
    guard_false_positive,
    infer,
    nearest_calibration,
    run_inference,
    threshold_at,
)
from models.version import __version__

log = logging.getLogger(__name__)

MAX_SAMPLES = 4096  # upper bound on L for score()/evaluate()


def make_generator(seed: int | None) -> torch.Generator:
    """A private RNG for sampling z: seeded -> deterministic, None -> fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _check_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidInput(f"n_samples must be a positive int; got {n_samples!r}")
    if n_samples > MAX_SAMPLES:
        raise InvalidInput(f"n_samples must be at most {MAX_SAMPLES}; got {n_samples}")


class TrainedModel:
    """The public face of a fitted model. Build it with fit() or from_bytes()/load()."""

    def __init__(
        self,
        *,
        net: SemiSupervisedVAE | Sequence[SemiSupervisedVAE],
        classes: tuple[ClassSpec, ...],
        channels: tuple[str, ...],
        normalisation: Normalisation,
        calibrations: dict[int, Calibration],
        threshold_quantile: float,
        label_counts: tuple[int, ...],
        train_config: TrainConfig,
        metrics: dict[str, float | int | str],
        metadata: Mapping[str, str] | None = None,
        profile: DataProfile | None = None,
    ) -> None:
        members = [net] if isinstance(net, SemiSupervisedVAE) else list(net)
        self.nets: tuple[SemiSupervisedVAE, ...] = tuple(m.eval() for m in members)
        self.net = self.nets[0]  # the first member: architecture, flags, warm start
        self.config: ModelConfig = self.net.cfg
        self.classes = classes
        self.channels = channels
        self.normalisation = normalisation
        self.calibrations = calibrations  # keyed by the L they were computed at
        self.threshold_quantile = threshold_quantile
        self.label_counts = label_counts  # labelled training steps per class
        self.train_config = train_config
        self.metrics = metrics
        self.metadata: dict[str, str] = dict(metadata or {})
        self.profile = profile  # data-quality checks (quality.py); None: none are made
        self._thresholds: dict[tuple[float, int], float] = {}  # (quantile, L) -> threshold
        self._steps: dict[int, tuple[InferenceStep, Callable[..., Any] | None]] = {}  # by L
        self._noises: dict[tuple[int, int], torch.Tensor] = {}  # (L, seed) -> eps

    # -- shape ---------------------------------------------------------------

    @property
    def window_size(self) -> int:
        assert self.config.window_size is not None
        return self.config.window_size

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def calibration_samples(self) -> int:
        """The largest L the model was calibrated at (TrainConfig.calibration_samples)."""
        return max(self.calibrations) if self.calibrations else 0

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TrainedModel({c.flavour}/{c.variant}, window {self.window_size} x "
            f"{self.n_channels} channels, {len(self.classes)} classes)"
        )

    def _prepare(self, windows: object, name: str = "windows") -> np.ndarray:
        """Check raw windows against the model and standardise them: (N, T, F) float32."""
        array = check_windows(
            windows, window_size=self.window_size, n_channels=self.n_channels, name=name
        )
        return self.normalisation.apply(array)

    def _feedback_index(self, name: str) -> int | None:
        """Index of a feedback class whose pi head was trained, else None (its p is then 0)."""
        i = class_index(self.classes, name)
        return i if i is not None and self.label_counts[i] > 0 and self.net.has_pi else None

    # -- inference -----------------------------------------------------------

    def score(
        self,
        windows: np.ndarray,
        *,
        n_samples: int = 1,
        seed: int | None = 0,
        threshold_quantile: float | None = None,
    ) -> ScoreBatch:
        """Anomaly scores for raw windows (N, T, F); see models.scoring for the definitions.

        Batched, eval mode, torch.inference_mode(); a given seed gives identical results.
        """
        if not self.net.has_decoder:
            raise UnsupportedOperation(
                "this is an ES model (encoder + class head only): it has no decoder, so it "
                "cannot compute reconstruction scores; use predict_proba() for classes"
            )
        _check_samples(n_samples)
        quantile = self.threshold_quantile if threshold_quantile is None else threshold_quantile
        check_quantile(quantile)
        array = check_windows(
            windows, window_size=self.window_size, n_channels=self.n_channels, name="windows"
        )
        x = self.normalisation.apply(array)
        step, call = self._scoring_step(n_samples)
        out = run_inference(step, x, eps=self._noise(step, seed), call=call)
        assert out.raw_score is not None and out.elements is not None
        N, K = x.shape[0], len(self.classes)

        calibration = nearest_calibration(self.calibrations, n_samples)
        score = calibrate(out.raw_score, calibration.center, calibration.scale)
        if out.step_probabilities is not None:
            probs = out.step_probabilities.mean(axis=1)  # (N, K) window level
        else:
            probs = np.full((N, K), np.nan)  # EU: no class head
        fp, fn = self._feedback_index(FALSE_POSITIVE), self._feedback_index(FALSE_NEGATIVE)
        p_fp = np.zeros(N)
        if fp is not None:
            p_fp = guard_false_positive(probs[:, fp], score, calibration.fp_ceiling)
        p_fn = np.zeros(N)
        if fn is not None:
            p_fn = floor_false_negative(probs[:, fn], calibration.fn_floor)
        adjusted = adjust(score, p_fp, p_fn)
        threshold = self.threshold(quantile, n_samples=n_samples)
        quality = (
            self.profile.check(array)
            if self.profile is not None
            else np.zeros((N, self.n_channels), dtype=np.uint8)
        )
        return ScoreBatch(
            raw_score=out.raw_score,
            score=score,
            p_false_positive=p_fp,
            p_false_negative=p_fn,
            adjusted_score=adjusted,
            is_anomaly=(adjusted > threshold) | quality.any(axis=1),
            class_probabilities=probs,
            channel_contributions=out.elements.sum(axis=1),  # (N, F)
            step_contributions=out.elements.sum(axis=2),  # (N, T)
            quality=quality,
            threshold=threshold,
        )

    def _scoring_step(self, n_samples: int) -> tuple[InferenceStep, Callable[..., Any] | None]:
        """score()'s inference step at this L and its traced graph, built on first use (~30 ms).

        If tracing fails the step runs eagerly: same results, only slower beside a busy thread."""
        known = self._steps.get(n_samples)
        if known is None:
            step = InferenceStep(self.nets, n_samples=n_samples)
            try:
                call: Callable[..., Any] | None = step.traced()
            except Exception as exc:  # pragma: no cover - a torch limitation, not an input error
                log.warning("scoring runs eagerly: tracing the model failed (%r)", exc)
                call = None
            known = self._steps[n_samples] = (step, call)
        return known

    def _noise(self, step: InferenceStep, seed: int | None) -> torch.Tensor:
        """The latent noise for a seed, drawn once per (L, seed): the same draw every time."""
        if seed is None:
            return step.draw_noise(make_generator(None))
        key = (step.n_samples, seed)
        eps = self._noises.get(key)
        if eps is None:
            if len(self._noises) >= 8:  # a handful of seeds in use; never grow without bound
                self._noises.clear()
            eps = self._noises[key] = step.draw_noise(make_generator(seed))
        return eps

    def threshold(self, quantile: float | None = None, *, n_samples: int = 1) -> float:
        """The alarm threshold: a quantile of the calibrated scores of held-out normal windows.

        None = the quantile chosen at training. n_samples picks the calibration for that L (use
        the same L as score()). Any quantile works, without retraining."""
        if not self.calibrations:
            raise UnsupportedOperation("this is an ES model: it has no anomaly scores to threshold")
        _check_samples(n_samples)
        quantile = self.threshold_quantile if quantile is None else quantile
        known = self._thresholds.get((quantile, n_samples))
        if known is None:  # a quantile of up to 10,001 scores: computed once, then looked up
            check_quantile(quantile)
            calibration = nearest_calibration(self.calibrations, n_samples)
            known = self._thresholds[(quantile, n_samples)] = threshold_at(calibration, quantile)
        return known

    def predict_proba(self, windows: np.ndarray, *, per_step: bool = False) -> np.ndarray:
        """Class probabilities pi: window level (N, K) (mean over steps), or (N, T, K)."""
        if not self.net.has_pi:
            raise UnsupportedOperation(
                "this is an EU model (no class head pi): it cannot predict class probabilities"
            )
        x = self._prepare(windows)
        out = infer(self.nets, x, n_samples=1, generator=make_generator(0), reconstruction=False)
        assert out.step_probabilities is not None
        return out.step_probabilities if per_step else out.step_probabilities.mean(axis=1)

    def evaluate(self, data: TrainingData, *, n_samples: int = 1) -> dict[str, float]:
        """The training objective and its terms on data, for comparing model versions fairly.

        Keys: loss, nll, kl, ce (NaN without labels), accuracy and log_loss (per labelled step,
        NaN without labels), n_windows, n_elbo_windows, n_labelled_windows. Sampling is seeded.
        nll (and so loss) is in nats of the raw, un-standardised values: the training objective
        plus T * sum_f log std_f, so models with different normalisations compare fairly.
        """
        _check_samples(n_samples)
        x = self._prepare(data.windows)
        labels = None
        if data.labels is not None:
            labels = check_labels(
                data.labels,
                n_windows=x.shape[0],
                window_size=self.window_size,
                n_classes=len(self.classes),
            )
        per_member = [
            dataset_objective(
                net,
                x,
                labels,
                elbo_eligible(labels, self.classes, x.shape[0]),
                alpha=class_weights(
                    self.classes,
                    alpha=self.train_config.alpha,
                    event_alpha=self.train_config.event_alpha,
                ),
                beta=self.train_config.beta,
                n_samples=n_samples,
                generator=make_generator(0),
                nll_offset=self.window_size * float(np.log(self.normalisation.std).sum()),
            )
            for net in self.nets
        ]
        return {key: float(np.mean([m[key] for m in per_member])) for key in per_member[0]}

    # -- artifact ------------------------------------------------------------

    def to_bytes(self, metadata: Mapping[str, str] | None = None) -> bytes:
        """One safetensors blob (models.artifact). metadata: caller strings stored alongside
        (None keeps self.metadata)."""
        caller = dict(self.metadata if metadata is None else metadata)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in caller.items()):
            raise InvalidInput("artifact metadata must map strings to strings")
        # One member keeps the names of a single network; more are `members.<i>.<name>`.
        tensors: dict[str, torch.Tensor] = {
            (f"weights.{k}" if i == 0 else f"members.{i}.{k}"): v
            for i, net in enumerate(self.nets)
            for k, v in net.state_dict().items()
        }
        tensors["normalisation.mean"] = torch.from_numpy(self.normalisation.mean.copy())
        tensors["normalisation.std"] = torch.from_numpy(self.normalisation.std.copy())
        for L, cal in self.calibrations.items():
            tensors[f"calibration.{L}.normal_scores"] = torch.from_numpy(cal.normal_scores.copy())
        document: dict[str, Any] = {
            "package_version": __version__,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "train_config": dataclasses.asdict(self.train_config),
            "classes": [{"name": c.name, "kind": c.kind} for c in self.classes],
            "channels": list(self.channels),
            "label_counts": list(self.label_counts),
            "threshold_quantile": self.threshold_quantile,
            "calibrations": [
                {
                    "n_samples": c.n_samples,
                    "center": c.center,
                    "scale": c.scale,
                    "source": c.source,
                    "fp_ceiling": c.fp_ceiling if math.isfinite(c.fp_ceiling) else None,
                    "n_outliers": c.n_outliers,
                    "fn_floor": c.fn_floor,
                }
                for c in self.calibrations.values()
            ],
            "metrics": self.metrics,
            "metadata": caller,
            "profile": None if self.profile is None else self.profile.to_dict(),
        }
        return pack(tensors, document)

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrainedModel:
        """Rebuild a model from to_bytes() output. Raises ArtifactError if anything is off."""
        tensors, doc = unpack(blob)
        try:
            return cls._from_parts(tensors, doc)
        except ArtifactError:
            raise
        except (ModelError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ArtifactError(
                f"the artifact is incompatible with this package: {detail}"
            ) from None

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> TrainedModel:
        # Artifacts from before the complexity correction were calibrated without it.
        config = ModelConfig.from_dict(
            {"complexity_correction": False, "autoregressive": False, **doc["config"]}
        )
        train_config = TrainConfig(**doc["train_config"])
        classes = tuple(ClassSpec(str(c["name"]), c["kind"]) for c in doc["classes"])
        channels = tuple(str(c) for c in doc["channels"])
        if config.n_classes != len(classes) or config.n_channels != len(channels):
            raise ArtifactError("the artifact's classes or channels do not match its config")
        label_counts = tuple(int(n) for n in doc["label_counts"])
        if len(label_counts) != len(classes):
            raise ArtifactError("the artifact's label counts do not match its classes")

        extra = {".".join(k.split(".")[:2]) + "." for k in tensors if k.startswith("members.")}
        prefixes = ["weights.", *sorted(extra, key=lambda p: int(p.split(".")[1]))]
        nets = [_load_member(config, tensors, prefix) for prefix in prefixes]

        mean = tensors["normalisation.mean"].numpy().astype(np.float64)
        std = tensors["normalisation.std"].numpy().astype(np.float64)
        if mean.shape != (len(channels),) or std.shape != (len(channels),) or not (std > 0).all():
            raise ArtifactError("the artifact's normalisation does not match its channels")

        calibrations: dict[int, Calibration] = {}
        for entry in doc["calibrations"]:
            L = int(entry["n_samples"])
            scores = tensors[f"calibration.{L}.normal_scores"].numpy().astype(np.float64)
            center, scale = float(entry["center"]), float(entry["scale"])
            if scores.ndim != 1 or not scores.size or not (math.isfinite(center) and scale > 0):
                raise ArtifactError(f"the artifact's calibration for L={L} is invalid")
            ceiling = entry.get("fp_ceiling")
            calibrations[L] = Calibration(
                L,
                center,
                scale,
                scores,
                str(entry["source"]),
                math.inf if ceiling is None else float(ceiling),
                int(entry.get("n_outliers", 0)),
                float(entry.get("fn_floor", 0.0)),  # artifacts from before the floor: none
            )
        if nets[0].has_decoder and not calibrations:
            raise ArtifactError("the artifact has no calibration")

        quantile = float(doc["threshold_quantile"])
        check_quantile(quantile)
        metadata = doc["metadata"]
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ArtifactError("the artifact's caller metadata is not a string mapping")
        return cls(
            net=nets,
            classes=classes,
            channels=channels,
            normalisation=Normalisation(mean=mean, std=std),
            calibrations=calibrations,
            threshold_quantile=quantile,
            label_counts=label_counts,
            train_config=train_config,
            metrics=dict(doc["metrics"]),
            metadata=metadata,
            profile=_profile(doc.get("profile"), len(channels)),
        )

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
        """Write to_bytes() to path atomically (a temporary file, then a rename)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(self.to_bytes(metadata))
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainedModel:
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read the model artifact {path}: {exc.strerror}") from None
        return cls.from_bytes(blob)


def _profile(data: Any, n_channels: int) -> DataProfile | None:
    """The stored data profile (artifacts from before the checks have none)."""
    if data is None:
        return None
    profile = DataProfile.from_dict(data)
    if profile.low.shape != (n_channels,):
        raise ArtifactError("the artifact's data profile does not match its channels")
    return profile


def _load_member(
    config: ModelConfig, tensors: dict[str, torch.Tensor], prefix: str
) -> SemiSupervisedVAE:
    """One network of an artifact, from the tensors whose names start with `prefix`."""
    net = SemiSupervisedVAE(config)
    weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "class_mask"]  # stored before it existed: all True
    if missing or unexpected:
        raise ArtifactError(
            "the artifact's weights do not match its architecture (missing: "
            f"{', '.join(missing) or '-'}; unexpected: {', '.join(unexpected) or '-'})"
        )
    return net

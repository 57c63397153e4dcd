"""fit(): training as in the preprint (§2.2-2.3, appendix A), then calibration.

- RMSprop with momentum 0.9, lr 1e-3 for the recurrent model (appendix A.3).
- Batches: when both labelled and unlabelled windows exist, every batch holds them 1 : 1 (§2.3).
  An epoch is one pass over the larger of the two groups; the smaller one is drawn from fresh
  permutations as needed (upsampled), so batches stay full however lopsided the groups are.
  Without one of the two groups, batches come from the other alone. ES trains on labelled
  windows only; EU on the windows allowed into the ELBO only.
- The budget is counted in optimiser steps (TrainConfig.budget): an automatic budget of about
  30 passes, never fewer than min_steps (class_min_steps when labels teach the class head
  normal-kind classes), so that a small data set (one step per epoch) still trains for real;
  the batch scales with the data (TrainConfig.batch_for).
- Denoising (our decision; Im et al., "Denoising criterion for variational auto-encoding
  framework", AAAI 2017): the encoder reads each training window with Gaussian noise of
  TrainConfig.input_noise standard deviations added (the data are standardised per channel),
  while the loss reconstructs, and classifies, the clean window. Without it the class head and
  the likelihood learn the exact windows an operator marked, noise included, and a recurrence
  of the same benign episode with fresh sensor noise was not recognised: over 8 seeds of
  tests/detection/test_end_to_end.py its peak after the feedback retrain was 0.03-0.92 of
  the dismissed alarm's (4 seeds above half); with 0.1 it was 0.00-0.18.
- Early stopping on the validation loss (the same objective, z sampled with a fixed seed), checked
  after every round of steps, never before the floor, keeping the best weights. Without a
  validation split the whole budget runs.
- The random split (when fit() gets no validation set) keeps every labelled window in training;
  validation holds copies of some of them (_split).
- Reproducible: the split, batch order, initialisation, dropout and z-samples all derive from
  TrainConfig.seed; the global torch RNG is forked, so the caller's RNG state is untouched.
  (Two fits running at once in threads of one process share that global RNG; use processes.)
- Warm start (§2.4: "all learned weights can directly be reused"): every tensor whose name and
  shape match is copied; pi's last layer grows rows for new classes and the decoder's first layer
  (input concat(z, pi)) grows columns, old rows and columns kept verbatim. The old normalisation is
  kept unless TrainConfig.warm_start_normalisation = "refit".
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from models.config import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    ClassSpec,
    ModelConfig,
    Progress,
    TrainConfig,
    TrainingData,
)
from models.data import (
    Normalisation,
    check_channels,
    check_classes,
    check_labels,
    check_windows,
    elbo_eligible,
    labelled_windows,
    marks_events,
    predictable_classes,
)
from models.errors import InvalidInput, ModelError, NotEnoughData, TrainingCancelled
from models.loss import class_weights, dataset_objective, vae_loss
from models.model import SemiSupervisedVAE
from models.quality import DataProfile
from models.scoring import (
    Calibration,
    calibrate,
    center_and_scale,
    fit_calibration,
    infer,
    window_complexity,
)
from models.trained import TrainedModel, make_generator

MIN_WINDOWS = 4  # fewer cannot give a training split, a validation split and a batch
MIN_CALIBRATION_WINDOWS = 10  # fewer held-out normal windows: pool them with training windows
MAX_CALIBRATION_TRAIN_WINDOWS = 2048  # training windows scored for the calibration center/scale
NEW_CLASS_MASS = 0.02  # new classes share ~2% of pi's mass at first, so old predictions hold
NEW_CLASS_WEIGHT_SCALE = 0.1  # a grown class's weights: default init shrunk by this factor
MEMBER_SEED_STRIDE = 7919  # ensemble member k trains with seed + k * this (a prime)


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count; call once per process."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput(f"threads must be a positive int; got {n!r}")
    torch.set_num_threads(n)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -----------------------------------------------------------------------------
# data preparation


@dataclasses.dataclass
class _Split:
    windows: np.ndarray  # (N, T, F) float64 raw
    labels: np.ndarray | None  # (N, T) int64


def split_indices(
    labels: np.ndarray | None,
    n: int,
    fraction: float,
    rng: np.random.Generator,
    *,
    by_time: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) window indices for a validation split of `fraction`.

    Unlabelled windows are held out at random, or, `by_time`, the newest `fraction` of them
    (windows in time order: overlapping windows of one stream must not straddle the split).
    Labelled windows are scarce and each may be the only example of its class, so every one of
    them stays in training; validation also holds copies of `fraction` of each class's labelled
    windows (stratified by a window's majority class, the newest of each class when `by_time`).
    Their CE on validation is then optimistic: the step floor, not early stopping, is what
    protects classification (issue 13).
    """
    lab = labelled_windows(labels, n)
    unlabelled = np.flatnonzero(~lab)
    unl_order = unlabelled if by_time else rng.permutation(unlabelled)
    n_unl = min(round(fraction * unlabelled.size), max(unlabelled.size - 2, 0))
    held_out = unl_order[unl_order.size - n_unl :] if by_time else unl_order[:n_unl]
    copies: list[np.ndarray] = []
    if labels is not None and lab.any():
        majority = window_class(labels)
        for cls in np.unique(majority[lab]):
            members = np.flatnonzero(majority == cls)
            k = math.floor(fraction * members.size)
            copies.append(members[members.size - k :] if by_time else rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate([held_out, *copies]).astype(np.int64))
    keep = np.ones(n, dtype=bool)
    keep[held_out] = False
    return np.flatnonzero(keep), val_idx


def _split(
    windows: np.ndarray, labels: np.ndarray | None, fraction: float, rng: np.random.Generator
) -> tuple[_Split, _Split | None]:
    """A random validation split (split_indices) when fit() gets no validation set."""
    n = windows.shape[0]
    if fraction <= 0.0:
        return _Split(windows, labels), None
    train_idx, val_idx = split_indices(labels, n, fraction, rng)

    def take(idx: np.ndarray) -> _Split:
        return _Split(windows[idx], labels[idx] if labels is not None else None)

    return take(train_idx), (take(val_idx) if val_idx.size else None)


def window_class(labels: np.ndarray) -> np.ndarray:
    """(N, T) per-step labels (-1 = unlabelled) -> (N,) the most frequent labelled class per
    window, -1 for a window without labels."""
    n, k = labels.shape[0], int(labels.max(initial=-1)) + 1
    if k == 0:
        return np.full(n, -1, dtype=np.int64)  # no labelled step anywhere
    counts = np.zeros((n, k), dtype=np.int64)
    rows, cols = np.nonzero(labels >= 0)
    np.add.at(counts, (rows, labels[rows, cols]), 1)
    return np.where(counts.any(axis=1), counts.argmax(axis=1), -1)


def _batches(
    groups: list[np.ndarray], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Index batches for one epoch. One group: plain shuffled batches. Two groups (unlabelled,
    labelled): 1 : 1 batches over one pass of the larger group, the smaller one drawn from
    fresh permutations as often as it takes. Every batch so holds about batch_size windows
    however lopsided the groups are: one pass over the smaller group, as this once did, made
    every batch 2 windows when a single unlabelled window sat beside 49 labelled ones, and
    the class head never learned (GunPoint with every series labelled: accuracy 0.51).
    Batches are split evenly (np.array_split), so none has a single window (batch norm
    needs 2)."""
    if len(groups) == 1:
        order = rng.permutation(groups[0])
        return list(np.array_split(order, max(1, math.ceil(order.size / batch_size))))
    larger = max(g.size for g in groups)
    halves = np.array_split(np.arange(larger), max(1, math.ceil(larger / max(1, batch_size // 2))))
    pools: list[list[int]] = [[] for _ in groups]
    result = []
    for half in halves:
        parts: list[int] = []
        for group, pool in zip(groups, pools, strict=True):
            while len(pool) < half.size:
                pool.extend(rng.permutation(group).tolist())
            parts.extend(pool[: half.size])
            del pool[: half.size]
        result.append(np.array(parts, dtype=np.int64))
    return result


# -----------------------------------------------------------------------------
# warm start


def transfer_weights(new: nn.Module, old: nn.Module) -> dict[str, int]:
    """Copy old's weights into new where names match (see module docstring); returns counts.
    The class mask is not a weight: fit() sets it from the new labels."""
    new_state = {k: v for k, v in new.state_dict().items() if k != "class_mask"}
    old_state = old.state_dict()
    copied = grown = 0
    with torch.no_grad():
        for name, t in new_state.items():
            o = old_state.get(name)
            if o is None:
                continue
            if o.shape == t.shape:
                t.copy_(o)
                copied += 1
            elif (
                name.startswith("pi_head.")
                and o.shape[0] < t.shape[0]
                and o.shape[1:] == t.shape[1:]
            ):
                k = o.shape[0]  # pi grows rows: old classes kept verbatim
                if name.endswith("weight"):
                    t[k:] *= NEW_CLASS_WEIGHT_SCALE  # (K_new - K_old, H), small
                else:  # softmax over the biases would give the new classes NEW_CLASS_MASS
                    n_new = t.shape[0] - k
                    t[k:] = torch.logsumexp(o, dim=0) + math.log(NEW_CLASS_MASS / n_new)
                t[:k] = o
                grown += 1
            elif (
                name == "decoder.inp.weight"
                and o.shape[0] == t.shape[0]
                and o.shape[1] < t.shape[1]
            ):
                t[:, : o.shape[1]] = o  # columns for concat(z, pi_old) kept
                t[:, o.shape[1] :] = 0.0  # new classes start with no effect on the decoder
                grown += 1
    return {"copied": copied, "grown": grown, "total": len(new_state)}


def _check_warm_start(
    old: TrainedModel, classes: tuple[ClassSpec, ...], channels: tuple[str, ...], window_size: int
) -> None:
    k = len(old.classes)
    if classes[:k] != old.classes:
        names = ", ".join(c.name for c in old.classes)
        raise InvalidInput(
            "on warm start, classes must begin with the previous model's classes in the same "
            f"order and with the same kinds ({names}); new classes go at the end"
        )
    if channels != old.channels:
        raise InvalidInput(
            f"warm start needs the previous model's channels ({', '.join(old.channels)}); "
            f"got ({', '.join(channels)})"
        )
    if window_size != old.window_size:
        raise InvalidInput(
            f"warm start needs windows of {old.window_size} steps like the previous model; "
            f"got {window_size}"
        )


# -----------------------------------------------------------------------------
# fit


def fit(
    data: TrainingData,
    *,
    classes: Sequence[ClassSpec],
    channels: Sequence[str],
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    validation: TrainingData | None = None,
    warm_start: TrainedModel | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedModel:
    """Train a model on raw windows (N, T, F) with optional per-step labels (N, T), calibrate it.

    classes are ordered; on warm start pass warm_start.classes followed by any new ones.
    Raises InvalidInput / UnknownClass / NotEnoughData for bad data, TrainingCancelled when
    should_stop() returns True (checked between epochs).
    """
    tc = dataclasses.replace(train_config) if train_config is not None else TrainConfig()
    tc.validate()
    class_specs = check_classes(classes)
    windows = check_windows(data.windows)
    N, T, Fn = windows.shape
    channel_names = check_channels(channels, Fn)
    K = len(class_specs)
    labels = None
    if data.labels is not None:
        labels = check_labels(data.labels, n_windows=N, window_size=T, n_classes=K)
    if N < MIN_WINDOWS:
        raise NotEnoughData(f"need at least {MIN_WINDOWS} windows to train; got {N}")
    base = model_config or (warm_start.config if warm_start is not None else ModelConfig())
    cfg = dataclasses.replace(base, window_size=T, n_channels=Fn, n_classes=K)
    cfg.validate()
    if warm_start is not None:
        _check_warm_start(warm_start, class_specs, channel_names, T)

    rng = np.random.default_rng(tc.seed)
    val: _Split | None
    if validation is not None:
        val_windows = check_windows(
            validation.windows, window_size=T, n_channels=Fn, name="validation windows"
        )
        val_labels = None
        if validation.labels is not None:
            val_labels = check_labels(
                validation.labels, n_windows=val_windows.shape[0], window_size=T, n_classes=K
            )
        train, val = _Split(windows, labels), _Split(val_windows, val_labels)
    else:
        train, val = _split(windows, labels, tc.val_fraction, rng)

    n_train = train.windows.shape[0]
    eligible = elbo_eligible(train.labels, class_specs, n_train)  # (N,) may feed the ELBO
    labelled = labelled_windows(train.labels, n_train)
    if cfg.variant == "es":
        groups = [np.flatnonzero(labelled)]
        if groups[0].size < 2:
            raise NotEnoughData(
                "an ES model learns from labels only: need at least 2 labelled training "
                f"windows; got {groups[0].size}"
            )
    elif cfg.variant == "eu":
        groups = [np.flatnonzero(eligible)]
    else:
        groups = [g for g in (np.flatnonzero(~labelled), np.flatnonzero(labelled)) if g.size]
    if cfg.variant != "es" and eligible.sum() < 2:
        raise NotEnoughData(
            "need at least 2 training windows that are unlabelled or labelled normal to learn "
            f"normal behaviour; got {int(eligible.sum())}"
        )

    if warm_start is not None and tc.warm_start_normalisation == "keep":
        norm = warm_start.normalisation
    else:
        norm = Normalisation.fit(train.windows)
    x_train = norm.apply(train.windows)
    x_val = norm.apply(val.windows) if val is not None else None
    val_eligible = (
        elbo_eligible(val.labels, class_specs, val.windows.shape[0]) if val is not None else None
    )
    label_counts = np.zeros(K, dtype=np.int64)
    if train.labels is not None:
        label_counts = np.bincount(train.labels[train.labels >= 0], minlength=K)

    metrics: dict[str, float | int | str] = {
        "n_train_windows": n_train,
        "n_val_windows": 0 if val is None else int(val.windows.shape[0]),
        "n_labelled_windows": int(labelled.sum()),
        "n_elbo_windows": int(eligible.sum()),
    }
    started = time.perf_counter()
    alpha = class_weights(class_specs, alpha=tc.alpha, event_alpha=tc.event_alpha)  # (K,)
    feedback = [
        i
        for i, spec in enumerate(class_specs)
        if spec.name in (FALSE_POSITIVE, FALSE_NEGATIVE) and label_counts[i] > 0
    ]
    # labels that teach pi classes to tell apart (not only feedback or anomaly kinds) earn the
    # class head its longer floor (TrainConfig.class_min_steps)
    classifying = cfg.variant != "eu" and any(
        label_counts[i] > 0 and not marks_events(spec) for i, spec in enumerate(class_specs)
    )
    nets: list[SemiSupervisedVAE] = []
    with _threads(tc.threads), torch.random.fork_rng(devices=[]):
        for k in range(tc.members):
            # Member 0 keeps the single model's seeds; the others draw their own.
            torch.manual_seed(tc.seed + k * MEMBER_SEED_STRIDE)
            member_rng = rng if k == 0 else np.random.default_rng(tc.seed + k * MEMBER_SEED_STRIDE)
            net = SemiSupervisedVAE(cfg)
            if warm_start is not None:
                counts = transfer_weights(net, warm_start.nets[k % len(warm_start.nets)])
                metrics["warm_start_copied"] = counts["copied"]
                metrics["warm_start_grown"] = counts["grown"]
            if net.has_pi:
                net.class_mask.copy_(
                    torch.from_numpy(predictable_classes(class_specs, label_counts))
                )
            _train(
                net, tc, x_train, train.labels, eligible, groups, x_val, val, val_eligible,
                member_rng, metrics if k == 0 else {}, _member_progress(progress, k, tc.members),
                should_stop, feedback, alpha, classifying,
            )  # fmt: skip
            if should_stop is not None and should_stop():
                raise TrainingCancelled(
                    f"training was cancelled after step {metrics['steps_run']} of "
                    f"{metrics['step_budget']} (member {k + 1} of {tc.members})"
                )
            nets.append(net)
        metrics["members"] = tc.members
        if cfg.complexity_correction and nets[0].has_decoder:
            reference = complexity_reference(x_train[eligible], cfg.complexity_floor)
            for net in nets:
                net.complexity_reference.copy_(reference)
        fp = next((i for i, c in enumerate(class_specs) if c.name == FALSE_POSITIVE), None)
        dismissed = (
            (train.labels == fp).any(axis=1)
            if fp is not None and train.labels is not None
            else np.zeros(n_train, dtype=bool)
        )
        trained_feedback = {class_specs[i].name: i for i in feedback}
        calibrations = _calibrate(
            nets, tc, x_train, eligible, x_val, val_eligible, rng, x_train[dismissed],
            trained_feedback,
        )  # fmt: skip
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    if calibrations:
        cal = calibrations[min(calibrations)]
        metrics["calibration_source"] = cal.source
        metrics["calibration_outliers"] = cal.n_outliers
        metrics["threshold"] = float(np.quantile(cal.normal_scores, tc.threshold_quantile))

    return TrainedModel(
        profile=DataProfile.fit(train.windows[eligible]) if eligible.any() else None,
        net=nets,
        classes=class_specs,
        channels=channel_names,
        normalisation=norm,
        calibrations=calibrations,
        threshold_quantile=tc.threshold_quantile,
        label_counts=tuple(int(c) for c in label_counts),
        train_config=tc,
        metrics=metrics,
    )


def complexity_reference(x: np.ndarray, floor: float) -> torch.Tensor:
    """(F,) the median per-channel code length of standardised windows x (N, T, F)."""
    codes = window_complexity(torch.from_numpy(x), floor)  # (N, F)
    return codes.median(dim=0).values


def _member_progress(
    progress: Callable[[Progress], None] | None, member: int, members: int
) -> Callable[[Progress], None] | None:
    """Progress of one ensemble member as progress of the whole fit."""
    if progress is None or members == 1:
        return progress
    report, started = progress, time.perf_counter()

    def scaled(p: Progress) -> None:
        per_member = (time.perf_counter() - started) * p.steps / max(p.step, 1)
        eta = None if p.eta_seconds is None else p.eta_seconds + (members - member - 1) * per_member
        report(
            Progress(
                member * p.epochs + p.epoch,
                members * p.epochs,
                p.train_loss,
                p.val_loss,
                eta,
                member * p.steps + p.step,
                members * p.steps,
            )
        )

    return scaled


def _batch_stream(
    groups: list[np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Batches without end: one epoch's `_batches` after another, each freshly shuffled."""
    while True:
        yield from _batches(groups, batch_size, rng)


def _train(
    net: SemiSupervisedVAE,
    tc: TrainConfig,
    x_train: np.ndarray,
    labels: np.ndarray | None,
    eligible: np.ndarray,
    groups: list[np.ndarray],
    x_val: np.ndarray | None,
    val: _Split | None,
    val_eligible: np.ndarray | None,
    rng: np.random.Generator,
    metrics: dict[str, float | int | str],
    progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
    feedback: list[int],
    alpha: torch.Tensor,
    classifying: bool,
) -> None:
    """The training loop: RMSprop for a budget of optimiser steps, a validation check after
    every round (an epoch, or `eval_every` steps), early stopping once the floor is passed,
    and the best weights restored."""
    optimizer = torch.optim.RMSprop(net.parameters(), lr=tc.lr, momentum=tc.momentum)
    xt = torch.from_numpy(x_train)  # (N, T, F)
    lt = torch.from_numpy(labels) if labels is not None else None  # (N, T)
    mt = torch.from_numpy(eligible)  # (N,)

    batch_size = tc.batch_for(x_train.shape[0])
    per_epoch = len(_batches(groups, batch_size, np.random.default_rng(0)))
    budget = tc.budget(per_epoch, classifying=classifying)
    floor = tc.early_stop_floor(budget, classifying=classifying)
    if tc.epochs is not None and tc.steps is None:
        round_steps = per_epoch
    else:
        round_steps = tc.eval_every or max(10, budget // 30)
    rounds = math.ceil(budget / round_steps)
    metrics.update({"batch_size": batch_size, "step_budget": budget, "step_floor": floor})
    batches = _batch_stream(groups, batch_size, rng)
    noise = make_generator(tc.seed + 2)

    best_loss, best_state, best_step, bad_rounds = math.inf, None, 0, 0
    train_loss, step, seconds = math.nan, 0, 0.0
    stopped = "budget"
    for round_ in range(1, rounds + 1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"training was cancelled after step {step} of {budget}")
        started = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        for _ in range(min(round_steps, budget - step)):
            idx = next(batches)
            it = torch.from_numpy(idx)
            x_in = xt[it]
            if tc.input_noise > 0:  # denoising: the loss below still reads the clean windows
                x_in = x_in + tc.input_noise * torch.randn(
                    x_in.shape, generator=noise, dtype=x_in.dtype
                )
            out = net(x_in)
            terms = vae_loss(
                out,
                xt[it],
                lt[it] if lt is not None else None,
                mt[it],
                alpha=alpha,
                beta=tc.beta,
                feedback=feedback,
                gamma=tc.event_alpha * tc.feedback_negative_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()  # type: ignore[no-untyped-call]
            if tc.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            optimizer.step()
            total += float(terms.total.detach()) * idx.size
            count += idx.size
            step += 1
        train_loss = total / count

        val_loss: float | None = None
        if x_val is not None and val is not None and val_eligible is not None:
            stats = dataset_objective(
                net, x_val, val.labels, val_eligible, alpha=alpha, beta=tc.beta,
                n_samples=1, generator=make_generator(tc.seed + 1),
            )  # fmt: skip
            val_loss = None if math.isnan(stats["loss"]) else stats["loss"]
        seconds += time.perf_counter() - started

        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            if best_state is None:
                raise ModelError(
                    f"training diverged (the loss is not finite at step {step}); "
                    "try a smaller lr or check the data"
                )
            stopped = "diverged"
            break
        if val_loss is not None:
            if val_loss < best_loss:
                best_loss, best_step, bad_rounds = val_loss, step, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad_rounds += 1
        if progress is not None:
            eta = seconds / step * (budget - step)
            progress(Progress(round_, rounds, train_loss, val_loss, eta, step, budget))
        if val_loss is not None and bad_rounds >= tc.patience and step >= floor:
            stopped = "early"
            break

    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    metrics["stopped"] = stopped
    metrics["steps_run"] = step
    metrics["epochs_run"] = round(step / per_epoch, 2) if tc.epochs is None else round_
    metrics["best_step"] = best_step if best_state is not None else step
    metrics["best_val_loss"] = best_loss if best_state is not None else math.nan
    metrics["final_train_loss"] = train_loss
    metrics["seconds_per_step"] = round(seconds / max(step, 1), 5)


def _calibrate(
    net: list[SemiSupervisedVAE],
    tc: TrainConfig,
    x_train: np.ndarray,
    eligible: np.ndarray,
    x_val: np.ndarray | None,
    val_eligible: np.ndarray | None,
    rng: np.random.Generator,
    dismissed: np.ndarray,
    feedback_index: dict[str, int],
) -> dict[int, Calibration]:
    """One Calibration per L in {1, calibration_samples, score_samples}: center/scale from
    normal training windows, the feedback ceiling from the windows operators marked false_positive
    (`dismissed`), and the threshold scores from held-out normal windows (pooled with training
    ones if few), adjusted by the feedback classes in `feedback_index` as scoring will."""
    if not net[0].has_decoder:
        return {}
    train_idx = np.flatnonzero(eligible)
    if train_idx.size > MAX_CALIBRATION_TRAIN_WINDOWS:
        train_idx = np.sort(rng.choice(train_idx, MAX_CALIBRATION_TRAIN_WINDOWS, replace=False))
    normal_val = (
        x_val[val_eligible] if x_val is not None and val_eligible is not None else x_train[:0]
    )
    if normal_val.shape[0] >= MIN_CALIBRATION_WINDOWS:
        normal, source = normal_val, "validation"
    elif normal_val.shape[0] > 0:
        normal, source = np.concatenate([normal_val, x_train[train_idx]]), "validation+training"
    else:
        normal, source = x_train[train_idx], "training"
    probs = None
    if feedback_index and net[0].has_pi:
        out = infer(net, normal, n_samples=1, generator=make_generator(0), reconstruction=False)
        assert out.step_probabilities is not None
        probs = out.step_probabilities.mean(axis=1)  # (M, K) window level, as score() has it
    p_fp = p_fn = None
    if probs is not None and FALSE_POSITIVE in feedback_index:
        p_fp = probs[:, feedback_index[FALSE_POSITIVE]]
    if probs is not None and FALSE_NEGATIVE in feedback_index:
        p_fn = probs[:, feedback_index[FALSE_NEGATIVE]]  # floored in fit_calibration

    result: dict[int, Calibration] = {}
    for L in sorted({1, tc.calibration_samples, tc.score_samples or 1}):

        def raw(x: np.ndarray, L: int = L) -> np.ndarray:
            out = infer(
                net, x, n_samples=L, generator=make_generator(tc.seed + 2), classes=False,
                elements=False,
            )  # fmt: skip
            assert out.raw_score is not None
            return out.raw_score

        train_raw = raw(x_train[train_idx])
        ceiling = math.inf
        if dismissed.shape[0]:
            center, scale = center_and_scale(train_raw)
            ceiling = float(calibrate(raw(dismissed), center, scale).max())
        result[L] = fit_calibration(
            train_raw,
            raw(normal),
            n_samples=L,
            source=source,
            fp_ceiling=ceiling,
            p_false_positive=p_fp,
            p_false_negative=p_fn,
        )
    return result

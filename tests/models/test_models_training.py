"""fit(): flavours x variants, batching, reproducibility, progress, stopping, warm start."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import models.train as train_module
from models import (
    BUILTIN_CLASSES,
    ClassSpec,
    InvalidInput,
    Progress,
    SemiSupervisedVAE,
    TrainingCancelled,
    TrainingData,
    UnsupportedOperation,
    fit,
)
from models.train import _batches, transfer_weights
from tests.models.models_testkit import CHANNELS, T, inject_faults, quick, sine_windows, tiny_config

NORMAL_ANOMALY = BUILTIN_CLASSES[:2]


def labelled_data(n: int = 40, seed: int = 0) -> TrainingData:
    x = sine_windows(n, seed=seed)
    x[:6] = inject_faults(x[:6])
    labels = np.full((n, T), -1, dtype=np.int64)
    labels[:6] = 1  # anomaly
    labels[6:12] = 0  # normal
    labels[12:14, : T // 2] = 2  # false_positive on half a window
    return TrainingData(x, labels)


@pytest.mark.parametrize("flavour", ["recurrent", "dense", "conv"])
@pytest.mark.parametrize("variant", ["ss", "eu", "es"])
def test_each_flavour_and_variant_trains_and_scores(flavour: str, variant: str) -> None:
    data = labelled_data()
    model = fit(
        data,
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(flavour, variant),
        train_config=quick(epochs=1),
    )
    assert model.metrics["epochs_run"] == 1
    assert model.config.flavour == flavour and model.config.variant == variant
    new = sine_windows(5, seed=9)
    if variant == "es":
        with pytest.raises(UnsupportedOperation, match="ES model"):
            model.score(new)
    else:
        batch = model.score(new)
        assert batch.raw_score.shape == (5,)
        assert np.isfinite(batch.raw_score).all()
        assert (batch.score >= 0).all()
        assert batch.channel_contributions.shape == (5, 3)
        assert batch.step_contributions.shape == (5, T)
        assert batch.class_probabilities.shape == (5, 4)
    if variant == "eu":
        with pytest.raises(UnsupportedOperation, match="EU model"):
            model.predict_proba(new)
        assert np.isnan(model.score(new).class_probabilities).all()
    else:
        probs = model.predict_proba(new)
        assert probs.shape == (5, 4)
        assert np.allclose(probs.sum(axis=1), 1.0)
        assert model.predict_proba(new, per_step=True).shape == (5, T, 4)


def test_same_seed_gives_identical_weights() -> None:
    data = labelled_data()

    def weights(seed: int) -> dict[str, torch.Tensor]:
        model = fit(
            data,
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=tiny_config("conv"),  # conv: dropout and batch norm too
            train_config=quick(seed=seed),
        )
        return model.net.state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_encoder_reads_noisy_windows_and_the_loss_the_clean_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Denoising (TrainConfig.input_noise): noise of that sd reaches the network's input in
    training; the objective still scores the clean, standardised windows."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_loss, real_forward = train_module.vae_loss, SemiSupervisedVAE.forward
    inputs: list[torch.Tensor] = []

    def forward(self: SemiSupervisedVAE, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            inputs.append(x.detach().clone())
        return real_forward(self, x, *args, **kwargs)

    def loss(out: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append((inputs[-1], x.detach().clone()))
        return real_loss(out, x, *args, **kwargs)

    monkeypatch.setattr(SemiSupervisedVAE, "forward", forward)
    monkeypatch.setattr(train_module, "vae_loss", loss)
    data = labelled_data()
    for noise in (0.0, 0.3):
        seen.clear()
        model = fit(
            data,
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=tiny_config("recurrent"),
            train_config=dataclasses.replace(quick(seed=1), input_noise=noise, members=1),
        )
        clean = torch.from_numpy(model.normalisation.apply(data.windows))
        differences = torch.cat([(noisy - target).flatten() for noisy, target in seen])
        assert seen
        for _, target in seen:  # every target is a clean training window
            assert all(any(torch.equal(w, c) for c in clean) for w in target)
        assert abs(float(differences.std()) - noise) < 0.05


def test_fit_leaves_the_global_rng_and_thread_count_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    fit(
        labelled_data(),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=1, threads=2),
    )
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_batches_are_one_to_one_labelled_to_unlabelled() -> None:
    rng = np.random.default_rng(0)
    unlabelled, rare = np.arange(0, 30), np.arange(100, 103)
    batches = _batches([unlabelled, rare], 8, rng)
    for batch in batches:
        assert (batch < 100).sum() == (batch >= 100).sum()  # 1 : 1
    seen = np.concatenate(batches)
    assert sorted(seen[seen < 100].tolist()) == unlabelled.tolist()  # one pass over unlabelled
    assert (seen >= 100).sum() == 30  # the 3 labelled ones upsampled
    # The larger group sets the epoch whichever it is, so batches stay full: 6 unlabelled
    # windows beside 100 labelled ones give 25 batches of 4 + 4, not 2 batches of 3 + 3.
    plentiful = np.arange(100, 200)
    lopsided = _batches([np.arange(6), plentiful], 8, rng)
    assert [b.size for b in lopsided] == [8] * 25
    seen = np.concatenate(lopsided)
    assert sorted(seen[seen >= 100].tolist()) == plentiful.tolist()  # one pass, no repeats
    assert (seen < 100).sum() == 100  # the 6 unlabelled ones upsampled
    assert all((b < 100).sum() == 4 for b in lopsided)
    one = _batches([np.arange(1), np.arange(100, 149)], 8, rng)  # GunPoint, every label given
    assert min(b.size for b in one) >= 6
    single = _batches([np.arange(9)], 4, rng)
    assert sorted(np.concatenate(single).tolist()) == list(range(9))
    assert min(b.size for b in single) >= 2  # batch norm never sees a batch of one


def test_progress_once_per_epoch_and_cancellation() -> None:
    reports: list[Progress] = []
    fit(
        labelled_data(),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=3, patience=10),
        progress=reports.append,
    )
    assert [p.epoch for p in reports] == [1, 2, 3]
    assert all(p.epochs == 3 and p.val_loss is not None for p in reports)
    assert [p.step for p in reports] == [reports[0].step * i for i in (1, 2, 3)]
    assert all(p.steps == reports[0].step * 3 for p in reports)
    assert all(p.eta_seconds is not None and p.eta_seconds >= 0 for p in reports)
    assert reports[-1].eta_seconds == 0

    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    per_epoch = reports[0].step
    with pytest.raises(TrainingCancelled, match=f"after step {2 * per_epoch} of {5 * per_epoch}"):
        fit(
            labelled_data(),
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=tiny_config(),
            train_config=quick(epochs=5),
            should_stop=stop_after_two,
        )


def test_early_stopping_restores_the_best_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([5.0, 4.0, 6.0, 7.0, 8.0, 9.0])
    snapshots: list[dict[str, torch.Tensor]] = []
    real = train_module.dataset_objective  # type: ignore[attr-defined]

    def fake(net: SemiSupervisedVAE, *args: Any, **kwargs: Any) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        stats = real(net, *args, **kwargs)
        stats["loss"] = next(scripted)
        return stats

    monkeypatch.setattr(train_module, "dataset_objective", fake)
    model = fit(
        labelled_data(),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=6, patience=2),
    )
    assert model.metrics["stopped"] == "early"
    assert model.metrics["epochs_run"] == 4  # best at 2, then two epochs without improvement
    assert model.metrics["best_step"] == 2 * model.metrics["steps_run"] / 4
    assert model.metrics["best_val_loss"] == 4.0
    final = dict(model.net.named_parameters())  # the buffers are set after training
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


def test_explicit_validation_and_no_validation() -> None:
    data = labelled_data()
    model = fit(
        data,
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=1),
        validation=TrainingData(sine_windows(12, seed=5)),
    )
    assert model.metrics["n_train_windows"] == 40
    assert model.metrics["n_val_windows"] == 12
    assert model.metrics["calibration_source"] == "validation"
    no_val = fit(
        data,
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=1, val_fraction=0.0),
    )
    assert no_val.metrics["n_val_windows"] == 0
    assert no_val.metrics["calibration_source"] == "training"
    assert no_val.threshold() >= 0


# -----------------------------------------------------------------------------
# warm start


def two_class_data(seed: int = 0) -> TrainingData:
    """labelled_data without the false_positive labels: only normal / anomaly."""
    data = labelled_data(seed=seed)
    assert data.labels is not None
    return TrainingData(data.windows, np.where(data.labels > 1, -1, data.labels))


@pytest.fixture(scope="module")
def two_class_model() -> Any:
    return fit(
        two_class_data(),
        classes=NORMAL_ANOMALY,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=3),
    )


def test_growing_pi_keeps_old_rows_and_old_predictions(two_class_model: Any) -> None:
    old = two_class_model
    cfg = dataclasses.replace(old.config, n_classes=4)
    torch.manual_seed(0)
    new = SemiSupervisedVAE(cfg).eval()
    counts = transfer_weights(new, old.net)
    assert counts["grown"] == 3  # pi_head.weight, pi_head.bias, decoder.inp.weight
    assert counts["copied"] == counts["total"] - 3
    assert new.pi_head is not None and old.net.pi_head is not None
    assert torch.equal(new.pi_head.weight[:2], old.net.pi_head.weight)
    assert torch.equal(new.pi_head.bias[:2], old.net.pi_head.bias)
    assert new.decoder is not None and old.net.decoder is not None
    d = old.net.decoder.inp.weight.shape[1]
    assert torch.equal(new.decoder.inp.weight[:, :d], old.net.decoder.inp.weight)
    assert float(new.decoder.inp.weight[:, d:].detach().abs().sum()) == 0.0

    x = torch.from_numpy(old.normalisation.apply(sine_windows(8, seed=3).astype(np.float64)))
    with torch.no_grad():
        old_logits, new_logits = old.net.encode(x).pi_logits, new.encode(x).pi_logits
    assert old_logits is not None and new_logits is not None
    before, after = torch.softmax(old_logits, dim=-1), torch.softmax(new_logits, dim=-1)
    assert (after[..., :2] - before).abs().max() < 0.05  # old classes barely move
    assert after[..., 2:].max() < 0.1  # new classes start unlikely


def test_warm_start_fit_grows_classes_and_keeps_knowledge(two_class_model: Any) -> None:
    old = two_class_model
    x = sine_windows(8, seed=4)
    model = fit(
        labelled_data(seed=1),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        train_config=quick(epochs=1, lr=1e-6),  # barely moves: old knowledge must survive
        warm_start=old,
    )
    assert model.classes == BUILTIN_CLASSES
    assert model.config.n_classes == 4
    assert model.metrics["warm_start_grown"] == 3
    assert np.array_equal(model.normalisation.mean, old.normalisation.mean)  # kept
    old_probs, new_probs = old.predict_proba(x), model.predict_proba(x)
    assert np.abs(new_probs[:, :2] - old_probs).max() < 0.05


def test_warm_start_from_eu_copies_the_encoder(two_class_model: Any) -> None:
    eu = fit(
        two_class_data(),
        classes=NORMAL_ANOMALY,
        channels=CHANNELS,
        model_config=tiny_config(variant="eu"),
        train_config=quick(epochs=1),
    )
    ss = fit(
        two_class_data(),
        classes=NORMAL_ANOMALY,
        channels=CHANNELS,
        model_config=tiny_config(variant="ss"),
        train_config=quick(epochs=1, lr=1e-9),
        warm_start=eu,
    )
    assert ss.metrics["warm_start_grown"] == 1  # decoder input grew pi columns
    ss_inp, eu_inp = ss.net.state_dict(), eu.net.state_dict()
    assert torch.allclose(ss_inp["encoder.inp.weight"], eu_inp["encoder.inp.weight"], atol=1e-6)


def test_warm_start_refuses_reordered_classes_and_other_channels(two_class_model: Any) -> None:
    data = two_class_data()
    with pytest.raises(InvalidInput, match="must begin with the previous model's classes"):
        fit(
            data,
            classes=(BUILTIN_CLASSES[1], BUILTIN_CLASSES[0]),
            channels=CHANNELS,
            warm_start=two_class_model,
        )
    with pytest.raises(InvalidInput, match="must begin with the previous model's classes"):
        fit(
            data,
            classes=(ClassSpec("normal", "anomaly"), BUILTIN_CLASSES[1]),
            channels=CHANNELS,
            warm_start=two_class_model,
        )
    with pytest.raises(InvalidInput, match="previous model's channels"):
        fit(data, classes=NORMAL_ANOMALY, channels=("x", "y", "z"), warm_start=two_class_model)

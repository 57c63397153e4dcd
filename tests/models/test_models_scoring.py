"""Scoring: reconstruction probability, contributions, calibration, thresholds, feedback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import BUILTIN_CLASSES, P_FN_MAX, ClassSpec, TrainedModel, TrainingData, fit
from models.artifact import pack, unpack
from models.data import predictable_classes
from models.scoring import (
    adjust,
    calibrate,
    fit_calibration,
    nearest_calibration,
    threshold_at,
    window_complexity,
)
from tests.models.models_testkit import (
    CHANNELS,
    T,
    inject_faults,
    quick,
    sine_windows,
    tiny_config,
)

FP, FN = 2, 3


def test_contributions_add_up_to_the_raw_score_for_one_sample(trained_ss: TrainedModel) -> None:
    batch = trained_ss.score(sine_windows(6, seed=3), n_samples=1)
    assert np.allclose(batch.channel_contributions.sum(axis=1), batch.raw_score, rtol=1e-10)
    assert np.allclose(batch.step_contributions.sum(axis=1), batch.raw_score, rtol=1e-10)


def test_contributions_with_many_samples_are_per_element(trained_ss: TrainedModel) -> None:
    """For L > 1 each element is -log mean_l p(x_tf | z_l); recompute it by hand."""
    import torch

    from models.loss import gaussian_nll
    from models.trained import make_generator

    x = sine_windows(4, seed=3)
    L = 8
    batch = trained_ss.score(x, n_samples=L, seed=5)
    total = batch.channel_contributions.sum(axis=1)
    assert np.allclose(total, batch.step_contributions.sum(axis=1))
    net, xs = trained_ss.net, torch.from_numpy(trained_ss.normalisation.apply(x))
    with torch.no_grad():
        mu, logvar, pi_logits = net.encode(xs)
        assert mu is not None and logvar is not None and pi_logits is not None
        # Common random numbers: one draw of eps (L, 1, T, D) shared by every window.
        eps = torch.randn((L, 1, *mu.shape[1:]), generator=make_generator(5), dtype=mu.dtype)
        noise = eps.expand(L, 4, *mu.shape[1:]).reshape(L * 4, *mu.shape[1:])
        z = mu.repeat(L, 1, 1) + torch.exp(0.5 * logvar.repeat(L, 1, 1)) * noise
        pi = torch.softmax(pi_logits, -1).repeat(L, 1, 1)
        x_mu, x_sigma = net.decode(z, pi, xs.repeat(L, 1, 1))
        log_p = -gaussian_nll(xs.repeat(L, 1, 1), x_mu, x_sigma).double().view(L, 4, T, 3)
    code = window_complexity(xs, net.cfg.complexity_floor)  # (4, F)
    simpler = (net.complexity_reference - code).clamp_min(0.0).numpy()
    elements = -(torch.logsumexp(log_p, dim=0) - np.log(L)).numpy() + simpler[:, None, :] / T
    assert np.allclose(batch.step_contributions, elements.sum(axis=2))
    raw = -(torch.logsumexp(log_p.sum(dim=(2, 3)), dim=0) - np.log(L)).numpy() + simpler.sum(1)
    assert np.allclose(batch.raw_score, raw)


def test_contributions_point_at_the_faulty_channel_and_steps(trained_ss: TrainedModel) -> None:
    x = sine_windows(1, seed=11)
    x[0, 4:7, 1] += 8.0  # a spike on channel b, steps 4-6
    batch = trained_ss.score(x)
    assert int(np.argmax(batch.channel_contributions[0])) == 1
    assert int(np.argmax(batch.step_contributions[0])) in (4, 5, 6)


def test_scoring_is_seeded(trained_ss: TrainedModel) -> None:
    x = sine_windows(5, seed=3)
    a, b = trained_ss.score(x, seed=1), trained_ss.score(x, seed=1)
    c = trained_ss.score(x, seed=2)
    assert np.array_equal(a.raw_score, b.raw_score)
    assert np.array_equal(a.channel_contributions, b.channel_contributions)
    assert not np.array_equal(a.raw_score, c.raw_score)
    assert np.isfinite(trained_ss.score(x, seed=None).raw_score).all()


def test_chunked_inference_matches_shapes(
    trained_ss: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.scoring as scoring

    x = sine_windows(10, seed=3)
    monkeypatch.setattr(scoring, "MAX_ROWS_PER_CHUNK", 3)
    batch = trained_ss.score(x, n_samples=2)
    assert batch.raw_score.shape == (10,)
    assert batch.step_contributions.shape == (10, T)
    assert np.isfinite(batch.raw_score).all()


def test_anomalies_score_higher_than_normal_windows(trained_ss: TrainedModel) -> None:
    normal = sine_windows(20, seed=21)
    batch_n = trained_ss.score(normal)
    batch_a = trained_ss.score(inject_faults(normal))
    assert np.median(batch_a.score) > np.median(batch_n.score)


@pytest.mark.parametrize("reading", [3.4028234663852886e38, -3e38, 1e30])
def test_a_reading_far_beyond_the_data_is_an_alarm_not_nan(
    trained_ss: TrainedModel, reading: float
) -> None:
    """A finite float32 that overflows once standardised (a failing sensor's 3e38) scores as
    the extreme it is: finite, far above the threshold, flagged."""
    windows = sine_windows(3, seed=22)
    windows[1, 5, 0] = np.float32(reading)
    batch = trained_ss.score(windows)
    assert np.isfinite(batch.raw_score).all() and np.isfinite(batch.adjusted_score).all()
    assert batch.is_anomaly[1] and batch.score[1] > 1e3 * batch.threshold
    assert np.isfinite(batch.channel_contributions).all()


def test_calibrated_score_is_non_negative_and_monotone_in_raw() -> None:
    raw = np.linspace(-1e4, 1e4, 20_001)
    score = calibrate(raw, center=12.0, scale=3.0)
    assert (score >= 0).all()
    assert (np.diff(score) >= 0).all()
    middle = (raw > -500) & (raw < 1e4)
    assert (np.diff(score[middle]) > 0).all()  # strictly increasing where it is not 0


def test_model_scores_are_monotone_in_raw_scores(trained_ss: TrainedModel) -> None:
    x = np.concatenate([sine_windows(30, seed=5), inject_faults(sine_windows(30, seed=6))])
    batch = trained_ss.score(x)
    order = np.argsort(batch.raw_score)
    assert (batch.score >= 0).all()
    assert (np.diff(batch.score[order]) >= 0).all()


def test_threshold_is_monotone_in_the_quantile(trained_ss: TrainedModel) -> None:
    quantiles = np.linspace(0.0, 1.0, 41)
    thresholds = [trained_ss.threshold(float(q)) for q in quantiles]
    assert (np.diff(thresholds) >= 0).all()
    assert thresholds[-1] > thresholds[0]
    assert trained_ss.threshold() == trained_ss.threshold(trained_ss.threshold_quantile)
    batch = trained_ss.score(sine_windows(5, seed=2), threshold_quantile=0.5)
    assert batch.threshold == trained_ss.threshold(0.5)
    assert np.array_equal(batch.is_anomaly, batch.adjusted_score > batch.threshold)


def test_calibration_per_number_of_samples(trained_ss: TrainedModel) -> None:
    assert sorted(trained_ss.calibrations) == [1, 4]  # quick(): calibration_samples=4
    assert trained_ss.calibration_samples == 4
    assert nearest_calibration(trained_ss.calibrations, 1).n_samples == 1
    assert nearest_calibration(trained_ss.calibrations, 3).n_samples == 4
    assert nearest_calibration(trained_ss.calibrations, 100).n_samples == 4
    batch = trained_ss.score(sine_windows(3), n_samples=4)
    assert batch.threshold == trained_ss.threshold(n_samples=4)


def test_fit_calibration_threshold_is_a_quantile_of_normal_scores() -> None:
    rng = np.random.default_rng(0)
    train_raw, normal_raw = rng.normal(100, 5, 500), rng.normal(101, 5, 300)
    cal = fit_calibration(train_raw, normal_raw, n_samples=1, source="validation")
    assert abs(cal.center - 100) < 1.0
    assert abs(cal.scale - 5) < 1.0
    assert (np.diff(cal.normal_scores) >= 0).all()
    assert threshold_at(cal, 0.9) == pytest.approx(
        np.quantile(calibrate(normal_raw, cal.center, cal.scale), 0.9)
    )
    constant = fit_calibration(np.full(10, 3.0), np.full(4, 3.0), n_samples=1, source="training")
    assert constant.scale > 0


def test_adjusted_score_monotone_in_feedback_probabilities() -> None:
    p = np.linspace(0.0, 1.0, 101)
    score = np.full_like(p, 2.0)
    by_fp = adjust(score, p, np.zeros_like(p))
    by_fn = adjust(score, np.zeros_like(p), p)
    assert (np.diff(by_fp) < 0).all()  # a likely false alarm lowers the score
    assert (np.diff(by_fn[p <= P_FN_MAX]) > 0).all()  # a likely missed fault raises it
    assert np.isfinite(by_fn).all()
    assert by_fn.max() == pytest.approx(2.0 / (1 - P_FN_MAX))  # p_fn clamped
    assert adjust(np.array([3.0]), np.array([0.0]), np.array([0.0]))[0] == 3.0


def test_untrained_feedback_classes_do_not_move_scores(trained_ss: TrainedModel) -> None:
    assert trained_ss.label_counts[FP] == 0 and trained_ss.label_counts[FN] == 0
    batch = trained_ss.score(sine_windows(8, seed=4))
    # A feedback class without labels is not in pi's softmax (models.data.predictable_classes).
    assert (batch.class_probabilities[:, FP] == 0).all()
    assert (batch.class_probabilities[:, FN] == 0).all()
    assert np.allclose(batch.class_probabilities.sum(axis=1), 1.0)
    assert (batch.p_false_positive == 0).all()
    assert (batch.p_false_negative == 0).all()
    assert np.array_equal(batch.adjusted_score, batch.score)


def _fit_tiny(x: np.ndarray, labels: np.ndarray) -> TrainedModel:
    """A tiny recurrent model, two epochs, on windows with the built-in classes."""
    return fit(
        TrainingData(x, labels),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=2),
    )


def test_trained_feedback_classes_move_scores() -> None:
    x = sine_windows(48, seed=0)
    labels = np.full((48, T), -1, dtype=np.int64)
    labels[:10] = FP
    labels[10:20] = 0
    model = _fit_tiny(x, labels)
    batch = model.score(sine_windows(6, seed=8))
    assert np.array_equal(batch.p_false_positive, batch.class_probabilities[:, FP])
    assert (batch.p_false_positive > 0).all()
    assert (batch.p_false_negative == 0).all()  # still never labelled
    assert (batch.adjusted_score < batch.score).all()


def test_missed_fault_feedback_counts_beyond_what_normal_windows_reach() -> None:
    from models.scoring import floor_false_negative

    p = np.array([0.0, 0.1, 0.4, 0.7, 1.0])
    assert np.allclose(floor_false_negative(p, 0.4), [0.0, 0.0, 0.0, 0.5, P_FN_MAX])
    assert np.allclose(floor_false_negative(p, 0.0), np.minimum(p, P_FN_MAX))  # no floor
    assert (floor_false_negative(p, 0.999) <= P_FN_MAX).all()  # a floor near 1 stays finite


def test_the_threshold_sees_normal_windows_without_the_missed_fault_head_s_noise() -> None:
    """p_fn on held-out normal windows sets the floor (its FN_FLOOR_QUANTILE quantile), so
    their served scores, and the threshold taken on them, are hardly moved by it."""
    from models.scoring import FN_FLOOR_QUANTILE

    rng = np.random.default_rng(0)
    train_raw, normal_raw = rng.normal(100, 5, 500), rng.normal(100, 5, 400)
    p_fn = rng.uniform(0.0, 0.6, 400)  # a head that says "missed fault" at random
    cal = fit_calibration(
        train_raw, normal_raw, n_samples=1, source="validation", p_false_negative=p_fn
    )
    plain = fit_calibration(train_raw, normal_raw, n_samples=1, source="validation")
    assert cal.fn_floor == pytest.approx(np.quantile(p_fn, FN_FLOOR_QUANTILE))
    assert threshold_at(cal, 0.9) == pytest.approx(threshold_at(plain, 0.9), rel=1e-9)
    # Without the floor the same head would have lifted the threshold by a fifth or more.
    unfloored = calibrate(normal_raw, cal.center, cal.scale) / (1 - p_fn)
    assert np.quantile(unfloored, 0.9) > 1.2 * threshold_at(plain, 0.9)


def test_trained_missed_fault_feedback_reports_the_p_it_applies() -> None:
    x = sine_windows(48, seed=0)
    x[:6] = inject_faults(x[:6], seed=2)
    labels = np.full((48, T), -1, dtype=np.int64)
    labels[:6] = FN
    model = _fit_tiny(x, labels)
    restored = TrainedModel.from_bytes(model.to_bytes())
    for m in (model, restored):
        cal = nearest_calibration(m.calibrations, 1)
        assert 0.0 <= cal.fn_floor < 1.0
        batch = m.score(np.concatenate([sine_windows(6, seed=8), x[:6]]))
        raw_p = batch.class_probabilities[:, FN]
        lifted = np.clip((raw_p - cal.fn_floor) / (1 - cal.fn_floor), 0.0, P_FN_MAX)
        assert np.allclose(batch.p_false_negative, lifted)
        assert (batch.p_false_negative <= raw_p + 1e-12).all()
        assert np.allclose(batch.adjusted_score, batch.score / (1 - batch.p_false_negative))
    assert nearest_calibration(restored.calibrations, 1).fn_floor == pytest.approx(
        nearest_calibration(model.calibrations, 1).fn_floor
    )


def test_es_models_classify_but_do_not_score() -> None:
    from models import UnsupportedOperation

    x = sine_windows(20, seed=0)
    labels = np.zeros((20, T), dtype=np.int64)
    model = fit(
        TrainingData(x, labels),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(variant="es"),
        train_config=quick(epochs=1),
    )
    with pytest.raises(UnsupportedOperation):
        model.score(x)
    with pytest.raises(UnsupportedOperation):
        model.threshold()
    assert model.predict_proba(x).shape == (20, 4)


def test_a_window_scores_the_same_alone_or_in_any_batch(trained_ss: TrainedModel) -> None:
    """The service micro-batches requests: a window's score must not depend on its batch."""
    x = sine_windows(6, seed=4)
    for L in (1, 4):
        together = trained_ss.score(x, n_samples=L)
        for i in range(len(x)):
            alone = trained_ss.score(x[i : i + 1], n_samples=L)
            assert np.allclose(alone.raw_score, together.raw_score[i], rtol=1e-6)
        reversed_ = trained_ss.score(x[::-1], n_samples=L)
        assert np.allclose(reversed_.raw_score[::-1], together.raw_score, rtol=1e-6)


def test_false_positive_feedback_fades_above_the_worst_dismissed_alarm() -> None:
    from models.scoring import FP_CEILING_MARGIN, guard_false_positive

    p = np.full(4, 0.8)
    ceiling = 2.0
    c = FP_CEILING_MARGIN * ceiling
    score = np.array([0.5, c, 2 * c, 10 * c])
    guarded = guard_false_positive(p, score, ceiling)
    assert np.allclose(guarded[:2], 0.8)  # in full up to the ceiling (with its margin)
    assert np.allclose(guarded[2:], [0.8 / 4, 0.8 / 100])  # then as (c / score)^2
    assert np.array_equal(guard_false_positive(p, score, np.inf), p)  # no dismissed alarms


@pytest.mark.parametrize(
    ("flavour", "variant"),
    [("recurrent", "ss"), ("recurrent", "eu"), ("dense", "ss"), ("conv", "ss"), ("conv", "eu")],
)
def test_the_traced_scoring_graph_gives_the_eager_results(
    flavour: str, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score() runs a TorchScript trace of the inference step (it runs without the GIL); it
    must be used for every flavour, and give what the eager step gives at any batch size and L
    (the trace was recorded at batch 3; L = 64 splits 37 windows into chunks of 16). A second
    model of the same architecture gets a copy of the first one's trace with its own weights."""
    from models.scoring import InferenceStep, run_inference
    from models.trained import make_generator

    traces: list[int] = []
    trace = InferenceStep._trace

    def counted(step: InferenceStep) -> torch.jit.ScriptModule:
        traces.append(step.n_samples)
        return trace(step)

    monkeypatch.setattr(InferenceStep, "_trace", counted)

    x = sine_windows(40, seed=0)
    labels = np.full((40, T), -1, dtype=np.int64)
    labels[:8] = 0
    trained = [
        fit(
            TrainingData(x, labels),
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=tiny_config(flavour, variant),
            train_config=quick(epochs=1, seed=seed),
        )
        for seed in (0, 1)
    ]
    windows = trained[0]._prepare(inject_faults(sine_windows(37, seed=5)))
    raw: list[np.ndarray] = []
    for model in trained:
        for n in (1, 2, 37):
            for L in (1, 3, 64):
                step, call = model._scoring_step(L)
                assert call is not None, "tracing failed: scoring would hold the GIL per operation"
                eps = step.draw_noise(make_generator(7))
                traced = run_inference(step, windows[:n], eps=eps, call=call)
                eager = run_inference(InferenceStep(model.net, n_samples=L), windows[:n], eps=eps)
                for name in ("raw_score", "elements", "step_probabilities"):
                    got, want = getattr(traced, name), getattr(eager, name)
                    if variant == "eu" and name == "step_probabilities":
                        assert got is None and want is None
                        continue
                    assert got.shape == want.shape
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)
        raw.append(model.score(windows).raw_score)
    assert not np.allclose(raw[0], raw[1])  # each model scored with its own weights
    assert sorted(traces) == sorted(set(traces))  # at most one trace per L, for both models


def test_the_window_code_length_is_shortest_for_simple_windows() -> None:
    import torch

    rng = np.random.default_rng(0)
    flat = torch.zeros((1, T, 3), dtype=torch.float64)
    noisy = torch.from_numpy(rng.normal(size=(1, T, 3)))
    smooth = torch.from_numpy(np.cumsum(rng.normal(scale=0.1, size=(1, T, 3)), axis=1))
    floor = 1e-2
    c_flat, c_noisy, c_smooth = (window_complexity(x, floor) for x in (flat, noisy, smooth))
    expected = 0.5 * T * (np.log(2 * np.pi * 1e-4) + 1)
    assert torch.allclose(c_flat, torch.full((1, 3), expected, dtype=torch.float64))
    assert (c_flat < c_smooth).all() and (c_smooth < c_noisy).all()


def test_pi_predicts_normal_kinds_always_and_event_classes_once_labelled() -> None:
    counts = np.array([0, 0, 0, 0])
    assert predictable_classes(BUILTIN_CLASSES, counts).tolist() == [True, False, False, False]
    counts = np.array([0, 0, 5, 0])  # false_positive labelled
    assert predictable_classes(BUILTIN_CLASSES, counts).tolist() == [True, False, True, False]
    events = (ClassSpec("leak", "anomaly"), ClassSpec("false_positive", "normal"))
    assert predictable_classes(events, np.array([0, 0])).tolist() == [True, True]  # none left


def test_the_class_mask_travels_with_the_weights_and_old_artifacts_predict_every_class(
    trained_ss: TrainedModel,
) -> None:
    windows = sine_windows(4, seed=5)
    restored = TrainedModel.from_bytes(trained_ss.to_bytes())
    assert np.array_equal(restored.predict_proba(windows), trained_ss.predict_proba(windows))
    assert (restored.predict_proba(windows)[:, FP] == 0).all()
    tensors, document = unpack(trained_ss.to_bytes())
    old = {k: v for k, v in tensors.items() if not k.endswith(".class_mask")}
    assert len(old) < len(tensors)
    before_the_mask = TrainedModel.from_bytes(pack(old, document))
    assert (before_the_mask.predict_proba(windows)[:, FP] > 0).all()

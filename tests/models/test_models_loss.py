"""The loss terms: KL on z only, masked per-step CE, which windows feed the ELBO."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import BUILTIN_CLASSES, SemiSupervisedVAE
from models.data import elbo_eligible
from models.loss import (
    class_weights,
    gaussian_nll,
    kl_standard_normal,
    masked_cross_entropy,
    vae_loss,
)
from models.model import VAEOutput
from tests.models.models_testkit import F, T, tiny_config

K = 4
NORMAL, ANOMALY, FP, FN = 0, 1, 2, 3


def output(b: int = 3, seed: int = 0, pi_scale: float = 1.0) -> VAEOutput:
    g = torch.Generator().manual_seed(seed)
    mu, logvar = torch.randn(b, T, 2, generator=g), torch.randn(b, T, 2, generator=g)
    return VAEOutput(
        mu=mu,
        logvar=logvar,
        z=mu,
        pi_logits=pi_scale * torch.randn(b, T, K, generator=g),
        x_mu=torch.randn(b, T, F, generator=g),
        x_sigma=torch.rand(b, T, F, generator=g) + 0.5,
    )


def test_gaussian_nll_and_kl_match_torch_distributions() -> None:
    out = output()
    x = torch.randn(3, T, F)
    assert out.x_mu is not None and out.x_sigma is not None and out.mu is not None
    assert out.logvar is not None
    expected_nll = -torch.distributions.Normal(out.x_mu, out.x_sigma).log_prob(x)  # type: ignore[no-untyped-call]
    assert torch.allclose(gaussian_nll(x, out.x_mu, out.x_sigma), expected_nll, atol=1e-5)
    q = torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar))
    p = torch.distributions.Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu))
    expected_kl = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2))
    assert torch.allclose(kl_standard_normal(out.mu, out.logvar), expected_kl, atol=1e-4)


def test_kl_acts_on_z_only_not_on_pi() -> None:
    x = torch.randn(3, T, F)
    mask = torch.ones(3, dtype=torch.bool)
    labels = torch.zeros(3, T, dtype=torch.long)
    a = vae_loss(output(pi_scale=1.0), x, labels, mask, alpha=1.0, beta=1.0)
    b = vae_loss(output(pi_scale=5.0), x, labels, mask, alpha=1.0, beta=1.0)
    assert torch.equal(a.kl, b.kl)  # pi changed, KL did not
    assert not torch.equal(a.ce, b.ce)


def test_kl_gradient_never_reaches_the_pi_head() -> None:
    cfg = dataclasses.replace(tiny_config(), window_size=T, n_channels=F, n_classes=K)
    torch.manual_seed(0)
    net = SemiSupervisedVAE(cfg)
    out = net(torch.randn(4, T, F))
    assert out.mu is not None and out.logvar is not None
    kl_standard_normal(out.mu, out.logvar).sum().backward()  # type: ignore[no-untyped-call]
    assert net.pi_head is not None and net.mu_head is not None
    assert net.pi_head.weight.grad is None
    assert net.mu_head.weight.grad is not None and net.mu_head.weight.grad.abs().sum() > 0


def test_no_ce_term_without_labels() -> None:
    out, x = output(), torch.randn(3, T, F)
    mask = torch.ones(3, dtype=torch.bool)
    unlabelled = torch.full((3, T), -1, dtype=torch.long)
    for labels in (unlabelled, None):
        terms = vae_loss(out, x, labels, mask, alpha=10.0, beta=0.5)
        assert terms.n_labelled == 0
        assert float(terms.ce) == 0.0
        assert torch.allclose(terms.total, terms.nll + 0.5 * terms.kl)


def test_masked_ce_counts_labelled_steps_only() -> None:
    out = output(b=2)
    assert out.pi_logits is not None
    labels = torch.full((2, T), -1, dtype=torch.long)
    labels[0, :4] = ANOMALY  # a label covering part of window 0
    per_window = masked_cross_entropy(out.pi_logits, labels)
    manual = -torch.log_softmax(out.pi_logits[0, :4], dim=-1)[:, ANOMALY].sum()
    assert torch.allclose(per_window[0], manual)
    assert float(per_window[1]) == 0.0
    changed = out.pi_logits.clone()
    changed[0, 4:] += 3.0 * torch.randn(T - 4, K)  # unlabelled steps of window 0
    changed[1] += 1.0  # the unlabelled window
    assert torch.allclose(masked_cross_entropy(changed, labels), per_window)


def test_ce_is_normalised_by_the_number_of_labelled_windows() -> None:
    out, x = output(b=3), torch.randn(3, T, F)
    assert out.pi_logits is not None
    mask = torch.ones(3, dtype=torch.bool)
    labels = torch.full((3, T), -1, dtype=torch.long)
    labels[0], labels[2, :3] = NORMAL, FP
    terms = vae_loss(out, x, labels, mask, alpha=2.0, beta=1.0)
    per_window = masked_cross_entropy(out.pi_logits, labels)
    assert terms.n_labelled == 2
    assert torch.allclose(terms.ce, per_window.sum() / 2)
    assert torch.allclose(terms.total, terms.nll + terms.kl + 2.0 * terms.ce)


def test_which_windows_may_feed_the_elbo() -> None:
    labels = np.full((6, T), -1, dtype=np.int64)
    labels[1] = NORMAL
    labels[2] = FP
    labels[3, 5] = ANOMALY  # one anomalous step is enough to exclude the window
    labels[4, :2] = FN
    labels[5, :2], labels[5, 2:] = NORMAL, FP
    eligible = elbo_eligible(labels, BUILTIN_CLASSES, 6)
    assert eligible.tolist() == [True, True, True, False, False, True]
    assert elbo_eligible(None, BUILTIN_CLASSES, 2).tolist() == [True, True]


@pytest.mark.parametrize(("label", "in_elbo"), [(ANOMALY, False), (FN, False), (FP, True)])
def test_excluded_windows_add_no_elbo(label: int, in_elbo: bool) -> None:
    out = output(b=2)
    labels = torch.full((2, T), -1, dtype=torch.long)
    labels[1] = label
    mask = torch.from_numpy(elbo_eligible(labels.numpy(), BUILTIN_CLASSES, 2))
    x = torch.randn(2, T, F)
    x_moved = x.clone()
    x_moved[1] += 10.0  # window 1 changes a lot
    a = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0)
    b = vae_loss(out, x_moved, labels, mask, alpha=1.0, beta=1.0)
    assert a.n_elbo == (2 if in_elbo else 1)
    assert torch.equal(a.nll, b.nll) != in_elbo
    assert a.n_labelled == 1  # the CE sees the window either way
    if not in_elbo:  # the ELBO equals that of window 0 alone
        only = vae_loss(
            VAEOutput(*(t[:1] if t is not None else None for t in out)),
            x[:1],
            None,
            torch.ones(1, dtype=torch.bool),
            alpha=1.0,
            beta=1.0,
        )
        assert torch.allclose(a.nll, only.nll)
        assert torch.allclose(a.kl, only.kl)


def test_batch_without_elbo_windows_has_zero_elbo_terms() -> None:
    out, x = output(b=2), torch.randn(2, T, F)
    labels = torch.full((2, T), ANOMALY, dtype=torch.long)
    terms = vae_loss(out, x, labels, torch.zeros(2, dtype=torch.bool), alpha=1.0, beta=1.0)
    assert terms.n_elbo == 0
    assert float(terms.nll) == 0.0 and float(terms.kl) == 0.0
    assert float(terms.ce) > 0.0


def test_unlabelled_windows_push_down_the_labelled_feedback_classes() -> None:
    """With false_positive labelled, each unlabelled window adds -log(1 - p_fp) per step."""
    out = output(b=3, seed=7)
    x = torch.randn(3, T, F)
    labels = torch.full((3, T), -1, dtype=torch.long)
    labels[0, :] = FP  # window 0 is a marked false alarm; windows 1 and 2 are unlabelled
    mask = torch.ones(3, dtype=torch.bool)
    plain = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0)
    pushed = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0, feedback=[FP], gamma=0.5)
    assert plain.not_feedback is None
    assert pushed.not_feedback is not None
    assert out.pi_logits is not None
    p_fp = torch.softmax(out.pi_logits, dim=-1)[1:, :, FP]  # the unlabelled windows
    expected = -torch.log1p(-p_fp).sum(dim=1).mean()
    assert torch.allclose(pushed.not_feedback, expected, atol=1e-5)
    assert torch.allclose(pushed.total, plain.total + 0.5 * expected, atol=1e-5)
    # More mass on false_positive in unlabelled windows costs more.
    confident = out.pi_logits.clone()
    confident[1:, :, FP] += 3.0
    worse = vae_loss(
        out._replace(pi_logits=confident), x, labels, mask, alpha=1.0, beta=1.0,
        feedback=[FP], gamma=0.5,
    )  # fmt: skip
    assert worse.not_feedback is not None and worse.not_feedback > pushed.not_feedback


def test_no_feedback_term_without_unlabelled_windows_or_weight() -> None:
    out = output(b=2)
    x = torch.randn(2, T, F)
    labels = torch.full((2, T), NORMAL, dtype=torch.long)
    labels[1, :] = FP
    mask = torch.ones(2, dtype=torch.bool)
    all_labelled = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0, feedback=[FP], gamma=1.0)
    assert all_labelled.not_feedback is None
    labels[0, :] = -1
    no_weight = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0, feedback=[FP], gamma=0.0)
    assert no_weight.not_feedback is None


def test_normal_kinds_and_event_classes_weigh_their_cross_entropy_apart() -> None:
    """A per-class alpha multiplies each labelled step's CE by its class's weight: the classes
    that mark events (anomaly kinds, feedback) keep their own weight, normal kinds get alpha."""
    out = output(b=2, seed=3)
    x = torch.randn(2, T, F)
    mask = torch.ones(2, dtype=torch.bool)
    labels = torch.full((2, T), -1, dtype=torch.long)
    labels[0, :] = NORMAL
    labels[1, :] = FP
    weight = class_weights(BUILTIN_CLASSES, alpha=10.0, event_alpha=1.0)
    assert [c.name for c in BUILTIN_CLASSES][2:] == ["false_positive", "false_negative"]
    assert [c.kind for c in BUILTIN_CLASSES][:2] == ["normal", "anomaly"]
    assert weight.tolist() == [10.0, 1.0, 1.0, 1.0]
    assert out.pi_logits is not None
    per_window = masked_cross_entropy(out.pi_logits, labels)  # (2,) unweighted
    weighted = vae_loss(out, x, labels, mask, alpha=weight, beta=1.0)
    plain = vae_loss(out, x, labels, mask, alpha=1.0, beta=1.0)
    assert torch.allclose(weighted.ce, plain.ce)  # the reported CE stays unweighted
    expected_extra = (9.0 * per_window[0] + 0.0 * per_window[1]) / 2  # normal x10, fp x1
    assert torch.allclose(weighted.total, plain.total + expected_extra, atol=1e-4)
    # A scalar alpha weighs every class alike.
    assert torch.allclose(
        vae_loss(out, x, labels, mask, alpha=10.0, beta=1.0).total,
        plain.total + 9.0 * plain.ce,
        atol=1e-4,
    )

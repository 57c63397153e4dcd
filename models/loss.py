"""The training objective: the preprint's eq. 3-5 with the team's decisions (METHOD.md).

    L = -E_q[log p(x | z, pi)] + beta * KL(q(z|x) || N(0, I)) + alpha * (1/#lab) * sum CE(y, pi)

- alpha may differ by class (class_weights()): the normal-kind classes get TrainConfig.alpha,
  anomaly kinds and the feedback classes TrainConfig.event_alpha (config.py says why).

- reconstruction and KL (the negative ELBO, eq. 4) are averaged over the windows allowed into the
  ELBO: unlabelled windows and windows labelled only with normal-kind classes (false_positive is
  normal-kind). Windows with any step labelled with an anomaly-kind class (false_negative included)
  are kept out, so the model never learns to reconstruct faults.
- KL acts on z only, never on pi (§2.2).
- the cross-entropy (eq. 5) is per time step with a mask (-1 = unlabelled step). A window's CE is
  the sum over its labelled steps, so a label that covers part of a window supervises only those
  steps; the batch's CE is normalised by the number of labelled windows (the "#labeled" of eq. 5).
- the feedback classes need negatives (our decision; §5 of the preprint is silent on how). If an
  operator has marked only false alarms, CE alone teaches pi that *every* window is a false alarm:
  false_positive is the only class it ever saw, and p_fp -> 1 would suppress real faults too. So
  when a feedback class has labels, each unlabelled window also adds
      gamma * sum_t -log(1 - sum_{c in feedback} pi_t,c)
  ("this window is most likely not a false alarm or a missed fault"): positive-unlabelled
  learning, which treats the unlabelled data as negatives for the feedback classes only and leaves
  its membership of the real classes unsupervised. It is averaged over the unlabelled windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import ClassSpec
from models.data import marks_events
from models.model import SemiSupervisedVAE, VAEOutput, per_step

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class LossTerms(NamedTuple):
    total: Tensor  # () the objective, eq. 3
    nll: Tensor  # () mean over ELBO windows of -log p(x | z, pi), summed over steps and channels
    kl: Tensor  # () mean over ELBO windows of KL(q(z|x) || N(0, I)), summed over latent units
    ce: Tensor  # () (1/#labelled windows) * sum of per-window CE over labelled steps
    n_elbo: int  # windows that fed the reconstruction and KL terms
    n_labelled: int  # windows with at least one labelled step
    not_feedback: Tensor | None = None  # () mean over unlabelled windows of the feedback term


def gaussian_nll(x: Tensor, x_mu: Tensor, x_sigma: Tensor) -> Tensor:
    """Elementwise -log N(x | mu, sigma^2); same shape as x."""
    return _HALF_LOG_2PI + torch.log(x_sigma) + 0.5 * ((x - x_mu) / x_sigma) ** 2


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-window KL(N(mu, exp(logvar)) || N(0, I)), Kingma & Welling appendix B:
    -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2), summed over every latent unit
    (and over steps for the recurrent flavour). mu, logvar (B, [T,] D) -> (B,)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)


def step_cross_entropy(pi_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-step CE, 0 on unlabelled steps. pi_logits (B, T, K), labels (B, T) -> (B, T)."""
    B, T, K = pi_logits.shape
    ce = F.cross_entropy(
        pi_logits.reshape(B * T, K), labels.reshape(B * T), ignore_index=-1, reduction="none"
    )  # (B*T,), 0 where the label is -1
    return ce.view(B, T)


def class_weighted(step_ce: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """Each labelled step's CE times its class's weight (K,); unlabelled steps stay 0."""
    return step_ce * weight.to(step_ce.dtype)[labels.clamp(min=0)]


def masked_cross_entropy(pi_logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-window CE summed over labelled steps (eq. 5), each step's term times its class's
    weight when `weight` (K,) is given.
    pi_logits (B, T, K), labels (B, T) with -1 = unlabelled -> (B,)."""
    step_ce = step_cross_entropy(pi_logits, labels)
    if weight is not None:
        step_ce = class_weighted(step_ce, labels, weight)
    return step_ce.sum(dim=1)


def class_weights(classes: Sequence[ClassSpec], *, alpha: float, event_alpha: float) -> Tensor:
    """The CE weight of each class (K,): alpha for the normal-kind classes a series' windows
    are sorted into, event_alpha for the classes that mark events (anomaly kinds and the
    feedback classes false_positive and false_negative)."""
    return torch.tensor([event_alpha if marks_events(c) else alpha for c in classes])


def not_feedback_nll(pi_logits: Tensor, feedback: Sequence[int]) -> Tensor:
    """Per-window sum over steps of -log(1 - sum_{c in feedback} pi_c).
    pi_logits (B, T, K) -> (B,)."""
    log_pi = torch.log_softmax(pi_logits, dim=-1)  # (B, T, K)
    keep = [c for c in range(pi_logits.shape[-1]) if c not in set(feedback)]
    return -torch.logsumexp(log_pi[..., keep], dim=-1).sum(dim=1)  # (B,)


def vae_loss(
    out: VAEOutput,
    x: Tensor,
    labels: Tensor | None,
    elbo_mask: Tensor,
    *,
    alpha: float | Tensor,
    beta: float,
    feedback: Sequence[int] = (),
    gamma: float = 0.0,
) -> LossTerms:
    """The objective for one batch.

    out: the model's output on x (B, T, F); labels (B, T) int64 with -1 for unlabelled steps, or
    None; elbo_mask (B,) bool: which windows may feed reconstruction + KL (see module docstring);
    alpha: the CE weight, one for all classes or (K,) one per class (class_weights());
    feedback: indices of the feedback classes that have labels, whose probability unlabelled
    windows push down with weight gamma.
    """
    zero = x.new_zeros(())
    nll, kl, n_elbo = zero, zero, 0
    if out.x_mu is not None and out.x_sigma is not None and out.mu is not None:
        assert out.logvar is not None
        n_elbo = int(elbo_mask.sum().item())
        if n_elbo > 0:
            per_window_nll = gaussian_nll(x, out.x_mu, out.x_sigma).sum(dim=(1, 2))  # (B,)
            per_window_kl = kl_standard_normal(out.mu, out.logvar)  # (B,)
            nll = per_window_nll[elbo_mask].sum() / n_elbo
            kl = per_window_kl[elbo_mask].sum() / n_elbo

    ce, weighted_ce, n_labelled = zero, zero, 0
    if out.pi_logits is not None and labels is not None:
        labelled = (labels >= 0).any(dim=1)  # (B,)
        n_labelled = int(labelled.sum().item())
        if n_labelled > 0:
            step_ce = step_cross_entropy(out.pi_logits, labels)  # (B, T)
            ce = step_ce.sum() / n_labelled
            if isinstance(alpha, Tensor):
                weighted_ce = class_weighted(step_ce, labels, alpha).sum() / n_labelled
            else:
                weighted_ce = alpha * ce

    total = nll + beta * kl + weighted_ce
    not_feedback = None
    if out.pi_logits is not None and labels is not None and feedback and gamma > 0:
        unlabelled = ~(labels >= 0).any(dim=1)  # (B,)
        if bool(unlabelled.any()):
            step_logits = per_step(out.pi_logits, x.shape[1])  # (B, T, K)
            not_feedback = not_feedback_nll(step_logits[unlabelled], feedback).mean()
            total = total + gamma * not_feedback
    return LossTerms(total, nll, kl, ce, n_elbo, n_labelled, not_feedback)


@torch.inference_mode()
def dataset_objective(
    net: SemiSupervisedVAE,
    x: np.ndarray,
    labels: np.ndarray | None,
    elbo_mask: np.ndarray,
    *,
    alpha: float | Tensor,
    beta: float,
    n_samples: int,
    generator: torch.Generator,
    nll_offset: float = 0.0,
    chunk: int = 256,
) -> dict[str, float]:
    """The objective over a whole set of standardised windows x (N, T, F), in eval mode.

    Unlike vae_loss (one batch), the terms are normalised over the whole set: nll and kl per ELBO
    window (nll averaged over n_samples draws of z), ce per labelled window. Also reports per-step
    accuracy and log loss of pi on the labelled steps. A term the data or variant cannot have is
    NaN; loss = nll + beta * kl + alpha * ce over the terms that exist (NaN if none does), with
    alpha one weight or (K,) one per class as in vae_loss.
    nll_offset is added to every window's nll (e.g. the log-Jacobian of the standardisation).
    """
    net.eval()
    nll_sum = kl_sum = ce_sum = weighted_ce_sum = 0.0
    correct = labelled_steps = 0
    for start in range(0, x.shape[0], chunk):
        xb = torch.from_numpy(x[start : start + chunk])  # (B, T, F)
        mb = torch.from_numpy(elbo_mask[start : start + chunk])  # (B,)
        mu, logvar, pi_logits = net.encode(xb)
        pi = torch.softmax(pi_logits, dim=-1) if pi_logits is not None else None
        if mu is not None and logvar is not None and bool(mb.any()):
            nll_w = torch.zeros(xb.shape[0], dtype=torch.float64)  # (B,)
            for _ in range(n_samples):
                z = net.reparameterize(mu, logvar, generator)
                x_mu, x_sigma = net.decode(z, pi, xb)
                nll_w += gaussian_nll(xb, x_mu, x_sigma).sum(dim=(1, 2)).double()
            nll_sum += float((nll_w / n_samples)[mb].sum())
            kl_sum += float(kl_standard_normal(mu, logvar).double()[mb].sum())
        if pi_logits is not None and labels is not None:
            lb = torch.from_numpy(labels[start : start + chunk])  # (B, T)
            step_logits = per_step(pi_logits, xb.shape[1])  # (B, T, K)
            step_ce = step_cross_entropy(step_logits, lb).double()  # (B, T)
            ce_sum += float(step_ce.sum())
            if isinstance(alpha, Tensor):
                weighted_ce_sum += float(class_weighted(step_ce, lb, alpha).sum())
            mask = lb >= 0
            correct += int((step_logits.argmax(dim=-1) == lb)[mask].sum())
            labelled_steps += int(mask.sum())

    nan = float("nan")
    n_elbo = int(elbo_mask.sum()) if net.has_decoder else 0
    n_labelled = int((labels >= 0).any(axis=1).sum()) if labels is not None and net.has_pi else 0
    nll = nll_sum / n_elbo + nll_offset if n_elbo else nan
    kl = kl_sum / n_elbo if n_elbo else nan
    ce = ce_sum / n_labelled if n_labelled else nan
    if isinstance(alpha, Tensor):
        weighted_ce = weighted_ce_sum / n_labelled if n_labelled else nan
    else:
        weighted_ce = alpha * ce
    parts = [p for p in (nll, beta * kl, weighted_ce) if not math.isnan(p)]
    return {
        "loss": sum(parts) if parts else nan,
        "nll": nll,
        "kl": kl,
        "ce": ce,
        "accuracy": correct / labelled_steps if labelled_steps else nan,
        "log_loss": ce_sum / labelled_steps if labelled_steps else nan,
        "n_windows": float(x.shape[0]),
        "n_elbo_windows": float(n_elbo),
        "n_labelled_windows": float(n_labelled),
    }

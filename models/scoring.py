"""Anomaly scores: the reconstruction probability, its calibration, and the feedback adjustment.

Raw score (An & Cho 2015, seed 003): draw L samples z_l ~ q(z|x) and take

    nll(x) = -log (1/L) sum_l p(x | z_l, pi(x))          (nats, in standardised units)

computed with logsumexp over the L per-sample log densities, never by exponentiating densities.

The input-complexity correction, after Serra et al., "Input complexity and out-of-distribution
detection with likelihood-based generative models" (ICLR 2020): a likelihood model gives simple
inputs a high likelihood whatever it was trained on, so a flat or near-constant window (a stuck
sensor, a machine at rest where the model knows it running) scores as the most normal data there
is (issue 13: the "Standing" class at ROC-AUC 0.01; the preprint's Table 5 shows the same trap
for MNIST digit 1). With ModelConfig.complexity_correction,

    raw(x) = nll(x) + sum_f max(c_f - C_f(x), 0)

where C_f(x) is the window's own code length for channel f under the better of two generic
codes fitted to the window itself, i.i.d. Gaussian values or i.i.d. Gaussian first differences,
C = T/2 * (log(2 pi s^2) + 1) with s the window's own spread (floored at
ModelConfig.complexity_floor), and c_f the median C_f of the training windows (a buffer of the
network, set by fit()). Our decision, where Serra subtracts C(x) whatever it is: only windows
simpler than the training data are corrected, by how much simpler they are, so the simplicity a
likelihood rewards is taken back; a window more complex than usual (a spike, a noise burst)
keeps its likelihood score as it is, rather than having its own complexity explain it away.
The correction of channel f is shared equally over the steps for the per-element split.
Per element (t, f) the same formula gives the contribution -log (1/L) sum_l p(x_tf | z_l); summed
over t they give the per-channel contributions, summed over f the per-step ones. For L = 1 the
elements add up exactly to the raw score; for L > 1 log-mean-exp does not split over elements, so
the contributions are a per-element decomposition whose sum differs from the raw score (usually
it is a little larger, as samples that fit one element tend to fit the others).

Calibration (METHOD.md: the feedback heuristic needs a score >= 0 that grows with anomalousness):

    score = softplus((raw - center) / scale)

with center the median raw score of the normal training windows and scale their robust spread
(1.4826 * median absolute deviation). It is > 0, strictly increasing in raw (until softplus
underflows to 0 far below the median), ~0.69 for a typical training window and ~ the number of
robust standard deviations above typical for clear anomalies. The alarm threshold is a quantile
of the calibrated scores of held-out normal windows, kept sorted so any quantile can be read later.

Held-out windows are "normal" only because nobody labelled them otherwise: a stream's newest
windows may hold a fault nobody has seen yet, and a quantile near 1 of a few dozen windows is
their maximum, so one such fault would lift the threshold above every alarm (issue 13: 40 ->
1,505). Before the quantile is taken, held-out scores beyond a far-out fence are left out
(far_out_mask): a no-op on well-behaved data, robust while fewer than half of the held-out
windows are faults. The scores are taken as served, feedback adjustment included, so that a
benign episode that operators have dismissed counts as the normal data it is.

Feedback (preprint §5, eq. 6): adjusted = score * (1 - p_fp) / (1 - p_fn), p_fn clamped to
P_FN_MAX, and p = 0 for a feedback class that never had a labelled training step (an untrained
head's output must not move scores).

The severity guard (our decision; the preprint is silent): pi is a discriminative head, and on a
window unlike anything it was trained on - a new fault, above all - its output is arbitrary, so
it may well say "false positive" there. Feedback may therefore silence alarms only up to the
severity of the ones operators dismissed: with c = FP_CEILING_MARGIN * the highest calibrated
score among the false_positive-labelled training windows, p_fp counts in full for score <= c and
is scaled by (c / score)^2 above it.

The missed-fault floor (our decision, likewise): the head learns `false_negative` from the one to
three windows an operator marked, against unlabelled windows as negatives, at 1 : 1 in every
batch, so on ordinary windows it is far from 0 (task (d) of benchmarks/quality: mean 0.08, p90
0.40 on normal test windows), and 1 / (1 - p_fn) raised their scores at random: marking missed
faults alone took the false-positive rate at recall 0.8 from 0.21 to 0.29. So p_fn counts only
beyond what held-out normal windows reach: with f = the FN_FLOOR_QUANTILE quantile of their
p_fn, p_fn is (p_fn - f) / (1 - f), 0 below f. A window the head places with the marked faults
(p_fn near 1) keeps nearly all of it.

The reported p_false_positive and p_false_negative are the ones applied, so
adjusted = score * (1 - p_fp) / (1 - p_fn) holds for the reported numbers.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from models.loss import gaussian_nll
from models.model import SemiSupervisedVAE, per_step

P_FN_MAX = 0.99  # p_false_negative is clamped to this, so 1 / (1 - p_fn) <= 100
FP_CEILING_MARGIN = 1.25  # p_fp counts in full up to this multiple of the worst dismissed alarm
FN_FLOOR_QUANTILE = 0.95  # p_fn counts beyond this quantile of the held-out normal windows' p_fn
MAX_ROWS_PER_CHUNK = 1024  # windows x samples decoded at once; bounds inference memory
MAX_STORED_NORMAL_SCORES = 10_001  # beyond this, keep evenly spaced order statistics
FAR_OUT_IQR = 3.0  # Tukey's "far out": held-out scores above Q3 + 3 IQR are not normal
FAR_OUT_SD = 6.0  # nor those 6 robust standard deviations above the held-out median
_MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation for a Gaussian


@dataclass(frozen=True)
class Calibration:
    """How raw scores at one L become calibrated ones, and held-out normal scores for thresholds.

    The raw score depends on L (more samples -> lower -log mean p, by Jensen), so a model keeps
    one Calibration per L it was calibrated at (1 and TrainConfig.calibration_samples) and scoring
    uses the one nearest to the requested L."""

    n_samples: int  # L the raw scores below were computed with
    center: float  # median raw score of the normal training windows
    scale: float  # robust spread (1.4826 * MAD) of those raw scores, floored
    normal_scores: np.ndarray = field(repr=False)  # (M,) sorted calibrated held-out normal scores
    source: str = "validation"  # which windows normal_scores came from
    fp_ceiling: float = math.inf  # highest calibrated score of a false_positive-labelled window
    n_outliers: int = 0  # held-out windows beyond the far-out fence, left out of normal_scores
    fn_floor: float = 0.0  # p_fn that held-out normal windows reach (FN_FLOOR_QUANTILE)


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for N windows (numpy arrays)."""

    raw_score: np.ndarray  # (N,) -log mean_l p(x|z_l) (logsumexp), nats in standardised units
    score: np.ndarray  # (N,) calibrated, >= 0, monotone in raw_score
    p_false_positive: np.ndarray  # (N,) 0 when the class never had training labels
    p_false_negative: np.ndarray  # (N,) clamped to <= P_FN_MAX
    adjusted_score: np.ndarray  # (N,) score * (1 - p_fp) / (1 - p_fn)
    is_anomaly: np.ndarray  # (N,) bool: adjusted_score > threshold, or a data-quality check failed
    class_probabilities: np.ndarray  # (N, K) mean over steps of per-step pi; NaN for EU models
    channel_contributions: np.ndarray  # (N, F) per-element -log mean_l p(x_tf|z_l), summed over t
    step_contributions: np.ndarray  # (N, T) the same, summed over f
    quality: np.ndarray  # (N, F) uint8: bits of the data-quality checks failed (quality.py)
    threshold: float


@dataclass(frozen=True)
class Inference:
    raw_score: np.ndarray | None  # (N,) float64
    elements: np.ndarray | None  # (N, T, F) float64 per-element contributions
    step_probabilities: np.ndarray | None  # (N, T, K) float64 per-step pi


class InferenceStep(nn.Module):
    """One chunk of `infer`, tensors in and out, so that it can be traced.

    forward(xb, eps): standardised windows (B, T, F) float32 and the noise eps (L, 1, [T,] D)
    shared by every window -> the requested outputs, in this order: per-step class
    probabilities (B, T, K), raw scores (B,), per-element contributions (B, T, F), all float64.

    Why trace it: eager PyTorch releases the GIL around each of the step's ~70 operations and
    must take it back after each. Beside a thread that keeps the GIL busy (a service's event
    loop under load) every re-take waits up to the interpreter's switch interval, 5 ms: one
    batch of 16 took 2.3 ms alone and 285 ms beside a busy Python thread. `traced()` records
    the step once as a TorchScript graph, which runs in C++ with the GIL released for the whole
    call (9 ms beside the same thread) and gives bit-identical results.
    """

    def __init__(
        self,
        net: SemiSupervisedVAE | Sequence[SemiSupervisedVAE],
        *,
        n_samples: int,
        reconstruction: bool = True,
        classes: bool = True,
        elements: bool = True,
    ) -> None:
        super().__init__()
        members = [net] if isinstance(net, SemiSupervisedVAE) else list(net)
        self.nets = members  # typed view of the members below
        self.members = nn.ModuleList(members)
        first = members[0]
        self.cfg = first.cfg
        self.latent_shape = first.latent_shape
        self.n_samples = n_samples
        self.reconstruction = reconstruction and first.has_decoder
        self.classes = classes and first.has_pi
        self.elements = elements and self.reconstruction

    def draw_noise(self, generator: torch.Generator) -> Tensor:
        """eps (L, 1, [T,] D): one draw of the latent noise, shared by every window.

        Common random numbers: every window is scored with the same L draws, so a window's
        score does not depend on which other windows share its batch or chunk (the service
        micro-batches requests together). Each window's estimate is still an unbiased
        L-sample estimate of its reconstruction probability. An ensemble's members share it."""
        shape = (self.n_samples, 1, *self.latent_shape)
        dtype = next(self.members[0].parameters()).dtype
        return torch.randn(shape, generator=generator, dtype=dtype)

    def forward(self, xb: Tensor, eps: Tensor) -> tuple[Tensor, ...]:
        """Each member's outputs, averaged over an ensemble's members: the raw score and the
        per-element contributions as the mean of the members' (so they still add up), and
        pi as the mean of the members' distributions."""
        outputs = [self._member(net, xb, eps) for net in self.nets]
        if len(outputs) == 1:
            return outputs[0]
        return tuple(
            torch.stack([out[i] for out in outputs]).mean(dim=0) for i in range(len(outputs[0]))
        )

    def _member(self, net: SemiSupervisedVAE, xb: Tensor, eps: Tensor) -> tuple[Tensor, ...]:
        L = self.n_samples
        B, T = xb.shape[0], xb.shape[1]
        mu, logvar, pi_logits = net.encode(xb)
        out: list[Tensor] = []
        if self.classes:
            assert pi_logits is not None
            out.append(per_step(torch.softmax(pi_logits, dim=-1), T).double())
        if not self.reconstruction:
            return tuple(out)
        assert mu is not None and logvar is not None
        simpler = None  # (B, F) how much simpler than the training data each channel is
        if self.cfg.complexity_correction:
            code = window_complexity(xb, self.cfg.complexity_floor)
            simpler = (net.complexity_reference - code).clamp_min(0.0)
        noise = eps.expand(L, B, *mu.shape[1:]).reshape(L * B, *mu.shape[1:])  # (L*B, [T,] D)
        mu_l = mu.repeat(L, *([1] * (mu.dim() - 1)))  # (L*B, [T,] D), sample-major
        logvar_l = logvar.repeat(L, *([1] * (logvar.dim() - 1)))
        z = mu_l + torch.exp(0.5 * logvar_l) * noise
        pi_l = None
        if pi_logits is not None:
            pi_l = torch.softmax(pi_logits, dim=-1).repeat(L, *([1] * (pi_logits.dim() - 1)))
        xr = xb.repeat(L, 1, 1)  # (L*B, T, F)
        x_mu, x_sigma = net.decode(z, pi_l, xr)  # (L*B, T, F)
        log_p = -gaussian_nll(xr, x_mu, x_sigma).double().view(L, B, T, -1)  # (L, B, T, F)
        log_l = math.log(L)
        raw = -(torch.logsumexp(log_p.sum(dim=(2, 3)), dim=0) - log_l)  # (B,)
        if simpler is not None:
            raw = raw + simpler.sum(dim=1)
        out.append(raw)
        if self.elements:
            elements = -(torch.logsumexp(log_p, dim=0) - log_l)  # (B, T, F)
            if simpler is not None:
                elements = elements + (simpler / T).unsqueeze(1)  # shared over the steps
            out.append(elements)
        return tuple(out)

    def traced(self) -> Callable[[Tensor, Tensor], tuple[Tensor, ...]]:
        """This step as a TorchScript graph for any batch size (see the class docstring), with
        its own copy of this network's weights.

        Tracing is done once per architecture (config, L, outputs) and the graph copied for
        each network: every trace leaves about 0.6 MB inside torch that is never freed (and
        1.5 MB once called), which a service that loads models on cache misses and retrains
        cannot afford; copying a traced module and loading weights into it leaves nothing.
        torch.jit.trace is deprecated in favour of torch.compile and torch.export, neither of
        which runs a graph without the GIL on a CPU without a C++ toolchain at run time."""
        key = (
            repr(self.cfg),
            len(self.members),
            self.n_samples,
            self.reconstruction,
            self.classes,
            self.elements,
        )
        template = _TRACED.get(key)
        if template is None:
            template = _TRACED[key] = self._trace()
        graph = copy.deepcopy(template)
        graph.load_state_dict(self.state_dict())

        def call(xb: Tensor, eps: Tensor) -> tuple[Tensor, ...]:
            # Run the graph as recorded: the profiling executor's re-optimisation for every
            # new batch size costs more than it saves on this small graph.
            with torch.jit.optimized_execution(False):  # type: ignore[attr-defined]
                out: tuple[Tensor, ...] = graph(xb, eps)
                return out

        return call

    def _trace(self) -> torch.jit.ScriptModule:
        """The tracer's warnings are about the LSTM's own input checks on traced sizes, which
        `check_windows` has already done."""
        T, F = self.cfg.window_size, self.cfg.n_channels
        assert T is not None and F is not None
        example = torch.randn((3, T, F), generator=torch.Generator().manual_seed(0))
        eps = self.draw_noise(torch.Generator().manual_seed(0))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", r".*torch\.jit\.trace.* is deprecated")
            graph: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
                self.eval(), (example, eps), check_trace=False
            )
        return graph


def window_complexity(x: Tensor, floor: float) -> Tensor:
    """C_f (see the module docstring): each window's own code length per channel, in nats.
    x (B, T, F) standardised -> (B, F) float64."""
    xd = x.double()
    T = xd.shape[1]
    spread = xd.std(dim=1, unbiased=False).clamp_min(floor)  # (B, F)
    steps = (xd[:, 1:] - xd[:, :-1]).std(dim=1, unbiased=False).clamp_min(floor)  # (B, F)
    code = torch.minimum(spread, steps)  # the smaller spread is the shorter code
    return 0.5 * T * (torch.log(2.0 * math.pi * code.pow(2)) + 1.0)


_TRACED: dict[tuple[object, ...], torch.jit.ScriptModule] = {}
"""Traced inference steps by architecture, copied for each network (see `traced`)."""


@torch.inference_mode()
def infer(
    net: SemiSupervisedVAE | Sequence[SemiSupervisedVAE],
    x: np.ndarray,
    *,
    n_samples: int,
    generator: torch.Generator,
    reconstruction: bool = True,
    classes: bool = True,
    elements: bool = True,
) -> Inference:
    """Run the model on standardised windows x (N, T, F) float32, in chunks, in eval mode.

    The generator draws the noise once, so a given seed gives the same result every time.
    """
    step = InferenceStep(
        net,
        n_samples=n_samples,
        reconstruction=reconstruction,
        classes=classes,
        elements=elements,
    )
    eps = step.draw_noise(generator) if step.reconstruction else torch.empty(0)
    return run_inference(step, x, eps=eps)


@torch.inference_mode()
def run_inference(
    step: InferenceStep,
    x: np.ndarray,
    *,
    eps: Tensor,
    call: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None = None,
) -> Inference:
    """`infer` with a given step and noise (`step.draw_noise`), run eagerly or by `call`
    (the step's `traced()` graph)."""
    step.eval()
    run = call or step
    N = x.shape[0]
    chunk = max(1, MAX_ROWS_PER_CHUNK // step.n_samples)
    raws: list[np.ndarray] = []
    elems: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for start in range(0, N, chunk):
        outputs = iter(run(torch.from_numpy(x[start : start + chunk]), eps))
        if step.classes:
            probs.append(next(outputs).numpy())
        if step.reconstruction:
            raws.append(next(outputs).numpy())
        if step.elements:
            elems.append(next(outputs).numpy())
    return Inference(
        raw_score=np.concatenate(raws) if raws else None,
        elements=np.concatenate(elems) if elems else None,
        step_probabilities=np.concatenate(probs) if probs else None,
    )


def calibrate(raw: np.ndarray, center: float, scale: float) -> np.ndarray:
    """softplus((raw - center) / scale): >= 0 and monotone increasing in raw."""
    return np.logaddexp(0.0, (np.asarray(raw, dtype=np.float64) - center) / scale)


def fit_calibration(
    train_raw: np.ndarray,
    normal_raw: np.ndarray,
    *,
    n_samples: int,
    source: str,
    fp_ceiling: float = math.inf,
    p_false_positive: np.ndarray | None = None,
    p_false_negative: np.ndarray | None = None,
) -> Calibration:
    """center/scale from the raw scores of normal training windows; the threshold scores from
    the held-out normal windows' raw scores, far-out ones left out, as they are served: with
    the feedback adjustment of their p_fp (guarded by fp_ceiling) and p_fn, when given. A
    threshold taken on unadjusted scores sits above every benign episode that feedback has
    already quietened, and then misses the faults (issue 12)."""
    normal_raw = np.asarray(normal_raw, dtype=np.float64)
    center, scale = center_and_scale(train_raw)
    scores = calibrate(normal_raw, center, scale)
    p_fp = np.zeros_like(scores) if p_false_positive is None else p_false_positive
    p_fn, fn_floor = np.zeros_like(scores), 0.0
    if p_false_negative is not None and p_false_negative.size:
        fn_floor = float(np.quantile(p_false_negative, FN_FLOOR_QUANTILE))
        p_fn = floor_false_negative(p_false_negative, fn_floor)
    served = adjust(scores, guard_false_positive(p_fp, scores, fp_ceiling), p_fn)
    kept = far_out_mask(served)
    scores = np.sort(served[kept])
    if scores.size > MAX_STORED_NORMAL_SCORES:
        scores = np.quantile(scores, np.linspace(0.0, 1.0, MAX_STORED_NORMAL_SCORES))
    return Calibration(
        n_samples=n_samples,
        center=center,
        scale=scale,
        normal_scores=scores,
        source=source,
        fp_ceiling=fp_ceiling,
        n_outliers=int(normal_raw.size - kept.sum()),
        fn_floor=fn_floor,
    )


def center_and_scale(train_raw: np.ndarray) -> tuple[float, float]:
    """The calibration's center and scale: median and robust spread (1.4826 * MAD), floored."""
    train_raw = np.asarray(train_raw, dtype=np.float64)
    center = float(np.median(train_raw))
    scale = _MAD_TO_SD * float(np.median(np.abs(train_raw - center)))
    if not scale > 1e-12:
        scale = float(np.std(train_raw))
    return center, max(scale, 1e-6 * max(1.0, abs(center)))


def far_out_mask(scores: np.ndarray) -> np.ndarray:
    """(N,) bool: False for the far-out scores, above the lower of two fences: Tukey's
    Q3 + FAR_OUT_IQR * IQR, and median + FAR_OUT_SD robust standard deviations (1.4826 * MAD),
    which still holds when up to half of the scores are faults."""
    if scores.size < 4:
        return np.ones(scores.shape, dtype=bool)
    q1, median, q3 = np.quantile(scores, [0.25, 0.5, 0.75])
    spread = _MAD_TO_SD * float(np.median(np.abs(scores - median)))
    if not (q3 > q1 and spread > 0):
        return np.ones(scores.shape, dtype=bool)
    fence = min(q3 + FAR_OUT_IQR * (q3 - q1), median + FAR_OUT_SD * spread)
    return np.asarray(scores <= fence)


def threshold_at(calibration: Calibration, quantile: float) -> float:
    """The given quantile (linear interpolation) of the calibrated held-out normal scores."""
    return float(np.quantile(calibration.normal_scores, quantile))


def nearest_calibration(calibrations: dict[int, Calibration], n_samples: int) -> Calibration:
    """The calibration whose L is nearest to n_samples on a log scale (ties: the larger L)."""
    return min(
        calibrations.values(),
        key=lambda c: (abs(math.log(c.n_samples) - math.log(n_samples)), -c.n_samples),
    )


def guard_false_positive(p_fp: np.ndarray, score: np.ndarray, ceiling: float) -> np.ndarray:
    """p_fp as applied: in full up to FP_CEILING_MARGIN * ceiling, fading as (c / score)^2 above."""
    if not math.isfinite(ceiling):
        return p_fp
    c = FP_CEILING_MARGIN * max(ceiling, 0.0)
    weight = np.where(score <= c, 1.0, (c / np.maximum(score, 1e-12)) ** 2)
    return np.asarray(p_fp * weight)


def floor_false_negative(p_fn: np.ndarray, floor: float) -> np.ndarray:
    """p_fn as applied: the part beyond `floor` (what held-out normal windows reach), rescaled
    to [0, 1] and clamped to P_FN_MAX."""
    floor = min(max(floor, 0.0), P_FN_MAX)
    return np.clip((np.asarray(p_fn, dtype=np.float64) - floor) / (1.0 - floor), 0.0, P_FN_MAX)


def adjust(score: np.ndarray, p_fp: np.ndarray, p_fn: np.ndarray) -> np.ndarray:
    """Eq. 6 of the preprint: score * (1 - p_fp) / (1 - p_fn), with p_fn clamped to P_FN_MAX."""
    p_fp = np.clip(p_fp, 0.0, 1.0)
    p_fn = np.clip(p_fn, 0.0, P_FN_MAX)
    return np.asarray(score * (1.0 - p_fp) / (1.0 - p_fn))

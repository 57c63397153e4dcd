"""The preprint's semi-supervised VAE (§2.1): one network, three flavours, three variants.

It reads top to bottom: the flavour bodies (encoder and decoder trunks) first, then the one model
that puts the same heads on every body.

    x (B, T, F) standardised windows
      encoder body            -> h        recurrent: (B, T, H), one per step; dense/conv: (B, H)
      heads on h              -> mu, logvar of q(z|x) (B, [T,] D) and pi logits (B, [T,] K)
      reparameterize          -> z        (B, [T,] D)
      decoder on concat(z, pi)-> mu_x, sigma_x  (B, T, F), a Gaussian per step and channel
                                (recurrent: also x_{t-1}, ModelConfig.autoregressive)

Variants are switches of this one model, not copies (preprint Fig. 1, Table 2):
  ss  the semi-supervised VAE: encoder, heads mu/logvar/pi, decoder on concat(z, pi)
  eu  equivalent unsupervised: no pi head, the decoder reads z alone
  es  equivalent supervised: encoder + pi head only (no latent, no decoder)

Deviation from Table 15: the recurrent decoder also reads the previous step of the window
(autoregressive, ModelConfig.autoregressive, on by default). With z and pi alone a 2-d latent
per step never modelled the synthetic plant's vibration channels, and a frequency change scored
below normal windows (docs/METHOD.md).

Deviation from Table 13: the dense flavour ends in a Gaussian (linear mu_x, softplus sigma_x) like
Table 15, not a sigmoid, because standardised sensor values are not in [0, 1].
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ModelConfig


def _data_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(T, F, K) from a config that fit() has filled in."""
    if cfg.window_size is None or cfg.n_channels is None or cfg.n_classes is None:
        raise ValueError("ModelConfig.window_size, n_channels and n_classes must be set")
    return cfg.window_size, cfg.n_channels, cfg.n_classes


# -----------------------------------------------------------------------------
# recurrent flavour, Table 15


class RecurrentEncoder(nn.Module):
    """Per-step dense 40 relu -> LSTM 40 -> per-step dense 30 relu."""

    def __init__(self, n_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(n_channels, cfg.rnn_dense)
        self.lstm = nn.LSTM(cfg.rnn_dense, cfg.rnn_hidden, batch_first=True)
        self.top = nn.Linear(cfg.rnn_hidden, cfg.rnn_top)
        self.out_dim = cfg.rnn_top

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.inp(x))  # (B, T, 40)
        h, _ = self.lstm(h)  # (B, T, 40)
        return F.relu(self.top(h))  # (B, T, 30)


class RecurrentDecoder(nn.Module):
    """Per-step dense 30 relu on concat(z_t, pi_t) -> LSTM 40 -> per-step dense 40 relu."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.rnn_top)
        self.lstm = nn.LSTM(cfg.rnn_top, cfg.rnn_hidden, batch_first=True)
        self.top = nn.Linear(cfg.rnn_hidden, cfg.rnn_dense)
        self.out_dim = cfg.rnn_dense

    def forward(self, zp: Tensor) -> Tensor:
        h = F.relu(self.inp(zp))  # (B, T, 30)
        h, _ = self.lstm(h)  # (B, T, 40)
        return F.relu(self.top(h))  # (B, T, 40)


# -----------------------------------------------------------------------------
# dense flavour, Table 13: the window flattened to one vector of T*F values


class DenseEncoder(nn.Module):
    """Flatten -> dense 1024 relu -> dense 1024 relu."""

    def __init__(self, window_size: int, n_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        sizes = (window_size * n_channels, *cfg.dense_hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out_dim = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)  # (B, T*F)
        for layer in self.layers:
            h = F.relu(layer(h))  # (B, 1024)
        return h


class DenseDecoder(nn.Module):
    """The encoder mirrored: dense 1024 relu on concat(z, pi) -> dense 1024 relu."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        sizes = tuple(reversed(cfg.dense_hidden))
        self.inp = nn.Linear(in_dim, sizes[0])
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out_dim = sizes[-1]

    def forward(self, zp: Tensor) -> Tensor:
        h = F.relu(self.inp(zp))  # (B, 1024)
        for layer in self.layers:
            h = F.relu(layer(h))  # (B, 1024)
        return h


# -----------------------------------------------------------------------------
# conv flavour, Table 14 turned 1-D: channels are features, convolutions run along time


def conv_lengths(window_size: int, cfg: ModelConfig) -> list[int]:
    """Sequence length after each encoder convolution, starting with T: [T, T1, ..., Tn]."""
    pad = cfg.conv_kernel // 2
    lengths = [window_size]
    for stride in cfg.conv_strides:
        lengths.append((lengths[-1] + 2 * pad - cfg.conv_kernel) // stride + 1)
    return lengths


class ConvEncoder(nn.Module):
    """(conv k3, batch norm, relu) per entry -> flatten -> dense 512, batch norm, relu, dropout."""

    def __init__(self, window_size: int, n_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_channels
        for c_out, stride in zip(cfg.conv_channels, cfg.conv_strides, strict=True):
            layers += [
                nn.Conv1d(
                    c_in, c_out, cfg.conv_kernel, stride=stride, padding=cfg.conv_kernel // 2
                ),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * conv_lengths(window_size, cfg)[-1], cfg.conv_hidden)
        self.bn = nn.BatchNorm1d(cfg.conv_hidden)
        self.p_drop = cfg.dropout
        self.out_dim = cfg.conv_hidden

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.convs(x.transpose(1, 2))  # (B, C, T')
        h = self.fc(h.flatten(1))  # (B, 512)
        return F.dropout(F.relu(self.bn(h)), self.p_drop, self.training)  # (B, 512)


class ConvDecoder(nn.Module):
    """Dense to C*T' on concat(z, pi) -> reshape -> transposed convs mirroring the encoder."""

    def __init__(self, in_dim: int, window_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        lengths = conv_lengths(window_size, cfg)
        k, pad = cfg.conv_kernel, cfg.conv_kernel // 2
        self.c_last, self.t_last = cfg.conv_channels[-1], lengths[-1]
        self.inp = nn.Linear(in_dim, self.c_last * self.t_last)
        self.bn = nn.BatchNorm1d(self.c_last * self.t_last)
        self.p_drop = cfg.dropout
        layers: list[nn.Module] = []
        for i in reversed(range(len(cfg.conv_channels))):
            c_in = cfg.conv_channels[i]
            c_out = cfg.conv_channels[max(i - 1, 0)]
            stride = cfg.conv_strides[i]
            # output_padding restores the exact length the encoder's conv i consumed
            extra = lengths[i] - ((lengths[i + 1] - 1) * stride - 2 * pad + k)
            layers += [
                nn.ConvTranspose1d(c_in, c_out, k, stride, pad, output_padding=extra),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
            ]
        self.deconvs = nn.Sequential(*layers)
        self.out_dim = cfg.conv_channels[0]

    def forward(self, zp: Tensor) -> Tensor:
        h: Tensor = self.bn(self.inp(zp))  # (B, C*T')
        h = F.dropout(F.relu(h), self.p_drop, self.training)
        h = self.deconvs(h.view(-1, self.c_last, self.t_last))  # (B, C, T') -> (B, C0, T)
        return h.transpose(1, 2)  # (B, T, C0)


# -----------------------------------------------------------------------------
# the model


class Encoded(NamedTuple):
    """The heads forked from the top encoder layer."""

    mu: Tensor | None  # (B, T, D) recurrent, (B, D) dense/conv; None for ES
    logvar: Tensor | None  # same shape as mu
    pi_logits: Tensor | None  # (B, T, K) recurrent, (B, K) dense/conv; None for EU


class VAEOutput(NamedTuple):
    mu: Tensor | None  # (B, [T,] D) mean of q(z|x); None for ES
    logvar: Tensor | None  # (B, [T,] D) log variance of q(z|x)
    z: Tensor | None  # (B, [T,] D) one sample of q(z|x)
    pi_logits: Tensor | None  # (B, T, K) per step for every flavour; None for EU
    x_mu: Tensor | None  # (B, T, F) mean of p(x|z, pi); None for ES
    x_sigma: Tensor | None  # (B, T, F) std of p(x|z, pi), > min_sigma


def per_step(pi: Tensor, window_size: int) -> Tensor:
    """Per-window class outputs (B, K) broadcast over steps to (B, T, K); (B, T, K) unchanged."""
    return pi.unsqueeze(1).expand(-1, window_size, -1) if pi.dim() == 2 else pi


class SemiSupervisedVAE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        T, Fn, K = _data_shape(cfg)
        D = cfg.latent_dim
        self.cfg = cfg
        self.has_pi = cfg.variant != "eu"
        self.has_decoder = cfg.variant != "es"
        # the decoder also reads x_{t-1} (recurrent only: the other flavours decode the whole
        # window at once)
        self.autoregressive = cfg.autoregressive and cfg.flavour == "recurrent"

        self.encoder: RecurrentEncoder | DenseEncoder | ConvEncoder
        if cfg.flavour == "recurrent":
            self.encoder = RecurrentEncoder(Fn, cfg)
        elif cfg.flavour == "dense":
            self.encoder = DenseEncoder(T, Fn, cfg)
        else:
            self.encoder = ConvEncoder(T, Fn, cfg)
        H = self.encoder.out_dim

        # heads: all fork from the top encoder layer (§2.1)
        self.pi_head = nn.Linear(H, K) if self.has_pi else None
        self.mu_head = nn.Linear(H, D) if self.has_decoder else None
        self.logvar_head = nn.Linear(H, D) if self.has_decoder else None

        # decoder on concat(z, pi) (eq. 2); EU's decoder reads z alone
        self.decoder: RecurrentDecoder | DenseDecoder | ConvDecoder | None = None
        self.out_mu: nn.Linear | None = None
        self.out_sigma: nn.Linear | None = None
        if self.has_decoder:
            dec_in = D + (K if self.has_pi else 0) + (Fn if self.autoregressive else 0)
            if cfg.flavour == "recurrent":
                self.decoder = RecurrentDecoder(dec_in, cfg)
            elif cfg.flavour == "dense":
                self.decoder = DenseDecoder(dec_in, cfg)
            else:
                self.decoder = ConvDecoder(dec_in, T, cfg)
            # Gaussian output: per step for recurrent/conv, the whole window at once for dense
            out = T * Fn if cfg.flavour == "dense" else Fn
            self.out_mu = nn.Linear(self.decoder.out_dim, out)
            self.out_sigma = nn.Linear(self.decoder.out_dim, out)
        if self.has_pi:
            # (K,) the classes pi may predict (fit() sets it from the labels: see
            # predictable_classes); the others' logits are -inf. Stored with the weights; a
            # network stored before it existed predicts every class, as it was trained to.
            self.class_mask: Tensor
            self.register_buffer("class_mask", torch.ones(K, dtype=torch.bool))
        if self.has_decoder and cfg.complexity_correction:
            # (F,) median per-channel code length of the training windows (scoring.py), set by
            # fit() after training; stored with the weights.
            self.complexity_reference: Tensor
            self.register_buffer("complexity_reference", torch.zeros(Fn, dtype=torch.float64))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one window's z: (T, D) per step for recurrent, (D,) otherwise."""
        T, _, _ = _data_shape(self.cfg)
        D = self.cfg.latent_dim
        return (T, D) if self.cfg.flavour == "recurrent" else (D,)

    def encode(self, x: Tensor) -> Encoded:
        """x (B, T, F) -> the parameters of q(z|x) and the class logits."""
        h = self.encoder(x)  # (B, T, H) recurrent, (B, H) dense/conv
        pi_logits = None
        if self.pi_head is not None:
            pi_logits = self.pi_head(h).masked_fill(~self.class_mask, float("-inf"))  # (B, [T,] K)
        if self.mu_head is None or self.logvar_head is None:
            return Encoded(None, None, pi_logits)
        return Encoded(self.mu_head(h), self.logvar_head(h), pi_logits)

    @staticmethod
    def reparameterize(
        mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling §2.4)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(
        self, z: Tensor, pi: Tensor | None, x: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """z (B, [T,] D) and class probabilities pi (B, [T,] K) -> mu_x, sigma_x (B, T, F).
        An autoregressive decoder also reads x (B, T, F), each step the one before it."""
        assert self.decoder is not None and self.out_mu is not None and self.out_sigma is not None
        T, Fn, _ = _data_shape(self.cfg)
        zp = torch.cat([z, pi], dim=-1) if pi is not None else z  # (B, [T,] D+K)
        if self.autoregressive:
            assert x is not None, "an autoregressive decoder reads the window it reconstructs"
            prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # (B, T, F)
            zp = torch.cat([zp, prev], dim=-1)
        h = self.decoder(zp)  # (B, T, H) recurrent/conv, (B, H) dense
        x_mu = self.out_mu(h).reshape(-1, T, Fn)  # (B, T, F), linear
        x_sigma = F.softplus(self.out_sigma(h)).reshape(-1, T, Fn) + self.cfg.min_sigma
        return x_mu, x_sigma

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        T = x.shape[1]
        mu, logvar, pi_logits = self.encode(x)
        step_logits = per_step(pi_logits, T) if pi_logits is not None else None
        if mu is None or logvar is None:  # ES: encoder + pi only
            return VAEOutput(None, None, None, step_logits, None, None)
        z = self.reparameterize(mu, logvar, generator)
        # NOTE: the decoder reads pi, but the reconstruction does not train pi (our decision):
        # pi's gradient from the reconstruction makes it a K-wide code with no KL cost beside
        # z, which lets the decoder reconstruct anomalies too. Without labels that cost anomaly
        # ROC-AUC 0.60 vs 0.86 (ItalyPowerDemand, class held out); pi learns from the
        # cross-entropy alone, while the encoder it shares with z still learns from both.
        pi = torch.softmax(pi_logits, dim=-1).detach() if pi_logits is not None else None
        x_mu, x_sigma = self.decode(z, pi, x)
        return VAEOutput(mu, logvar, z, step_logits, x_mu, x_sigma)

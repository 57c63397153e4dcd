"""The network: shapes per flavour and variant, per-step heads, the decoder input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models import InvalidInput, ModelConfig, SemiSupervisedVAE
from tests.models.models_testkit import F, T, tiny_config

K, B = 4, 5
FLAVOURS = ["recurrent", "dense", "conv"]
VARIANTS = ["ss", "eu", "es"]


def build(flavour: str, variant: str, window: int = T) -> SemiSupervisedVAE:
    cfg = dataclasses.replace(
        tiny_config(flavour, variant), window_size=window, n_channels=F, n_classes=K
    )
    torch.manual_seed(0)
    return SemiSupervisedVAE(cfg).eval()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes(flavour: str, variant: str) -> None:
    net = build(flavour, variant)
    out = net(torch.randn(B, T, F))
    D = net.cfg.latent_dim
    latent_shape = (B, T, D) if flavour == "recurrent" else (B, D)
    if variant == "es":
        assert out.mu is None and out.z is None and out.x_mu is None and out.x_sigma is None
    else:
        assert out.mu is not None and out.logvar is not None and out.z is not None
        assert out.mu.shape == latent_shape
        assert out.logvar.shape == latent_shape
        assert out.z.shape == latent_shape
        assert out.x_mu is not None and out.x_sigma is not None
        assert out.x_mu.shape == (B, T, F)
        assert out.x_sigma.shape == (B, T, F)
        assert bool((out.x_sigma >= net.cfg.min_sigma).all())
    if variant == "eu":
        assert out.pi_logits is None
        assert net.pi_head is None
    else:
        assert out.pi_logits is not None
        assert out.pi_logits.shape == (B, T, K)  # per step for every flavour


def test_recurrent_pi_is_per_step_and_window_flavours_broadcast() -> None:
    x = torch.randn(B, T, F)
    rec = build("recurrent", "ss")(x).pi_logits
    assert rec is not None
    assert not torch.allclose(rec[:, 0], rec[:, -1])  # the LSTM makes steps differ
    for flavour in ("dense", "conv"):
        logits = build(flavour, "ss")(x).pi_logits
        assert logits is not None
        assert torch.equal(logits, logits[:, :1].expand_as(logits))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_decoder_reads_concat_z_pi_but_eu_reads_z_only(flavour: str) -> None:
    ss, eu = build(flavour, "ss"), build(flavour, "eu")
    assert ss.decoder is not None and eu.decoder is not None
    D = ss.cfg.latent_dim
    previous = F if flavour == "recurrent" else 0  # the autoregressive decoder reads x_{t-1}
    assert ss.decoder.inp.in_features == D + K + previous
    assert eu.decoder.inp.in_features == D + previous
    assert build(flavour, "es").decoder is None


@pytest.mark.parametrize("window", [15, 16, 17, 33])
def test_conv_decoder_restores_any_window_length(window: int) -> None:
    cfg = dataclasses.replace(
        tiny_config("conv"),
        conv_channels=(4, 4, 4),
        conv_strides=(2, 1, 2),
        window_size=window,
        n_channels=F,
        n_classes=K,
    )
    out = SemiSupervisedVAE(cfg).eval()(torch.randn(2, window, F))
    assert out.x_mu is not None
    assert out.x_mu.shape == (2, window, F)


def test_decoder_input_depends_on_pi() -> None:
    net = build("recurrent", "ss")
    z = torch.zeros(1, T, net.cfg.latent_dim)
    pi_a = torch.zeros(1, T, K)
    pi_a[..., 0] = 1.0
    pi_b = torch.zeros(1, T, K)
    pi_b[..., 1] = 1.0
    x = torch.randn(1, T, F)
    assert not torch.allclose(net.decode(z, pi_a, x)[0], net.decode(z, pi_b, x)[0])


def test_the_autoregressive_decoder_reads_only_earlier_steps() -> None:
    """x_mu at step t depends on x up to t-1 (and on z, pi), never on x_t or later: a
    reconstruction that could read x_t would copy it, and every window would look normal."""
    net = build("recurrent", "ss").eval()
    z, pi = torch.zeros(1, T, net.cfg.latent_dim), torch.full((1, T, K), 1.0 / K)
    x = torch.randn(1, T, F)
    later = x.clone()
    later[:, 5:] += 3.0  # change step 5 onwards
    a, b = net.decode(z, pi, x)[0], net.decode(z, pi, later)[0]
    assert torch.equal(a[:, :6], b[:, :6])  # steps 0..5 read x_0..x_4 only
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_reparameterize_uses_the_given_generator() -> None:
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    draw = [
        SemiSupervisedVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(draw[0], draw[1])
    other = SemiSupervisedVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(8))
    assert not torch.equal(draw[0], other)
    tight = SemiSupervisedVAE.reparameterize(mu, torch.full((3, 2), -40.0))
    assert torch.allclose(tight, mu, atol=1e-6)  # sigma -> 0 gives z = mu


def test_default_config_follows_table_15() -> None:
    cfg = ModelConfig(window_size=128, n_channels=6, n_classes=6)
    net = SemiSupervisedVAE(cfg)
    assert isinstance(net.encoder.inp, torch.nn.Linear)
    assert net.encoder.inp.out_features == 40
    assert net.mu_head is not None and net.mu_head.out_features == 2
    assert net.pi_head is not None and net.pi_head.out_features == 6
    assert net.decoder is not None and net.decoder.inp.out_features == 30
    assert net.out_mu is not None and net.out_mu.out_features == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conv_kernel": 4}, "conv_kernel must be odd"),
        ({"conv_strides": (1,)}, "same length"),
        ({"latent_dim": 0}, "latent_dim must be a positive int"),
        ({"flavour": "transformer"}, "flavour must be one of"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ],
)
def test_invalid_model_config(change: dict[str, object], message: str) -> None:
    cfg = dataclasses.replace(ModelConfig(), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace(")", r"\)")):
        cfg.validate()

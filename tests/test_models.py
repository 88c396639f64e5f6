"""Tests of ms2dist.models: shapes, KL consistency, gradient routing, overfitting real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ms2dist.configs import PRESETS, get_preset
from ms2dist.models import (
    VRAE,
    MidiSandwich2,
    ModelConfig,
    binarize,
    gaussian_kl,
    n_params,
    note_prf,
    reparameterize,
    stage1_loss,
    stage2_loss,
    stage2_loss_from_latents,
)
from ms2dist.yamlconfig import from_dict, to_dict

SHAPE = (4, 48, 84, 5)
STRATEGIES = ["concat", "project", "vrae", "lstm"]


def _random_phrases(b: int, seed: int = 0, density: float = 0.03) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((b, *SHAPE), generator=g) < density).float()


def _tiny(**mfg: object) -> MidiSandwich2:
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    for k, v in mfg.items():
        setattr(cfg.mfg, k, v)
    return MidiSandwich2(cfg)


def load_phrases(root: Path, n: int = 8) -> torch.Tensor:
    """First 4-bar window of the first ``n`` songs as (n, 4, 48, 84, 5) floats in {0, 1}.

    LPD-5 -> MuseGAN layout: binarise velocities, 24 -> 12 steps per beat by OR-ing pairs,
    pitches 24..107, bars of 48 steps.
    """
    import pypianoroll

    phrases = []
    for f in sorted(root.rglob("*.npz"))[:n]:
        mt = pypianoroll.load(f)
        assert [t.name for t in mt.tracks] == ["Drums", "Piano", "Guitar", "Bass", "Strings"]
        tracks = []
        for t in mt.tracks:
            roll = t.pianoroll[: 4 * 96] > 0
            roll = np.pad(roll, ((0, 4 * 96 - roll.shape[0]), (0, 0)))
            roll = roll.reshape(4 * 48, 2, 128).any(1)[:, 24:108]
            tracks.append(roll.reshape(4, 48, 84))
        phrases.append(np.stack(tracks, -1))
    return torch.from_numpy(np.stack(phrases)).float()


# ------------------------------------------------------------------- configs, shapes


def test_presets_roundtrip_through_strict_config() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(KeyError):
        get_preset("nope")


def test_param_counts_per_preset() -> None:
    counts = {name: n_params(MidiSandwich2(get_preset(name))) for name in PRESETS}
    for name, c in counts.items():
        print(f"{name:>15}: {c:,} parameters")
    assert counts["tiny"] < counts["paper"] < counts["reference-code"]
    shared = get_preset("paper")
    shared.shared_bvae = True
    m = MidiSandwich2(shared)
    assert len(m.bvaes) == 1 and m.bvae(0) is m.bvae(4)
    assert n_params(m) < counts["paper"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_shapes_of_every_inference_path(preset: str) -> None:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = MidiSandwich2(cfg).eval()
    x = _random_phrases(2)
    mu, logvar = model.encode_tracks(x)
    n = 2 * model.n_segments
    assert mu.shape == logvar.shape == (n, 5, cfg.bvae.latent)
    mu_z, _ = model.encode(x)
    assert mu_z.shape == (n, cfg.mfg.latent)
    outs = {
        "restore": model.restore(x, seed=0),
        "no_refine": model.restore(x, refine=False, sample=False),
        "generate": model.generate(2, seed=0),
        "no_fusion": model.generate_no_fusion(1, seed=0),
        "interpolate": model.interpolate(x[0], x[1], steps=3),
        "complete": model.complete(x[:1], [1], n_iter=1, init="zeros", seed=0),
    }
    for name, y in outs.items():
        assert y.shape[1:] == SHAPE, name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name
    assert outs["generate"].shape[0] == 2 and outs["interpolate"].shape[0] == 3


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mfg_shapes_every_preset_and_strategy(preset: str, strategy: str) -> None:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    cfg.mfg.strategy = strategy
    model = MidiSandwich2(cfg)
    lat = cfg.bvae.latent
    mu, logvar = torch.randn(3, 5, lat), torch.randn(3, 5, lat) + model.bvaes[0].logvar_offset
    mu_hat, logvar_hat, mu_z, logvar_z = model.mfg(mu, logvar)
    assert mu_hat.shape == logvar_hat.shape == (3, 5, lat)
    assert mu_z.shape == logvar_z.shape == (3, cfg.mfg.latent)
    loss, _ = stage2_loss_from_latents(model, mu, logvar, kl_weight=1.0, free_bits=0.0)
    assert torch.isfinite(loss)
    if preset == "tiny":  # the full generation path with this strategy, where it is cheap
        y = model.eval().generate(1, seed=0)
        assert y.shape == (1, *SHAPE)


def test_forget_gate_bias_is_one() -> None:
    vrae = VRAE(84, 48, 32, 8)
    for lstm in (vrae.encoder, vrae.decoder):
        h = lstm.hidden_size
        total = lstm.bias_ih_l0 + lstm.bias_hh_l0
        assert torch.all(total[h : 2 * h] == 1.0) and torch.all(total[:h] == 0.0)


# -------------------------------------------------------- reparameterisation and KL


def test_epsilon_std_sets_initial_posterior_and_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    vrae = VRAE(84, 48, 32, 8, epsilon_std=0.01)
    x = _random_phrases(1)[0, 0, :, :, 1].unsqueeze(0)  # one bar, (1, 48, 84)
    mu, logvar = vrae.encode(x)
    mu, logvar = mu.detach()[0], logvar.detach()[0]
    # A fresh head gives posterior std ~ epsilon_std (paper eq. 5 with eps ~ N(0, 0.01^2)).
    std = (0.5 * logvar).exp()
    assert torch.all((std > 0.005) & (std < 0.02)), std
    # The sampler draws from exactly the distribution the analytic KL describes.
    n = 200_000
    z = reparameterize(mu.expand(n, -1), logvar.expand(n, -1))
    assert torch.allclose(z.std(0), std, rtol=0.02)
    q = torch.distributions.Normal(mu, std)
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean()
    analytic = gaussian_kl(mu, logvar).sum()
    assert math.isclose(float(mc), float(analytic), rel_tol=0.01), (float(mc), float(analytic))
    # And for a wide posterior too (e.g. after training has moved logvar).
    mu2, lv2 = torch.randn(8), torch.randn(8)
    z2 = reparameterize(mu2.expand(n, -1), lv2.expand(n, -1))
    q2 = torch.distributions.Normal(mu2, (0.5 * lv2).exp())
    mc2 = (q2.log_prob(z2) - p.log_prob(z2)).sum(-1).mean()
    assert math.isclose(float(mc2), float(gaussian_kl(mu2, lv2).sum()), rel_tol=0.02, abs_tol=0.02)


# ---------------------------------------------------------------- gradient routing


def test_joint_phase_reaches_every_vrae_and_refine_parameter() -> None:
    model = _tiny()
    x = _random_phrases(2)
    loss, metrics = stage1_loss(model, x, 2, phase="joint", kl_weight=1.0, free_bits=0.0)
    loss.backward()
    bvae = model.bvae(2)
    for name, p in bvae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for t in (0, 1, 3, 4):
        assert all(p.grad is None for p in model.bvae(t).parameters())
    assert all(p.grad is None for p in model.mfg.parameters())
    assert {"vrae_bce", "refine_bce", "kl", "f1", "loss"} <= set(metrics)


def test_refine_phase_trains_only_the_refiner_and_vrae_phase_only_the_vrae() -> None:
    model = _tiny()
    x = _random_phrases(2)
    loss, _ = stage1_loss(model, x, 0, phase="refine", kl_weight=1.0, free_bits=0.0)
    loss.backward()
    bvae = model.bvae(0)
    assert all(p.grad is None for p in bvae.vrae.parameters())
    assert all(p.grad is not None for p in bvae.refine.parameters())
    model.zero_grad(set_to_none=True)
    loss, _ = stage1_loss(model, x, 0, phase="vrae", kl_weight=1.0, free_bits=0.0)
    loss.backward()
    assert all(p.grad is not None for p in bvae.vrae.parameters())
    assert all(p.grad is None for p in bvae.refine.parameters())


def test_free_bits_floor_the_kl_cost() -> None:
    model = _tiny()
    x = _random_phrases(2)
    _, m0 = stage1_loss(model, x, 1, phase="vrae", kl_weight=1.0, free_bits=0.0)
    _, m1 = stage1_loss(model, x, 1, phase="vrae", kl_weight=1.0, free_bits=1e6)
    assert m0["kl_cost"] > 0 and m1["kl_cost"] == 0.0


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("recon", ["kl", "mse"])
def test_stage2_gives_no_bvae_parameter_a_gradient(strategy: str, recon: str) -> None:
    model = _tiny(strategy=strategy, recon=recon)
    x = _random_phrases(2)
    loss, metrics = stage2_loss(model, x, kl_weight=1.0, free_bits=0.0)
    assert torch.isfinite(loss) and {"recon", "kl"} <= set(metrics)
    loss.backward()
    assert all(p.grad is None for p in model.bvaes.parameters())
    assert all(p.grad is not None for p in model.mfg.parameters())
    # The latent-cache path gives the same loss for the same (mu, logvar) and MFG noise.
    with torch.no_grad():
        mu, logvar = model.encode_tracks(x)
    torch.manual_seed(1)
    a, _ = stage2_loss_from_latents(model, mu, logvar, kl_weight=1.0, free_bits=0.0)
    torch.manual_seed(1)
    b, _ = stage2_loss(model, x, kl_weight=1.0, free_bits=0.0)
    assert torch.allclose(a, b)


def test_mfg_recon_kl_is_zero_at_a_perfect_reconstruction() -> None:
    model = _tiny()
    mu, logvar = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    assert torch.allclose(model.mfg.recon_loss(mu, logvar, mu, logvar), torch.zeros(3), atol=1e-5)
    assert torch.all(model.mfg.recon_loss(mu + 0.1, logvar, mu, logvar) > 0)


# ----------------------------------------------------------------- inference helpers


def test_generate_is_reproducible_by_seed() -> None:
    model = _tiny().eval()
    a, b = model.generate(2, seed=7), model.generate(2, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.generate(2, seed=8))
    assert torch.equal(model.generate_no_fusion(2, seed=3), model.generate_no_fusion(2, seed=3))


def test_complete_keeps_given_tracks_bit_for_bit() -> None:
    model = _tiny().eval()
    x = _random_phrases(3, seed=5)
    for keep in ([0], [1, 3], [0, 1, 2, 3]):
        for init in ("prior", "zeros"):
            y = model.complete(x, keep, n_iter=2, init=init, seed=0)
            assert torch.equal(y[..., keep], x[..., keep])
            others = [t for t in range(5) if t not in keep]
            assert float(y[..., others].min()) >= 0 and float(y[..., others].max()) <= 1


def test_binarize_modes() -> None:
    p = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.0])
    assert binarize(p).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert binarize(p, threshold=0.05).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    big = torch.full((10_000,), 0.3)
    a, b = binarize(big, "bernoulli", generator=g1), binarize(big, "bernoulli", generator=g2)
    assert torch.equal(a, b) and abs(float(a.mean()) - 0.3) < 0.02
    with pytest.raises(ValueError):
        binarize(p, "round")  # type: ignore[arg-type]


def test_note_prf_on_hand_built_rolls() -> None:
    target = torch.zeros(2, 4, 3)  # (..., tracks=3)
    probs = torch.zeros(2, 4, 3)
    target[0, :2, 0] = 1  # track 0: 2 true notes, predict 1 of them + 1 false alarm
    probs[0, 0, 0], probs[1, 3, 0] = 0.9, 0.8
    target[:, :, 1] = 1  # track 1: all 8 true, all predicted
    probs[:, :, 1] = 0.7  # track 2: nothing true, nothing predicted
    p, r, f = note_prf(probs, target)
    assert p.tolist() == [0.5, 1.0, 1.0] and r.tolist() == [0.5, 1.0, 1.0]
    assert f.tolist() == [0.5, 1.0, 1.0]


# -------------------------------------------------------------- learning real music


@pytest.fixture(scope="module")
def phrases8(lpd5_test_small: Path) -> torch.Tensor:
    x = load_phrases(lpd5_test_small, 8)
    assert x.shape == (8, *SHAPE) and 0.001 < float(x.mean()) < 0.1
    return x


STAGE1_STEPS, REFINE_STEPS, STAGE2_STEPS = 250, 3, 300


@pytest.fixture(scope="module")
def overfit(phrases8: torch.Tensor) -> tuple[MidiSandwich2, list[float]]:
    """Train ``tiny`` on 8 real phrases in the paper's order: VRAEs, refiners, then MFG-VAE.

    The refiner steps are few because 3-D convolutions dominate CPU time; the refiner starts
    near the identity (``RefineConfig.skip``), so they must not undo the VRAE's fit.
    """
    torch.manual_seed(0)
    model = MidiSandwich2(get_preset("tiny"))

    def train(phase: str, steps: int, lr: float) -> list[float]:
        opt = torch.optim.Adam(model.bvaes.parameters(), lr=lr)
        f1s: list[float] = []
        for _ in range(steps):
            loss, f1s = torch.zeros(()), []
            for t in range(5):
                lt, m = stage1_loss(model, phrases8, t, phase=phase, kl_weight=1e-3, free_bits=0)
                loss, f1s = loss + lt, [*f1s, m["f1"]]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.bvaes.parameters(), 1.0)
            opt.step()
        return f1s

    f1s = train("vrae", STAGE1_STEPS, 1e-2)
    train("refine", REFINE_STEPS, 1e-3)
    with torch.no_grad():
        mu, logvar = model.encode_tracks(phrases8)
    opt2 = torch.optim.Adam(model.mfg.parameters(), lr=3e-3)
    for _ in range(STAGE2_STEPS):
        loss, _ = stage2_loss_from_latents(model, mu, logvar, kl_weight=1e-3, free_bits=0.0)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()
    return model.eval(), f1s


@pytest.mark.slow
@pytest.mark.data
def test_tiny_model_overfits_eight_real_phrases(
    overfit: tuple[MidiSandwich2, list[float]], phrases8: torch.Tensor
) -> None:
    model, train_f1 = overfit
    print("stage-1 VRAE training F1 per track:", [round(f, 3) for f in train_f1])
    # Stage-1 round trip of every BVAE (posterior mean, refined), pooled over tracks.
    with torch.no_grad():
        probs = torch.stack(
            [model.bvae(t)(phrases8[..., t], sample=False)[0] for t in range(5)], -1
        )
    _, _, f1 = note_prf(probs.reshape(-1, 1), phrases8.reshape(-1, 1))
    per_track = note_prf(probs, phrases8)[2]
    print("BVAE restore F1 (refined):", float(f1), "per track:", per_track.tolist())
    assert float(f1) >= 0.9


@pytest.mark.slow
@pytest.mark.data
def test_restore_is_closer_than_generate(
    overfit: tuple[MidiSandwich2, list[float]], phrases8: torch.Tensor
) -> None:
    model, _ = overfit
    flat = phrases8.reshape(-1, 1)
    f_restore = float(note_prf(model.restore(phrases8, seed=0).reshape(-1, 1), flat)[2])
    f_generate = float(note_prf(model.generate(8, seed=0).reshape(-1, 1), flat)[2])
    print(f"full-VAE restore F1 {f_restore:.3f} vs generate F1 {f_generate:.3f}")
    assert f_restore > f_generate + 0.1

"""The grouped refine stack equals the per-track refine nets: outputs, losses, gradients.

``MS2DIST_TEST_DEVICE=cuda`` runs them on a GPU (bench/gpu_check.sh does), in true fp32.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from ms2dist.configs import get_preset
from ms2dist.models import MidiSandwich2, RefineConfig, RefineNet
from ms2dist.models import grouped as grouped_module
from ms2dist.models.convs import band_stem, conv3d_same, same_conv
from ms2dist.models.grouped import can_group, grouped_refine_logits, refine_tracks
from ms2dist.models.losses import stage1_losses

SHAPE = (4, 48, 84, 5)
DEVICE = torch.device(os.environ.get("MS2DIST_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":  # TF32 convolutions would differ by ~1e-3, which is not the point
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _phrases(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((b, *SHAPE), generator=g) < 0.03).float().to(DEVICE)


def _perturbed(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every weight off its init (the skip head starts at 0.01 x, biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.device))


@pytest.mark.parametrize("cfg", [RefineConfig(channels=4, n_units=1),
                                 RefineConfig(channels=8, n_units=2),
                                 RefineConfig(channels=3, n_units=0, skip=False),
                                 RefineConfig(channels=2, n_units=1, kernel=(3, 5, 7))])
def test_grouped_refine_equals_each_net_on_its_track(cfg: RefineConfig) -> None:
    torch.manual_seed(0)
    nets = [RefineNet(cfg).to(DEVICE) for _ in range(5)]
    for n in nets:
        _perturbed(n)
    probs = torch.rand(3, *SHAPE).clamp(0.01, 0.99).to(DEVICE)
    want = torch.stack([nets[k](probs[..., k]) for k in range(5)], -1)
    got = grouped_refine_logits(nets, probs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _module_forward(net: RefineNet, probs: torch.Tensor) -> torch.Tensor:
    """The refine net's definition: its explicit-padding modules, one after another."""
    h = net.units(net.stem(probs.unsqueeze(1)))
    out = net.head(torch.relu(h)).squeeze(1)
    return out + torch.logit(probs, eps=1e-6) if net.skip else out


@pytest.mark.parametrize("cfg", [RefineConfig(channels=4, n_units=1),
                                 RefineConfig(channels=3, n_units=2, kernel=(2, 4, 7)),
                                 RefineConfig(channels=2, n_units=1, kernel=(3, 5, 12)),
                                 RefineConfig(channels=2, n_units=0, kernel=(1, 3, 5))])
def test_the_fast_refine_forward_equals_its_padded_modules_with_gradients(cfg: RefineConfig
                                                                          ) -> None:
    """band_stem + same_conv (RefineNet.forward) = ConstantPad3d + Conv3d, even kernels and
    pitch counts the kernel does not divide too, with the input's gradient (joint phase)."""
    torch.manual_seed(0)
    net = RefineNet(cfg).to(DEVICE)
    _perturbed(net)
    grads = []
    base = torch.rand(2, *SHAPE).clamp(0.01, 0.99).to(DEVICE).requires_grad_()
    target = (torch.rand(base.shape[:-1]) < 0.1).float().to(DEVICE)
    for forward in (_module_forward, RefineNet.forward):
        net.zero_grad(set_to_none=True)
        base.grad = None
        out = forward(net, base[..., 1])  # a strided slice, as the trainer passes it
        F.binary_cross_entropy_with_logits(out, target).backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
        grads[-1][1]["input"] = base.grad.clone()
    (want, gw), (got, gg) = grads
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for n in gw:
        torch.testing.assert_close(gg[n], gw[n], rtol=1e-4, atol=1e-4, msg=n)


def test_band_stem_and_same_conv_check_their_layers() -> None:
    x = torch.rand(3, 2, 8, 16)
    stem, inner = conv3d_same(1, 5, (1, 3, 4)), conv3d_same(5, 5, (1, 3, 4))
    h = band_stem(x, stem)
    assert h.shape == (3, 5, 2, 8, 16) and h.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(same_conv(h, [inner]), inner(h), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1-channel input layer, got 5"):
        band_stem(x, inner)


def test_refine_tracks_groups_on_cuda_only_unless_told(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    nets = [RefineNet(RefineConfig(channels=2, n_units=0)) for _ in range(3)]
    probs = torch.rand(1, 4, 48, 84, 3).clamp(0.01, 0.99)
    calls = []
    real = grouped_module.grouped_refine_logits
    monkeypatch.setattr(grouped_module, "grouped_refine_logits",
                        lambda n, p: calls.append(p.device.type) or real(n, p))
    per_track = list(probs.unbind(-1))
    a = refine_tracks(nets, per_track)  # CPU, unset: net by net
    assert calls == []
    b = refine_tracks(nets, per_track, grouped=True)
    assert calls == ["cpu"]
    torch.testing.assert_close(torch.stack(a, -1), torch.stack(b, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 tracks of probabilities for 3 refine nets"):
        refine_tracks(nets, per_track[:2])


def test_can_group_refuses_one_shared_net_and_unlike_nets() -> None:
    a, b = RefineNet(RefineConfig(channels=4)), RefineNet(RefineConfig(channels=4))
    assert can_group([a, b])
    assert not can_group([a, a])  # the shared-BVAE ablation: one module for every track
    assert not can_group([a, RefineNet(RefineConfig(channels=8))])
    assert not can_group([a])
    with pytest.raises(ValueError, match="4 tracks on its last axis, nets 2"):
        grouped_refine_logits([a, b], torch.rand(1, 4, 48, 84, 4))


@pytest.mark.parametrize("phase", ["refine", "joint"])
def test_grouped_stage1_losses_metrics_and_gradients_equal_the_per_track_ones(phase: str
                                                                                ) -> None:
    torch.manual_seed(0)
    model = MidiSandwich2(get_preset("tiny")).to(DEVICE)
    _perturbed(model)
    x = _phrases(4)
    tracks = [0, 2, 3, 4]  # a --tracks subset: the grouped stack holds only these
    results = {}
    for grouped in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same reparameterisation noise for both
        losses, metrics = stage1_losses(model, x, tracks, phase=phase, grouped=grouped)
        torch.stack(losses).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[grouped] = (torch.stack(losses).detach(), metrics, grads)
    (l0, m0, g0), (l1, m1, g1) = results[False], results[True]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-4)
    for a, b in zip(m0, m1, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    assert g0.keys() == g1.keys()
    assert not any(n.startswith("bvaes.1.") for n in g1)  # a track not trained: no gradient
    assert any(n.startswith("bvaes.4.refine.") for n in g1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-5, msg=n)


def test_decode_tracks_matches_track_by_track() -> None:
    torch.manual_seed(0)
    model = MidiSandwich2(get_preset("tiny")).to(DEVICE).eval()
    _perturbed(model)
    z = torch.randn(2 * model.n_segments, 5, model.cfg.bvae.latent).to(DEVICE)
    got = model.decode_tracks(z)
    zs = z.view(2, model.n_segments, 5, -1)
    want = torch.stack([model.bvae(t).decode(zs[:, :, t]) for t in range(5)], -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

"""Binarisation rules and per-track thresholds fitted to the data's note density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ms2dist import TRACKS
from ms2dist.inference.calibration import (
    BinarizeRule,
    CalibrationError,
    fit_thresholds,
    rule_for_model,
    track_density,
)


class _UniformModel:
    """generate() -> probabilities uniform in [0, scale[t]) per track, seeded."""

    def __init__(self, scales):
        self.scales = torch.tensor(scales, dtype=torch.float32)

    def generate(self, n, temperature=1.0, seed=0, refine=True):
        g = torch.Generator().manual_seed(seed)
        p = torch.rand((n, 4, 48, 84, len(self.scales)), generator=g)
        return p * self.scales * (1.0 if refine else 0.5)


def _data(densities, n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 4, 48, 84, len(densities))) < np.asarray(densities)


def test_thresholds_reproduce_the_data_density_per_track():
    data = _data([0.0, 0.02, 0.01, 0.005, 0.05])
    model = _UniformModel([0.3, 0.2, 0.9, 0.05, 0.6])
    cal = fit_thresholds(model, data, n_samples=16, batch_size=5, seed=3)
    target = track_density(data)
    assert target[0] == 0.0 and cal["thresholds"]["Drums"] == 1.0  # never played: silent
    probs = model.generate(16, seed=100)  # other samples than those fitted on
    notes = BinarizeRule("calibrated", tuple(cal["thresholds"][t] for t in TRACKS)).apply(probs)
    got = notes.float().mean((0, 1, 2, 3)).numpy()
    np.testing.assert_allclose(got[1:], target[1:], rtol=0.05)
    assert got[0] == 0.0
    # Uniform on [0, s): the cut is s * (1 - density); no-refine outputs are half as large.
    for t, s in zip(TRACKS[1:], [0.2, 0.9, 0.05, 0.6], strict=True):
        d = cal["target_density"][t]
        assert cal["thresholds"][t] == pytest.approx(s * (1 - d), rel=0.02)
        assert cal["thresholds_no_refine"][t] == pytest.approx(0.5 * s * (1 - d), rel=0.02)
    assert cal["density_at_0.5"]["Guitar"] == pytest.approx(1 - 0.5 / 0.9, rel=0.05)
    assert cal["density_at_0.5"]["Bass"] == 0.0  # what a fixed 0.5 would have played


def test_fit_is_deterministic_for_a_seed():
    data = _data([0.01] * 5)
    model = _UniformModel([0.5] * 5)
    a = fit_thresholds(model, data, n_samples=8, seed=1)
    b = fit_thresholds(model, data, n_samples=8, seed=1)
    c = fit_thresholds(model, data, n_samples=8, seed=2)
    assert a == b and a["thresholds"] != c["thresholds"]


def test_rule_applies_one_threshold_per_track():
    probs = torch.full((1, 1, 1, 2, 5), 0.3)
    probs[..., 1, :] = 0.6
    rule = BinarizeRule("calibrated", (0.2, 0.4, 0.7, 0.25, 0.9), (0.1,) * 5)
    assert rule.apply(probs)[0, 0, 0].tolist() == [[True, False, False, True, False],
                                                   [True, True, False, True, False]]
    assert rule.apply(probs, refine=False).all()
    assert "calibrated thresholds (D 0.200, P 0.400" in rule.describe()
    assert BinarizeRule("threshold", (0.5,) * 5).describe() == "threshold 0.5"


def test_rule_choice_explicit_then_calibrated_then_half():
    meta = {"calibration": {"thresholds": dict(zip(TRACKS, [0.1, 0.2, 0.3, 0.4, 0.5],
                                                   strict=True))}}
    assert rule_for_model(meta).rule == "calibrated"
    assert rule_for_model(meta).thresholds == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert rule_for_model(meta, threshold=0.3).thresholds == (0.3,) * 5
    assert rule_for_model(meta, "threshold").thresholds == (0.5,) * 5
    assert rule_for_model(meta, "bernoulli").rule == "bernoulli"
    assert rule_for_model({}).rule == "threshold"  # an old, uncalibrated model
    with pytest.raises(CalibrationError, match="no calibrated thresholds.*ms2dist calibrate"):
        rule_for_model({}, "calibrated", label="runs/x")
    with pytest.raises(CalibrationError, match="--threshold 0.3 goes with --binarize threshold"):
        rule_for_model(meta, "bernoulli", 0.3)
    with pytest.raises(CalibrationError, match=r"\[0, 1\)"):
        rule_for_model(meta, threshold=1.5)


def test_bernoulli_rule_is_seeded():
    probs = torch.full((2, 4, 48, 84, 5), 0.1)
    rule = BinarizeRule("bernoulli")
    a = rule.apply(probs, generator=torch.Generator().manual_seed(0))
    b = rule.apply(probs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 0.08 < a.float().mean() < 0.12


class _BarModel:
    """Half the bars are loud (1% of cells at p > 0.5), half faint: every cell at p < 0.2, the
    spread-out mass a real model leaves in bars that should be silent."""

    def generate(self, n, temperature=1.0, seed=0, refine=True):
        g = torch.Generator().manual_seed(seed)
        loud = torch.rand((n, 4, 1, 1, 5), generator=g) < 0.5
        u = torch.rand((n, 4, 48, 84, 5), generator=g)
        return torch.where(loud, torch.where(u < 0.01, 0.5 + 10 * u, 0.001 * u), 0.2 * u)


def test_bar_gates_match_the_empty_bar_rate():
    from ms2dist.inference.calibration import _quantile_threshold

    # Data: every other bar of every track is empty; density 1% overall.
    rng = np.random.default_rng(0)
    data = rng.random((40, 4, 48, 84, 5)) < 0.02
    data[:, 1::2] = False
    model = _BarModel()
    cal = fit_thresholds(model, data, n_samples=64, seed=0)
    rule = rule_for_model({"calibrated": None, "calibration": cal})
    probs = model.generate(128, seed=999)
    notes = rule.apply(probs).numpy()
    eb = 1.0 - notes.any(axis=(2, 3)).mean((0, 1))
    np.testing.assert_allclose(eb, 0.5, atol=0.08)  # the faint bars are silenced
    np.testing.assert_allclose(notes.mean((0, 1, 2, 3)), track_density(data), rtol=0.2)
    assert "bar gates D " in rule.describe()
    # Density matching alone lets the faint bars through: nearly every bar plays.
    fit = model.generate(64, seed=0)
    ungated = BinarizeRule("calibrated", tuple(
        _quantile_threshold(fit[..., t], float(track_density(data)[t])) for t in range(5)))
    eb0 = 1.0 - ungated.apply(probs).numpy().any(axis=(2, 3)).mean((0, 1))
    assert eb0.max() < 0.05, eb0


def test_saturated_probabilities_are_not_cut_away():
    # A confident model: its notes are exactly 1.0 in float32, everything else 0.
    p = torch.zeros(1000)
    p[:30] = 1.0
    from ms2dist.inference.calibration import _quantile_threshold

    t = _quantile_threshold(p, 0.02)
    assert (p > t).sum() == 30  # the nearest achievable density (3%), not silence

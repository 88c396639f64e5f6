"""The generation modes (songs, bar infilling, attribute vectors, variations): the pure
pieces on hand-built inputs, then the shipped model on real songs of ../shared/data it
never trained on (``lpd5_test_small``), through the functions, ``ms2dist sample`` and the
pyfunc model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_ms2dist

from ms2dist.inference import mode_checks, modes
from ms2dist.inference.attributes import (
    attribute_names,
    parse_attribute,
    segment_attributes,
    shift_vector,
)

PRETRAINED = "pretrained:lpd5"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------- pure pieces


def test_form_and_bars_are_parsed_and_bad_ones_refused():
    assert modes.parse_form("AABA", 8) == [0, 0, 0, 0, 1, 1, 0, 0]
    assert modes.parse_form(None, 3) == [0, 0, 0]
    assert modes.parse_form("abca", 4) == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="3 sections but the song has 4 phrases"):
        modes.parse_form("ABC", 4)
    with pytest.raises(ValueError, match="letters only"):
        modes.parse_form("A-B", 2)
    assert modes.parse_bars("3-4", 4) == [2, 3]
    assert modes.parse_bars("1,3", 4) == [0, 2]
    for bad in ("0", "5", "4-3", "x", "2-9"):
        with pytest.raises(ValueError, match="--bars"):
            modes.parse_bars(bad, 4)


def test_chain_has_the_asked_correlation_and_conditioning_is_exact():
    cov = modes.chain_cov(6, 0.9)
    assert cov[0, 1] == pytest.approx(0.9) and cov[0, 5] == pytest.approx(0.9 ** 5)
    g = torch.Generator().manual_seed(0)
    z = modes._chain_draw(cov, [], None, range(6), torch.randn(20000, 6, 1, generator=g,
                                                               dtype=torch.float64))[..., 0]
    emp = torch.corrcoef(z.T)
    assert torch.allclose(emp, cov, atol=0.03)
    # Given its two neighbours, a chain point's mean is link / (1 + link^2) * their sum.
    known = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
    eps = torch.zeros(1, 1, 1, dtype=torch.float64)
    mid = modes._chain_draw(modes.chain_cov(3, 0.5), [0, 2], known, [1], eps)
    assert mid.item() == pytest.approx(0.5 / 1.25 * 4.0)


def test_spearman_and_phrase_links_on_hand_built_songs():
    assert mode_checks.spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert mode_checks.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(mode_checks.spearman([1, 2, 3], [5, 5, 5]))
    phrase = np.zeros((1, 4, 48, 84, 5), dtype=bool)
    phrase[0, :, ::12, 36, 1] = True  # C on the piano
    phrase[0, :, ::12, 40, 3] = True  # E on the bass
    same = mode_checks.phrase_links([np.repeat(phrase, 3, 0)])
    assert same == {"pch_correlation": pytest.approx(1.0), "density_ratio": 1.0, "pairs": 2}
    other = phrase.copy()
    other[0, :, ::6, 37, 2] = True  # a C sharp on the guitar, twice as often
    links = mode_checks.phrase_links([np.concatenate([phrase, other])])
    assert links["pch_correlation"] < 0.5
    assert links["density_ratio"] == pytest.approx(phrase.sum() / other.sum())


def test_segment_attributes_known_answers():
    x = np.zeros((1, 4, 48, 84, 5), dtype=bool)
    x[0, 0, 0:12, 10, 0] = True  # one drum hit in bar 1
    x[0, 1, 0:24, [20, 24, 27], 1] = True  # a 3-note piano chord in bar 2
    x[0, 1, 24:48, 20, 1] = True  # its lowest note held on: still one note
    bars = segment_attributes(x, n_segments=4)
    assert bars["Drums.density"].tolist() == [1, 0, 0, 0]
    assert bars["Piano.density"].tolist() == [0, 3, 0, 0]  # pitch 20 runs on: 1 onset
    assert bars["Piano.polyphony"][1] == pytest.approx((24 * 3 + 24) / 48)
    assert bars["Piano.range"][1] == 7 and np.isnan(bars["Piano.range"][0])
    assert np.isnan(bars["Bass.polyphony"]).all()
    phrase = segment_attributes(x, n_segments=1)
    assert phrase["Piano.density"].tolist() == [3 / 4]  # notes started per bar
    assert "Drums.range" not in bars and set(bars) == set(attribute_names())


def test_attribute_requests_are_checked():
    avail = {"Drums.density": torch.ones(3), "Piano.range": torch.arange(3.0)}
    assert parse_attribute("Drums.density=+1.5", avail) == ("Drums.density", 1.5)
    for bad, msg in (("Drums.range=1", "unknown attribute 'Drums.range'"),
                     ("Drums.density", "expected TRACK.ATTRIBUTE=SCALE"),
                     ("Drums.density=lots", "not a number"),
                     ("Drums.density=11", "must lie in -10..10"),
                     ("Drums.density=nan", "must lie in")):
        with pytest.raises(ValueError, match=msg):
            parse_attribute(bad, avail)
    with pytest.raises(ValueError, match="has no attribute vectors"):
        parse_attribute("Drums.density=1", None)
    shift = shift_vector(avail, {"Drums.density": 2.0, "Piano.range": -1.0})
    assert shift.tolist() == [2.0, 1.0, 0.0]
    assert shift_vector(avail, {}) is None


@torch.no_grad()
def test_device_modes_give_the_cpu_result():
    """``MS2DIST_TEST_DEVICE=cuda`` (bench/gpu_check.sh): song, infill and vary of a small
    random model on the device equal the CPU's (the noise is drawn on the CPU)."""
    import os

    from ms2dist.configs import get_preset
    from ms2dist.models import MidiSandwich2

    device = torch.device(os.environ.get("MS2DIST_TEST_DEVICE", "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cpu = MidiSandwich2(get_preset("tiny")).eval()
    dev = MidiSandwich2(get_preset("tiny")).to(device).eval()
    dev.load_state_dict(cpu.state_dict())
    seeds = modes.sample_seeds(1, 0, 2)
    x = (torch.rand(2, 4, 48, 84, 5, generator=torch.Generator().manual_seed(0)) < 0.05
         ).float()
    for name, fn in (("song", lambda m, x: modes.song(m, seeds, 2, form="AB")),
                     ("infill", lambda m, x: modes.infill(m, x, [1, 2], [1, 3], seeds)),
                     ("infill-prior", lambda m, x: modes.infill(m, x, [0, 1, 2, 3],
                                                                [0, 1, 2, 3, 4], seeds)),
                     ("vary", lambda m, x: modes.vary(m, x, 0.4, seeds))):
        want = fn(cpu, x)
        got = fn(dev, x.to(device)).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------- the shipped model, real songs


@pytest.fixture(scope="module")
def model():
    from ms2dist.inference.modelio import load_model

    torch.set_num_threads(1)
    return load_model(PRETRAINED)


@pytest.fixture(scope="module")
def notes(model):
    from ms2dist.inference.calibration import rule_for_model

    rule = rule_for_model(model.ms2dist_meta, None, None)
    return lambda p: rule.apply(p).cpu().numpy()


@pytest.fixture(scope="module")
def held_out(lpd5_test_small):
    from ms2dist.dataset.load import split_phrases

    return split_phrases(lpd5_test_small, 48)


@torch.no_grad()
def test_songs_repeat_their_form_and_do_not_depend_on_the_batch(model):
    seeds = modes.sample_seeds(3, 0, 2)
    a = modes.song(model, seeds, 8, form="AABA")
    assert a.shape == (2, 32, 48, 84, 5)
    sections = a.view(2, 4, 8, 48, 84, 5)
    assert torch.equal(sections[:, 0], sections[:, 1]) and torch.equal(sections[:, 0],
                                                                       sections[:, 3])
    assert not torch.allclose(sections[:, 0], sections[:, 2])
    again = modes.song(model, seeds[1:], 8, form="AABA")  # sample 1 alone
    torch.testing.assert_close(again[0], a[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # two seeds, two songs
    with pytest.raises(ValueError, match="link"):
        modes.song(model, seeds, 2, link=1.0)


@torch.no_grad()
def test_linked_songs_are_closer_to_real_songs_than_independent_phrases(model, notes,
                                                                        lpd5_train_demo):
    from ms2dist.dataset.load import song_folder

    real = song_folder(lpd5_train_demo, limit=600)
    result = mode_checks.song_check(model, notes, real, n_songs=8, n_phrases=6)
    ours, indep, songs = result["rows"].values()
    assert result["passed"], result
    assert ours["pch_correlation"] > indep["pch_correlation"] + 0.2


@torch.no_grad()
def test_infill_keeps_the_rest_and_fits_it_better_than_fresh_bars(model, notes, held_out):
    x = torch.as_tensor(held_out[:8], dtype=torch.float32)
    seeds = modes.sample_seeds(0, 0, 8)
    out = modes.infill(model, x, [2, 3], [1, 3], seeds)
    keep = torch.ones(4, 5, dtype=torch.bool)
    keep[2:, [1, 3]] = False
    cells = keep[:, None, None, :].expand(4, 48, 84, 5)
    assert torch.equal(out[:, cells], x[:, cells])
    assert not torch.equal(out[:, 2:][..., [1, 3]], x[:, 2:][..., [1, 3]])
    torch.testing.assert_close(modes.infill(model, x[3:5], [2, 3], [1, 3], seeds[3:5]),
                               out[3:5], rtol=1e-4, atol=1e-5)
    for tracks in ([0, 1, 2, 3, 4], [1, 3]):
        r = mode_checks.infill_check(model, notes, held_out, [2, 3], tracks)
        assert r["kept_bit_for_bit"] and r["passed"], r


@torch.no_grad()
def test_variation_distance_grows_with_amount(model, notes, held_out):
    r = mode_checks.vary_check(model, notes, held_out[:32])
    f1 = [row["note_f1"] for row in r["rows"].values()]
    assert r["passed"] and f1[0] > 2 * f1[-1], f1
    x = torch.as_tensor(held_out[:2], dtype=torch.float32)
    with pytest.raises(ValueError, match="0..1"):
        modes.vary(model, x, 1.5, [0, 1])


@torch.no_grad()
def test_attribute_vectors_move_their_attribute(model, notes):
    assert list(model.ms2dist_attributes) == attribute_names()
    stats = model.ms2dist_meta["attributes"]["stats"]
    pick = {k: model.ms2dist_attributes[k] for k in ("Drums.density", "Piano.polyphony",
                                                     "Strings.density")}
    r = mode_checks.attribute_check(model, notes, pick, stats, n=24)
    for name, row in r["rows"].items():
        assert row["spearman"] >= 0.9, (name, row)
    # The other tracks' same attribute moves less (Strings.density against Drums.density).
    assert r["rows"]["Drums.density"]["moved (std)"] > \
        r["rows"]["Drums.density"]["others moved (max std)"]


def test_attributes_are_fitted_stored_and_refused_when_broken(tmp_path, lpd5_test_small):
    src = Path(__file__).resolve().parents[1] / "ms2dist" / "pretrained" / "lpd5"
    d = tmp_path / "m"
    shutil.copytree(src, d)
    (d / "attributes.safetensors").unlink()
    out = run_ms2dist(["attributes", "--model", d, "--data", lpd5_test_small,
                       "--max-phrases", "200", "--check-samples", "8"], env=ENV)
    assert "Drums.density" in out.stdout and "response Spearman" in out.stdout
    meta = json.loads((d / "config.json").read_text())["meta"]["attributes"]
    assert meta["names"][0] == "Drums.density" and "200 phrases" in meta["source"]
    # Each vector's measured response is stored with it, and printed as measured.
    assert set(meta["response"]) == set(meta["names"])
    r = meta["response"]["Drums.density"]
    assert r["samples_per_scale"] == 8 and r["steers"] == (
        r["spearman"] >= 0.9 and r["moved_std"] > r["others_moved_std"])
    from ms2dist.inference.modelio import load_model

    m = load_model(d)
    assert set(m.ms2dist_attributes) == set(meta["names"])
    assert m.ms2dist_attributes["Drums.density"].shape == (m.cfg.mfg.latent,)
    (d / "attributes.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="attributes.safetensors cannot be read"):
        load_model(d)
    bad = run_ms2dist(["attributes", "--model", PRETRAINED, "--data", lpd5_test_small],
                      check=False)
    assert bad.returncode == 2 and "must be a local directory" in bad.stderr


@torch.no_grad()
def test_attributes_left_out_are_named_with_the_reason(model, held_out):
    from ms2dist.inference.attributes import fit_attributes

    x = held_out[:24].copy()
    x[..., 4] = False  # no strings anywhere
    names, dirs, stats = fit_attributes(model, x.astype(np.float32))
    assert dirs.shape == (len(names), model.cfg.mfg.latent)
    assert not [n for n in names if n.startswith("Strings")]
    skipped = stats["skipped"]
    assert "always 0" in skipped["Strings.density"]
    assert "0 segments play it" in skipped["Strings.range"]
    with pytest.raises(ValueError, match="no attribute varies"):
        fit_attributes(model, np.zeros((4, 4, 48, 84, 5), dtype=np.float32))

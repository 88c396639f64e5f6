"""Known-answer tests for ms2dist.metrics on hand-built rolls."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from ms2dist import TRACKS
from ms2dist import metrics as M

BARS, STEPS, PITCHES = 4, 48, 84
LOW = 24  # MIDI pitch of index 0


def empty(n: int = 1) -> np.ndarray:
    """(n, bars, time, pitch) all-off single-track batch."""
    return np.zeros((n, BARS, STEPS, PITCHES), dtype=bool)


def put(roll: np.ndarray, midi: int, start: int, length: int, phrase: int = 0) -> None:
    """Set a note of `length` steps at phrase time `start` (runs across bar lines)."""
    flat = roll[phrase].reshape(BARS * STEPS, PITCHES)
    flat[start : start + length, midi - LOW] = True


def triad(root_pc: int, octave_base: int = 60) -> list[int]:
    return [octave_base + (root_pc + i) % 12 for i in (0, 4, 7)]


# ------------------------------------------------------------------------- chroma


def test_chroma_folds_octaves_not_neighbours():
    x = np.zeros(PITCHES, dtype=bool)
    x[[0, 12, 24, 1]] = True  # C1, C2, C3 and C#1
    c = M.chroma(x)
    assert c.tolist() == [3, 1] + [0] * 10
    # The buggy fold groups neighbouring semitones.
    assert x.reshape(12, 7).sum(1).tolist() != c.tolist()


def test_chroma_other_lowest_pitch():
    x = np.eye(88, dtype=bool)  # piano keys, index 0 = A0 (MIDI 21)
    c = M.chroma(x, lowest_pitch=21)
    assert c.shape == (88, 12)
    assert np.array_equal(c.argmax(1), (np.arange(88) + 21) % 12)
    assert c.sum() == 88


def test_chromatic_cluster_buggy_fold_disagrees():
    roll = empty()
    for p in range(30, 42):  # 12 semitones F#1..F2: every pitch class once
        put(roll, p, 0, 4)
    assert M.used_pitch_classes(roll) == 12.0
    bar = roll[0, 0].any(0)  # (84,) pitches used in bar 0
    buggy = np.count_nonzero(bar.reshape(12, 7).sum(1))
    assert buggy == 3  # index 6..17 spans only three groups of 7 neighbours
    correct = np.count_nonzero(bar.reshape(7, 12).sum(0))
    assert correct == 12


# ------------------------------------------------------------------------------ EB


def test_empty_bar_rate():
    roll = empty(2)
    put(roll, 60, 0, 2)  # bar 0 of phrase 0
    put(roll, 60, 47, 2)  # bars 0 and 1 of phrase 0 (crosses the bar line)
    put(roll, 40, 3 * STEPS, 1, phrase=1)  # bar 3 of phrase 1
    assert M.empty_bar_rate(roll) == pytest.approx(5 / 8)
    assert M.empty_bar_rate(empty()) == 1.0
    assert math.isnan(M.empty_bar_rate(empty(0)))


# ----------------------------------------------------------------------------- UPC


def test_upc_triad_and_octave_doublings():
    roll = empty()
    for p in triad(0):
        put(roll, p, 0, 12)  # C major triad in bar 0
    assert M.used_pitch_classes(roll) == 3.0
    # C-major triad under the buggy fold: two groups only.
    assert np.count_nonzero(roll[0, 0].any(0).reshape(12, 7).sum(1)) == 2
    for p in (36, 52, 91):  # C2, E3, G6 in bar 1: still 3 pitch classes
        put(roll, p, STEPS, 6)
    assert M.used_pitch_classes(roll) == 3.0


def test_upc_averages_non_empty_bars_only():
    roll = empty()
    put(roll, 60, 0, 1)  # bar 0: 1 pitch class
    for p in (60, 62, 64, 65, 67):
        put(roll, p, 2 * STEPS, 1)  # bar 2: 5 pitch classes
    assert M.used_pitch_classes(roll) == pytest.approx(3.0)  # (1 + 5) / 2, not / 4
    assert math.isnan(M.used_pitch_classes(empty()))


# ------------------------------------------------------------------------------ QN


def test_qualified_note_rate():
    roll = empty()
    for i, length in enumerate((1, 1, 2, 3, 5)):
        put(roll, 50 + i, 10, length)
    assert M.qualified_note_rate(roll) == pytest.approx(3 / 5)  # default: >= 2 steps
    assert M.qualified_note_rate(roll, min_length=3) == pytest.approx(2 / 5)
    assert M.qualified_note_rate(roll, min_length=1) == 1.0


def test_qn_notes_are_runs_across_bar_lines_and_cut_at_phrase_end():
    roll = empty()
    put(roll, 60, STEPS - 1, 2)  # one 2-step note across the first bar line
    put(roll, 61, BARS * STEPS - 1, 1)  # one step at the very end
    assert M.qualified_note_rate(roll) == pytest.approx(1 / 2)
    # Two notes of one pitch separated by a rest are two notes.
    roll = empty()
    put(roll, 60, 0, 1)
    put(roll, 60, 2, 4)
    assert M.qualified_note_rate(roll) == pytest.approx(1 / 2)
    assert math.isnan(M.qualified_note_rate(empty()))


def test_onsets():
    roll = empty()
    put(roll, 60, 0, 3)
    put(roll, 60, 4, 1)
    put(roll, 60, STEPS - 1, 3)
    on = M.onsets(roll).reshape(-1, PITCHES)[:, 60 - LOW]
    assert np.flatnonzero(on).tolist() == [0, 4, STEPS - 1]


# ------------------------------------------------------------------------------ DP


def test_drum_pattern_rate_grid():
    roll = empty()
    for s in range(0, BARS * STEPS, 3):  # every 16th note, kick
        put(roll, 36, s, 1)
    assert M.drum_pattern_rate(roll) == 1.0
    off = empty()
    for s in range(1, BARS * STEPS, 3):  # all one step late
        put(off, 42, s, 1)
    assert M.drum_pattern_rate(off) == 0.0
    assert M.drum_pattern_rate(off, grid=6) == 0.0
    # Tolerance 1 on the 8th-note grid: steps 1 and 5 (mod 6) count, 2-4 do not.
    assert M.drum_pattern_rate(off, grid=6, tolerance=1) == pytest.approx(0.5)
    with pytest.raises(ValueError):  # on a 3-step grid every step is within 1 step
        M.drum_pattern_rate(off, tolerance=1)
    assert math.isnan(M.drum_pattern_rate(empty()))


def test_drum_pattern_rate_counts_onsets_not_steps():
    roll = empty()
    for s in (0, 6, 12, 24):
        put(roll, 38, s, 1)
    put(roll, 46, 3, 10)  # a held hi-hat: one onset, on the grid
    put(roll, 49, 4, 1)  # a triplet-grid hit: off the 16th grid
    assert M.drum_pattern_rate(roll) == pytest.approx(5 / 6)
    assert M.drum_pattern_rate(roll, grid=6) == pytest.approx(4 / 6)  # 8th-note grid


# ------------------------------------------------------------------------------ SR


def test_scale_ratio_triads_and_fixed_key():
    roll = empty()
    for p in triad(0):
        put(roll, p, 0, 12)
    assert M.scale_ratio(roll) == 1.0
    assert M.scale_ratio(roll, key=0) == 1.0
    fsharp = empty()
    for p in triad(6):  # F# A# C#: none in C major
        put(fsharp, p, 0, 12)
    assert M.scale_ratio(fsharp, key=0) == 0.0
    assert M.scale_ratio(fsharp) == 1.0  # best key (e.g. F# major) holds it


def test_scale_ratio_chromatic_and_onset_counting():
    roll = empty()
    for i, p in enumerate(range(60, 72)):
        put(roll, p, 3 * i, 1)  # every pitch class once
    assert M.scale_ratio(roll) == pytest.approx(7 / 12)
    roll = empty()
    put(roll, 60, 0, 20)  # long C
    put(roll, 61, 24, 1)  # short C#
    assert M.scale_ratio(roll, key=0) == pytest.approx(1 / 2)  # notes, not steps
    assert math.isnan(M.scale_ratio(empty()))


def test_best_major_key():
    d_major = np.zeros(12)
    d_major[[2, 4, 6, 7, 9, 11, 1]] = 1
    assert M.best_major_key(d_major) == 2
    one_c = np.eye(12)[0]
    assert M.best_major_key(one_c) == 0  # ties go to the lowest tonic
    batch = np.stack([d_major, np.roll(d_major, 3)])
    assert M.best_major_key(batch).tolist() == [2, 5]


def test_scale_ratio_key_per_phrase():
    roll = empty(2)
    for p in triad(0):
        put(roll, p, 0, 4, phrase=0)
    for p in triad(6):
        put(roll, p, 0, 4, phrase=1)
    assert M.scale_ratio(roll) == 1.0  # each phrase has its own key
    assert M.scale_ratio(roll, key=np.array([0, 6])) == 1.0
    assert M.scale_ratio(roll, key=0) == pytest.approx(0.5)


# ------------------------------------------------------------------------------ TD


def _centroid_by_hand(pcs: list[int]) -> np.ndarray:
    """Harte et al. (2006), written out independently of the module."""
    z = np.zeros(6)
    for pc in pcs:
        z += [
            math.sin(pc * 7 * math.pi / 6),
            math.cos(pc * 7 * math.pi / 6),
            math.sin(pc * 3 * math.pi / 2),
            math.cos(pc * 3 * math.pi / 2),
            0.5 * math.sin(pc * 2 * math.pi / 3),
            0.5 * math.cos(pc * 2 * math.pi / 3),
        ]
    return z / len(pcs)


def _chord_roll(root: int, beats: range) -> np.ndarray:
    roll = empty()
    for b in beats:
        for p in triad(root):
            put(roll, p, 12 * b, 12)
    return roll


def test_tonal_distance_known_values():
    c = _chord_roll(0, range(16))
    assert M.tonal_distance(c, c) == 0.0
    expected = np.linalg.norm(_centroid_by_hand([0, 4, 7]) - _centroid_by_hand([6, 10, 1]))
    fs = _chord_roll(6, range(16))
    assert M.tonal_distance(c, fs) == pytest.approx(expected)
    assert M.tonal_distance(c, fs) > 1.5
    a_minor = empty()
    for b in range(16):
        for p in (57, 60, 64):
            put(a_minor, p, 12 * b, 12)
    g = _chord_roll(7, range(16))
    # Closer chords are closer: A minor (2 shared notes) < G major (1) < F# major (0).
    assert M.tonal_distance(c, a_minor) < M.tonal_distance(c, g) < M.tonal_distance(c, fs)


def test_tonal_distance_single_notes_c_g():
    c, g = empty(), empty()
    put(c, 48, 0, 12)
    put(g, 55, 0, 12)
    assert M.tonal_distance(c, g) == pytest.approx(1.7372245659, abs=1e-9)


def test_tonal_distance_only_beats_where_both_sound():
    a = _chord_roll(0, range(0, 8))  # beats 0-7
    b = _chord_roll(6, range(4, 8))  # beats 4-7 only
    b_extra = _chord_roll(6, range(4, 16))  # and 8-15, where `a` is silent
    assert M.tonal_distance(a, b) == pytest.approx(M.tonal_distance(a, b_extra))
    silent = _chord_roll(6, range(8, 16))
    assert math.isnan(M.tonal_distance(a, silent))


def test_tonal_centroid_zero_chroma_is_origin():
    assert np.array_equal(M.tonal_centroid(np.zeros(12)), np.zeros(6))


# ------------------------------------------------------------------------ polyphony


def test_polyphony():
    roll = empty()
    for p in triad(0):
        put(roll, p, 0, 10)
    put(roll, 72, 20, 10)
    assert M.polyphony(roll) == pytest.approx((30 + 10) / 20)
    assert math.isnan(M.polyphony(empty()))


@pytest.mark.parametrize(
    "fn",
    [
        M.empty_bar_rate,
        M.used_pitch_classes,
        M.qualified_note_rate,
        M.drum_pattern_rate,
        M.scale_ratio,
        M.polyphony,
        lambda r: M.tonal_distance(r, r),
    ],
)
def test_every_metric_of_no_phrases_is_nan(fn):
    assert math.isnan(fn(empty(0)))


def test_notes_per_bar_counts_onsets_over_every_bar():
    x = empty(2)  # 2 phrases x 4 bars = 8 bars
    x[0, 0, 0:6, 10] = True  # one note of 6 steps
    x[0, 0, 10:12, 10] = True  # a second note, same pitch
    x[0, 1, 47, 20] = True  # a note held across the bar line counts once, in bar 1
    x[0, 2, 0:3, 20] = True
    x[1, 3, 5, 30:33] = True  # a 3-note chord
    assert M.notes_per_bar(x) == pytest.approx(6 / 8)
    assert M.notes_per_bar(empty(1)) == 0.0


# ---------------------------------------------------------------------- compute_all


def _keys(tracks=TRACKS) -> set[str]:
    pitched = [t for t in tracks if t != "Drums"]
    keys = {f"EB/{t}" for t in tracks} | {f"polyphony/{t}" for t in tracks} | {"DP"}
    keys |= {f"NPB/{t}" for t in tracks}
    for t in pitched:
        keys |= {f"UPC/{t}", f"QN/{t}", f"SR/{t}"}
    for i, a in enumerate(pitched):
        for b in pitched[i + 1 :]:
            keys.add(f"TD/{a}-{b}")
    return keys


def _random_phrases(n: int, seed: int = 0, density: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, BARS, STEPS, PITCHES, len(TRACKS))) < density


def test_compute_all_matches_single_functions():
    x = _random_phrases(7)
    x[2, 1, :, :, 3] = False  # some empty bars
    r = M.compute_all(x, batch_size=3)
    assert set(r) == _keys()
    assert len(r) == 5 * 3 + 4 * 3 + 1 + 6
    for k, t in enumerate(TRACKS):
        assert r[f"EB/{t}"] == pytest.approx(M.empty_bar_rate(x[..., k]))
        assert r[f"NPB/{t}"] == pytest.approx(M.notes_per_bar(x[..., k]))
        assert r[f"polyphony/{t}"] == pytest.approx(M.polyphony(x[..., k]))
    for k, t in list(enumerate(TRACKS))[1:]:
        assert r[f"UPC/{t}"] == pytest.approx(M.used_pitch_classes(x[..., k]))
        assert r[f"QN/{t}"] == pytest.approx(M.qualified_note_rate(x[..., k]))
    assert r["DP"] == pytest.approx(M.drum_pattern_rate(x[..., 0]))
    assert r["TD/Piano-Strings"] == pytest.approx(M.tonal_distance(x[..., 1], x[..., 4]))
    assert M.compute_all(x, batch_size=512) == pytest.approx(r)
    assert M.compute_all(x.astype(np.uint8) * 100) == pytest.approx(r)


def test_compute_all_scale_key_is_shared_by_tracks():
    x = np.zeros((1, BARS, STEPS, PITCHES, 5), dtype=bool)
    for p in (60, 64, 67, 65):  # Piano: C E G F, twice each (8 onsets)
        x[0, 0, :12, p - LOW, 1] = True
        x[0, 0, 24:36, p - LOW, 1] = True
    x[0, 0, :12, 71 - LOW, 2] = True  # Guitar: B, in C major
    x[0, 0, :12, 66 - LOW, 3] = True  # Bass: F#, alone it would pick a key with F#
    # Joint onsets: C major holds 9, G major 8, F major 8 -> C major for every track.
    r = M.compute_all(x)
    assert r["SR/Piano"] == 1.0 and r["SR/Guitar"] == 1.0 and r["SR/Bass"] == 0.0
    assert math.isnan(r["SR/Strings"])
    assert r["EB/Strings"] == 1.0 and r["EB/Piano"] == 0.75
    assert math.isnan(r["DP"]) and math.isnan(r["TD/Piano-Strings"])
    assert r["TD/Piano-Guitar"] > 0


def test_compute_all_empty_input_gives_nan_not_crash():
    for x in (np.zeros((0, BARS, STEPS, PITCHES, 5), bool), np.zeros((3, 4, 48, 84, 5), bool)):
        r = M.compute_all(x)
        assert set(r) == _keys()
    r0 = M.compute_all(np.zeros((0, BARS, STEPS, PITCHES, 5), bool))
    assert all(math.isnan(v) for v in r0.values())
    r3 = M.compute_all(np.zeros((3, BARS, STEPS, PITCHES, 5), bool))
    assert all(r3[f"EB/{t}"] == 1.0 and r3[f"NPB/{t}"] == 0.0 for t in TRACKS)
    assert all(math.isnan(v) for k, v in r3.items() if not k.startswith(("EB/", "NPB/")))


def test_compute_all_single_phrase_and_custom_tracks():
    x = _random_phrases(1)[0]
    assert M.compute_all(x) == pytest.approx(M.compute_all(x[None]))
    r = M.compute_all(x[..., 1:3], tracks=("Piano", "Guitar"))
    assert set(r) == {
        "EB/Piano",
        "UPC/Piano",
        "QN/Piano",
        "SR/Piano",
        "polyphony/Piano",
        "NPB/Piano",
        "EB/Guitar",
        "UPC/Guitar",
        "QN/Guitar",
        "SR/Guitar",
        "polyphony/Guitar",
        "NPB/Guitar",
        "TD/Piano-Guitar",
    }
    with pytest.raises(ValueError):
        M.compute_all(x, tracks=("Piano",))


def test_compute_all_10k_phrases_bounded_memory():
    n = 10_000
    x = np.empty((n, BARS, STEPS, PITCHES, 5), dtype=bool)  # 806 MB
    rng = np.random.default_rng(1)
    for s in range(0, n, 1000):
        x[s : s + 1000] = rng.random((1000, BARS, STEPS, PITCHES, 5), dtype=np.float32) < 0.02
    tracemalloc.start()
    try:
        r = M.compute_all(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * x.nbytes  # works in chunks, never a copy of the input
    assert r["EB/Piano"] == 0.0
    assert 0.0 < r["QN/Piano"] < 0.1  # random 2% rolls: almost every note is one step
    assert r["DP"] == pytest.approx(1 / 3, abs=0.01)
    assert r["polyphony/Bass"] == pytest.approx(84 * 0.02 / (1 - 0.98**84), rel=0.01)


# ------------------------------------------------------------------ the one note F1


def test_note_f1_on_hand_built_rolls_and_its_empty_convention() -> None:
    pred = np.zeros((2, 4, 3), bool)
    target = np.zeros((2, 4, 3), bool)
    target[0, :2, 0] = True  # track 0: 2 true notes; 1 found + 1 false alarm
    pred[0, 0, 0] = pred[1, 3, 0] = True
    target[:, :, 1] = pred[:, :, 1] = True  # track 1: all 8 true, all played
    pred[0, 0, 2] = True  # track 2: nothing to find, one note played
    p, r, f1 = M.note_prf(pred, target)
    assert p.tolist() == [0.5, 1.0, 0.0] and r.tolist() == [0.5, 1.0, 1.0]
    assert f1.tolist() == [0.5, 1.0, 0.0]
    # silent in both: nothing to find, nothing wrongly played -> 1 (never nan, never 0)
    assert [float(v) for v in M.prf_from_counts(0, 0, 0)] == [1.0, 1.0, 1.0]
    assert float(M.prf_from_counts(0, 0, 5)[2]) == 0.0  # all missed
    np.testing.assert_array_equal(M.note_counts(pred, target)[0], [1, 1, 1])

"""The phrase layout travels in the manifest: a pack cut with other settings (2 bars, 72
pitches from MIDI 30) is decoded, trained on and written out as it was packed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.dataset.load import split_phrases
from ms2dist.dataset.manifest import read_split
from ms2dist.dataset.packer import pack
from ms2dist.layout import DEFAULT_LAYOUT, PhraseLayout, parse_tracks
from ms2dist.songs.files import load_song
from ms2dist.songs.phrases import PhraseConfig, phrases_of_song
from tests.conftest import run_ms2dist

CUSTOM = PhraseConfig(bars_per_phrase=2, n_pitches=72, lowest_pitch=30)


@pytest.fixture(scope="module")
def custom_pack(lpd5_test_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layout") / "custom"
    songs = sorted(lpd5_test_small.rglob("*.npz"))[:6]
    pack(songs, out, name="custom", cfg=CUSTOM, split=(0.5, 0.5, 0.0), phrases_per_shard=64,
         block_size=16)
    return out


def test_default_layout_is_musegans() -> None:
    assert DEFAULT_LAYOUT.shape == (4, 48, 84, 5) and DEFAULT_LAYOUT.n_bytes == 10080
    assert DEFAULT_LAYOUT.lowest_pitch == 24


def test_manifest_carries_the_layout(custom_pack: Path) -> None:
    info = read_split(custom_pack / "train")
    assert info.layout == CUSTOM.layout
    assert info.layout.shape == (2, 48, 72, 5) and info.phrase_bytes == 2 * 48 * 72 * 5 // 8


def test_readers_decode_the_packed_layout(custom_pack: Path, lpd5_test_small: Path) -> None:
    """Every phrase read back equals the one cut from its song with the pack's settings."""
    info = read_split(custom_pack / "train")
    expected = {}
    for path in sorted(lpd5_test_small.rglob("*.npz"))[:6]:
        song = load_song(path)
        on, index, _ = phrases_of_song(song, CUSTOM)
        expected.update({(song.song_id, int(i)): p for p, i in zip(on, index, strict=True)})
    seen = 0
    for batch in eval_loader(custom_pack / "train", 16):
        x = unpack_phrases(batch["phrases"], shape=info.layout.shape).numpy() > 0.5
        for row in np.flatnonzero(batch["valid"].numpy()):
            key = (batch["song_id"][row], int(batch["phrase_index"][row]))
            np.testing.assert_array_equal(x[row], expected[key])
            seen += 1
    assert seen == info.n_phrases > 0
    assert split_phrases(custom_pack / "train", 10_000).shape == (seen, 2, 48, 72, 5)


def test_a_manifest_that_contradicts_itself_is_refused(custom_pack: Path, tmp_path: Path) -> None:
    m = json.loads((custom_pack / "val" / "manifest.json").read_text())
    m["phrase_shape"] = [4, 48, 84, 5]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="manifest.json.*phrase_shape"):
        read_split(tmp_path)


def test_training_follows_the_manifest(custom_pack: Path, tmp_path: Path) -> None:
    """Stage 1 builds its BVAEs for the pack's layout, and the model records it."""
    run_ms2dist(["train", "stage1", "--config", "tiny", "--data", custom_pack,
                 "--out", tmp_path / "s1", "--tracking.enabled=false",
                 "--train.vrae_steps=2", "--train.refine_steps=1", "--train.eval_at_start=false",
                 "--data.val_batches=1"])
    from ms2dist.inference.modelio import layout_of, load_model

    model = load_model(tmp_path / "s1")
    assert (model.cfg.n_bars, model.cfg.n_pitches) == (2, 72)
    assert layout_of(model) == CUSTOM.layout
    x = torch.zeros(1, *CUSTOM.layout.shape)
    assert model.bvae(1)(x[..., 1], sample=False)[0].shape == (1, 2, 48, 72)


def test_layout_checks_its_values() -> None:
    with pytest.raises(ValueError, match="MIDI 0..127"):
        PhraseLayout(lowest_pitch=60, n_pitches=84)
    assert parse_tracks("Piano, Bass", "--keep") == ["Piano", "Bass"]
    with pytest.raises(ValueError, match="--keep: unknown track.*Flute"):
        parse_tracks("Piano,Flute", "--keep")

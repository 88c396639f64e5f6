"""ms2dist pack: counts and contents against an independent computation, determinism,
rejects, MIDI input, resume."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pypianoroll
import pytest

from ms2dist.cli import main as cli_main
from ms2dist.dataset.manifest import assign_split, parse_split
from ms2dist.dataset.packer import pack
from ms2dist.layout import pack_bits, unpack_bits
from ms2dist.songs.files import collect_inputs
from ms2dist.songs.phrases import PhraseConfig, roll_phrases
from tests.test_lpd import write_midi

SPLITS = ("train", "val", "test")
SMALL = {"phrases_per_shard": 64, "block_size": 16}


def direct_phrases(path: Path) -> dict[int, np.ndarray]:
    """MuseGAN's recipe written out with plain numpy on pypianoroll.load: window -> phrase."""
    mt = pypianoroll.load(path)
    roll = np.stack([t.pianoroll > 0 for t in mt.tracks], axis=-1)  # (T, 128, 5) bool
    n = roll.shape[0] // (24 * 16)
    r = roll[: n * 384].reshape(n * 192, 2, 128, 5).any(axis=1)[:, 24:108]
    ph = r.reshape(n, 4, 48, 84, 5)
    keep = ph.reshape(n, -1).any(axis=1)
    return {int(i): ph[i] for i in np.flatnonzero(keep)}


def read_shards(split_dir: Path) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Decode a split's shards with tarfile + numpy only: (song, index, phrase, nonempty)."""
    out = []
    manifest = json.loads((split_dir / "manifest.json").read_text())
    for sh in manifest["shards"]:
        members: dict[str, bytes] = {}
        with tarfile.open(split_dir / sh["name"]) as tf:
            for ti in tf:
                members[ti.name] = tf.extractfile(ti).read()
        n = 0
        for name in sorted(k for k in members if k.endswith(".phrases.npy")):
            key = name[: -len(".phrases.npy")]
            packed = np.load(io.BytesIO(members[name]))
            meta = json.loads(members[key + ".meta.json"])
            songs = [s for s, c in meta["songs"] for _ in range(c)]
            phrases = unpack_bits(packed)
            for j in range(packed.shape[0]):
                ne = np.array([(meta["nonempty"][j] >> k) & 1 for k in range(5)], bool)
                out.append((songs[j], meta["phrase_index"][j], phrases[j], ne))
            n += packed.shape[0]
        assert n == sh["n_phrases"]
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def packed16(lpd5_test_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "small"
    res = pack([lpd5_test_small], out, name="small", workers=2, **SMALL)
    assert res.n_packed_songs == 16 and res.n_rejected == 0
    return out


def test_phrase_helpers_roundtrip():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 48, 84, 5)) < 0.02
    p = pack_bits(x)
    assert p.shape == (3, 10080) and p.dtype == np.uint8
    assert np.array_equal(unpack_bits(p), x)
    assert np.array_equal(p[0], np.packbits(x[0].reshape(-1)))
    assert parse_split("90,5,5") == pytest.approx((0.9, 0.05, 0.05))
    assert assign_split("abc") == assign_split("abc")
    shares = [assign_split(f"s{i}") for i in range(4000)]
    assert 0.87 < shares.count("train") / 4000 < 0.93
    assert [assign_split(f"s{i}", (0, 1, 0)) for i in range(20)] == ["val"] * 20


def test_song_phrases_keeps_windows_with_any_track_and_indexes_them():
    roll = np.zeros((384 * 3 + 100, 128, 5), np.uint8)
    roll[1, 24, 2] = 5  # window 0, step 1 -> 12-per-beat step 0, pitch 0, Guitar
    roll[384 * 2 + 383, 107, 4] = 1  # window 2, last step, top pitch, Strings
    roll[384 * 1 + 5, 23, 1] = 9  # window 1 but pitch below the range: dropped
    ph, idx, ne = roll_phrases(roll, PhraseConfig())
    assert ph.shape == (2, 4, 48, 84, 5) and list(idx) == [0, 2]
    assert ph[0, 0, 0, 0, 2] and ph[0].sum() == 1
    assert ph[1, 3, 47, 83, 4] and ph[1].sum() == 1
    assert ne.tolist() == [[False, False, True, False, False], [False] * 4 + [True]]


def test_counts_and_contents_match_direct_computation(packed16, lpd5_test_small):
    files = sorted(lpd5_test_small.rglob("*.npz"))
    expect = {f.stem: direct_phrases(f) for f in files}
    got: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    total = 0
    for s in SPLITS:
        man = json.loads((packed16 / s / "manifest.json").read_text())
        rows = read_shards(packed16 / s)
        assert man["n_phrases"] == len(rows)
        assert man["n_songs"] == len({r[0] for r in rows})
        assert man["phrase_config"] == PhraseConfig().to_dict()
        assert man["ms2dist_version"]
        total += len(rows)
        for song, idx, ph, ne in rows:
            assert assign_split(song) == s
            assert idx not in got.setdefault(song, {})
            got[song][idx] = (ph, ne)
    assert total == sum(len(v) for v in expect.values())
    assert set(got) == set(expect)
    for song, phrases in expect.items():
        assert set(got[song]) == set(phrases), song
        for i, ph in phrases.items():
            assert np.array_equal(got[song][i][0], ph), (song, i)
            assert np.array_equal(got[song][i][1], ph.any(axis=(0, 1, 2)))


def test_splits_disjoint_and_shards_listed(packed16):
    songs = {}
    for s in SPLITS:
        man = json.loads((packed16 / s / "manifest.json").read_text())
        songs[s] = {r[0] for r in read_shards(packed16 / s)}
        listed = sorted(x["name"] for x in man["shards"])
        assert listed == sorted(p.name for p in (packed16 / s).glob("*.tar"))
        for x in man["shards"]:
            import hashlib

            assert hashlib.sha256((packed16 / s / x["name"]).read_bytes()).hexdigest() \
                == x["sha256"]
    assert not (songs["train"] & songs["val"]) and not (songs["train"] & songs["test"])
    assert not (songs["val"] & songs["test"])
    assert len(list((packed16 / "train").glob("*.tar"))) >= 3


def test_deterministic_bytes(packed16, lpd5_test_small, tmp_path):
    again = tmp_path / "again"
    pack([lpd5_test_small], again, name="small", workers=1, **SMALL)
    a, b = all_files(packed16), all_files(again)
    assert a.keys() == b.keys() and a == b


def test_unmerged_lpd_packs_to_the_same_shards(packed16, lpd_cleansed_test_small, tmp_path):
    out = tmp_path / "cleansed"
    res = pack([lpd_cleansed_test_small], out, name="small", fmt="lpd", workers=2, **SMALL)
    assert res.n_packed_songs == 16
    for s in SPLITS:  # merged on the fly == LPD-5 files: byte-identical shards
        assert all_files(out / s) == all_files(packed16 / s)


def _write_npz(path: Path, tracks: list[np.ndarray], resolution: int = 24) -> None:
    arrays = {}
    info = {"beat_resolution": resolution, "name": path.stem}
    for i, roll in enumerate(tracks):
        t, p = np.nonzero(roll.T)  # CSC of (T, 128): columns = pitches
        arrays[f"pianoroll_{i}_csc_data"] = roll.T[t, p].astype(np.uint8)
        arrays[f"pianoroll_{i}_csc_indices"] = p.astype(np.int32)
        arrays[f"pianoroll_{i}_csc_indptr"] = np.concatenate(
            [[0], np.cumsum(np.bincount(t, minlength=128))]).astype(np.int32)
        arrays[f"pianoroll_{i}_csc_shape"] = np.array(roll.shape, np.int64)
        info[str(i)] = {"program": 0, "is_drum": False, "name": f"t{i}"}
    n = tracks[0].shape[0]
    arrays["tempo"] = np.full(n, 120.0)
    db = np.zeros(n, bool)
    db[0] = True
    arrays["downbeat"] = db
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    import zipfile

    path.write_bytes(buf.getvalue())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("info.json", json.dumps(info))


def test_bad_inputs_rejected_with_reasons(lpd5_test_small, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(lpd5_test_small.rglob("*.npz"))[:2]
    for g in good:
        shutil.copy(g, inp / g.name)
    data = good[0].read_bytes()
    (inp / "truncated.npz").write_bytes(data[: len(data) // 3])
    (inp / "garbage.npz").write_bytes(b"\x00garbage" * 100)
    empty = np.zeros((400 * 24, 128), np.uint8)
    _write_npz(inp / "emptysong.npz", [empty])
    short = np.zeros((24 * 12, 128), np.uint8)  # 3 bars
    short[0, 60] = 100
    _write_npz(inp / "shortsong.npz", [short])
    lowres = np.zeros((12 * 64, 128), np.uint8)
    lowres[0, 60] = 100
    _write_npz(inp / "lowres.npz", [lowres], resolution=12)
    offrange = np.zeros((24 * 64, 128), np.uint8)
    offrange[:, 10] = 100  # every note below pitch 24
    _write_npz(inp / "offrange.npz", [offrange])
    note = tmp_path / "readme.txt"
    note.write_text("not music")
    (inp / "manifest.csv").write_text("ignored inside folders\n")

    out = tmp_path / "out"
    rc = cli_main(["pack", "--input", str(inp), str(note), "--name", "bad", "--out", str(out),
                   "--workers", "2"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "9 inputs = 2 packed + 7 rejected" in summary
    rejects = {Path(r["path"]).name: r["reason"]
               for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"truncated.npz", "garbage.npz", "emptysong.npz", "shortsong.npz",
                            "lowres.npz", "offrange.npz", "readme.txt"}
    assert "empty" in rejects["emptysong.npz"]
    assert "shorter than 4 bars (3 bars)" in rejects["shortsong.npz"]
    assert "resolution 12" in rejects["lowres.npz"]
    assert "no non-empty" in rejects["offrange.npz"]
    assert "unsupported" in rejects["readme.txt"]
    assert "npz" in rejects["garbage.npz"] and "npz" in rejects["truncated.npz"]
    packed = sum(json.loads((out / s / "manifest.json").read_text())["n_songs"] for s in SPLITS)
    assert packed + len(rejects) == len(collect_inputs([inp, note])) == 9

    # nothing packable -> non-zero exit, still a rejects list
    rc = cli_main(["pack", "--input", str(note), "--name", "none", "--out",
                   str(tmp_path / "none"), "--workers", "1"])
    assert rc == 1
    assert len((tmp_path / "none" / "rejects.jsonl").read_text().splitlines()) == 1
    # usage error
    assert cli_main(["pack", "--input", str(tmp_path / "missing"), "--name", "x", "--out",
                     str(tmp_path / "x")]) == 2


def test_midi_input(tmp_path):
    inp = tmp_path / "midi"
    inp.mkdir()
    write_midi(inp / "four.mid", 4, bars=10)
    write_midi(inp / "three.midi", 3, bars=10)
    out = tmp_path / "out"
    rc = cli_main(["pack", "--input", str(inp), "--name", "m", "--out", str(out),
                   "--format", "midi", "--split", "1,0,0", "--workers", "1"])
    assert rc == 0
    man = json.loads((out / "train" / "manifest.json").read_text())
    assert man["n_songs"] == 1 and man["n_phrases"] == 2  # 10 bars -> 2 full 4-bar windows
    rows = read_shards(out / "train")
    assert rows[0][0] == "four" and rows[0][3].tolist() == [True, True, False, True, True]
    assert rows[0][2][0, :, 60 - 24, 1].tolist() == ([True] * 6 + [False] * 6) * 4
    (rej,) = map(json.loads, (out / "rejects.jsonl").read_text().splitlines())
    assert rej["song_id"] == "three" and "not 4/4" in rej["reason"]


def test_positional_input_and_name_from_the_folder(tmp_path, monkeypatch, capsys):
    """`ms2dist pack somefolder` packs into shards/somefolder, named after the folder, and
    --out keeps that name; a lone file names the set after its stem."""
    inp = tmp_path / "songs"
    inp.mkdir()
    write_midi(inp / "four.mid", 4, bars=10)
    monkeypatch.chdir(tmp_path)
    opts = ["--format", "midi", "--split", "1,0,0", "--workers", "1"]
    assert cli_main(["pack", "songs", *opts]) == 0
    man = json.loads((tmp_path / "shards" / "songs" / "train" / "manifest.json").read_text())
    assert man["name"] == "songs" and man["n_phrases"] == 2
    assert cli_main(["pack", str(inp) + "/", "--out", str(tmp_path / "o"), *opts]) == 0
    assert json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())["name"] \
        == "songs"
    assert cli_main(["pack", "--input", str(inp / "four.mid"), "--out", "o2", *opts]) == 0
    assert json.loads((tmp_path / "o2" / "train" / "manifest.json").read_text())["name"] \
        == "four"
    assert cli_main(["pack", "songs", "--name", "mine", *opts]) == 0
    assert (tmp_path / "shards" / "mine" / "train" / "manifest.json").is_file()
    capsys.readouterr()


def test_inputs_given_two_ways_or_none_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert cli_main(["pack", str(a), "--input", str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "inputs given twice" in err and str(a) in err and str(b) in err
    assert not (tmp_path / "o").exists()
    assert cli_main(["pack", "--out", str(tmp_path / "o")]) == 2
    assert "no inputs" in capsys.readouterr().err
    assert cli_main(["pack", "/", "--out", str(tmp_path / "o")]) == 2
    assert "give --name" in capsys.readouterr().err


def test_resume_after_interruption(lpd5_test_small, packed16, tmp_path):
    out = tmp_path / "resumed"
    part = pack([lpd5_test_small], out, name="small", workers=1, max_songs=10, **SMALL)
    assert part.n_read == 10
    done = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("shard-*.tar")}
    assert done, "some shards should have finished before the interruption"
    assert list(out.rglob("*.tmp")), "the open shard is left as a temp file"
    rest = pack([lpd5_test_small], out, name="small", workers=2, **SMALL)
    assert rest.n_resumed_shards == len(done)
    assert rest.n_read < 16  # songs in finished shards were not read again
    for p, stamp in done.items():  # finished shards untouched
        assert (p.stat().st_mtime_ns, p.stat().st_ino) == stamp
    assert all_files(out) == all_files(packed16)
    # a finished pack re-run reads nothing and changes nothing
    again = pack([lpd5_test_small], out, name="small", workers=1, **SMALL)
    assert again.n_read == 0 and all_files(out) == all_files(packed16)
    # other settings into the same folder are refused
    rc = cli_main(["pack", "--input", str(lpd5_test_small), "--name", "small", "--out",
                   str(out), "--phrases-per-shard", "99"])
    assert rc == 2

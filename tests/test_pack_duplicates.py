"""ms2dist pack: duplicates by content (any name, format or split), near-duplicates across
splits, inputs that are no song files (folders named like songs, symlink loops), and a
resumed pack rejecting the same duplicates as a straight one."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ms2dist.dataset.manifest import assign_split
from ms2dist.dataset.packer import pack
from ms2dist.music.midi import write_midi
from ms2dist.songs.files import collect_inputs, load_song
from tests.test_pack import SPLITS, all_files, read_shards

THIRDS = (1 / 3, 1 / 3, 1 / 3)
SMALL = {"phrases_per_shard": 16, "block_size": 8, "split": THIRDS}
STEM = "b249aa67eede585dcf7ff024f603a384"  # one tempo (120 bpm): a MIDI copy reads back exact


def _rejects(out: Path) -> dict[str, str]:
    return {Path(r["path"]).name: r["reason"]
            for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def _packed_ids(out: Path) -> dict[str, str]:
    """song id -> split, read from the shards themselves."""
    return {row[0]: s for s in SPLITS for row in read_shards(out / s)}


def _resave(src: Path, dst: Path) -> None:
    """The same LPD-5 song, re-encoded: other velocities, stored instead of deflated."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            raw = zin.read(name)
            if name.endswith("_csc_data.npy"):
                data = np.load(io.BytesIO(raw))
                buf = io.BytesIO()
                np.save(buf, np.where(data > 0, 127 - data // 2, 0).astype(data.dtype))
                raw = buf.getvalue()
            zout.writestr(name, raw)


def _as_midi(src: Path, dst: Path, bars: int | None = None) -> None:
    """The song's binarised, merged roll (optionally its first ``bars`` bars) as MIDI."""
    song = load_song(src)
    roll = song.roll > 0
    if bars is not None:
        roll = roll[: bars * 96]
    write_midi(roll, dst, tempo_bpm=song.bpm, steps_per_beat=24, lowest_pitch=0)


def _song(folder: Path, stem: str) -> Path:
    (path,) = folder.rglob(f"{stem}.npz")
    return path


def test_copies_rejected_by_content_whatever_name_format_split(
        lpd5_test_small, lpd_cleansed_test_small, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    src = _song(lpd5_test_small, STEM)
    shutil.copy(src, inp / "a_song.npz")
    shutil.copy(src, inp / "b_copy.npz")
    _resave(src, inp / "c_stored.npz")
    shutil.copy(_song(lpd_cleansed_test_small, STEM), inp / "d_cleansed.npz")  # unmerged
    _as_midi(src, inp / "e_midi.mid")
    others = [f for f in sorted(lpd5_test_small.rglob("*.npz")) if f.stem != STEM][:3]
    for f in others:
        shutil.copy(f, inp / f.name)
    # the copies land in other splits than the first: each would have leaked
    assert {assign_split(n, THIRDS) for n in ("a_song", "b_copy", "c_stored")} == set(SPLITS)
    assert (inp / "c_stored.npz").read_bytes() != src.read_bytes()

    out = tmp_path / "out"
    res = pack([inp], out, name="dup", workers=2, **SMALL)
    first = str(inp / "a_song.npz")
    assert _rejects(out) == {n: f"duplicate of {first}" for n in
                             ("b_copy.npz", "c_stored.npz", "d_cleansed.npz", "e_midi.mid")}
    assert res.n_inputs == 8 == res.n_packed_songs + res.n_rejected
    assert (res.n_packed_songs, res.n_rejected) == (4, 4)
    assert _packed_ids(out) == {"a_song": assign_split("a_song", THIRDS),
                                **{f.stem: assign_split(f.stem, THIRDS) for f in others}}
    assert "8 inputs = 4 packed + 4 rejected" in res.summary()
    # the same pack with one reader: the same first, byte for byte
    again = tmp_path / "again"
    pack([inp], again, name="dup", workers=1, **SMALL)
    assert all_files(again) == all_files(out)


def test_near_duplicate_across_splits_reported_not_rejected(lpd5_test_small, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    src = _song(lpd5_test_small, STEM)
    shutil.copy(src, inp / "a_song.npz")
    _as_midi(src, inp / "near_start.mid", bars=24)  # the same first 24 bars, then nothing
    _as_midi(src, inp / "x_other.mid", bars=24)  # ... also in a_song's split: not reported
    assert assign_split("near_start", THIRDS) != assign_split("a_song", THIRDS)
    assert assign_split("x_other", THIRDS) == assign_split("a_song", THIRDS)
    out = tmp_path / "out"
    res = pack([inp], out, name="near", workers=1, **SMALL)
    assert _rejects(out) == {"x_other.mid": f"duplicate of {inp / 'near_start.mid'}"}
    assert set(_packed_ids(out)) == {"a_song", "near_start"}
    (near,) = map(json.loads, (out / "near_duplicates.jsonl").read_text().splitlines())
    assert near == {"path": str(inp / "near_start.mid"), "split": "test",
                    "starts_like": str(inp / "a_song.npz"), "its_split": "train", "bars": 16}
    assert res.n_near_duplicates == 1 and "1 near-duplicates across splits" in res.summary()


def test_folders_named_like_songs_and_symlink_loops_are_rejected_inputs(
        lpd5_test_small, tmp_path):
    songs = sorted(lpd5_test_small.rglob("*.npz"))[:3]
    inp = tmp_path / "in"
    (inp / "fake.npz").mkdir(parents=True)
    shutil.copy(songs[0], inp / "fake.npz" / songs[0].name)  # a folder's songs still count
    shutil.copy(songs[1], inp / songs[1].name)
    (inp / "sub").mkdir()
    os.symlink("..", inp / "sub" / "loop")  # back to a folder above: would never end
    os.symlink("self.mid", inp / "self.mid")  # a link to itself
    os.symlink("nowhere.npz", inp / "broken.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(songs[2], elsewhere / songs[2].name)
    os.symlink(elsewhere, inp / "more")  # a link to another folder: followed
    (inp / "notes.txt").write_text("not a song, not an input")

    files = collect_inputs([inp])
    assert [str(f.relative_to(inp)) for f in files] == sorted([
        "broken.npz", "fake.npz", f"fake.npz/{songs[0].name}", f"more/{songs[2].name}",
        "self.mid", songs[1].name, "sub/loop"])
    out = tmp_path / "out"
    res = pack([inp], out, name="odd", workers=2, **SMALL)
    assert _rejects(out) == {
        "fake.npz": "a folder, not a file",
        "loop": f"symlink loop (a link to {inp}, a folder it is in)",
        "self.mid": "not a file (symlink loop)",
        "broken.npz": "not a file (broken symlink)",
    }
    assert set(_packed_ids(out)) == {s.stem for s in songs}
    assert res.n_inputs == 7 == res.n_packed_songs + res.n_rejected


@pytest.fixture(scope="module")
def dup_inputs(lpd5_test_small, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The 16 songs plus copies spread through the input order (a first before or after
    the cut, in the same split or another), and the rejects expected: every copy but the
    first in input order, as a duplicate of the first."""
    inp = tmp_path_factory.mktemp("dups") / "in"
    inp.mkdir()
    files = sorted(lpd5_test_small.rglob("*.npz"))
    groups = {f: [inp / f.name] for f in files}
    for f in files:
        shutil.copy(f, inp / f.name)
    copies = [(0, "0_copy"), (0, "f_copy"), (5, "7_copy"), (9, "c_copy"), (15, "00_copy")]
    for i, (k, name) in enumerate(copies):
        dst = inp / f"{name}.npz"
        _resave(files[k], dst) if i % 2 else shutil.copy(files[k], dst)
        groups[files[k]].append(dst)
    expect = {}
    for members in groups.values():
        first = min(members, key=str)
        expect.update({m.name: f"duplicate of {first}" for m in members if m != first})
    return inp, expect


@pytest.mark.parametrize("cut", [4, 11, 17])
def test_resume_rejects_the_same_duplicates_and_writes_the_same_bytes(dup_inputs, tmp_path,
                                                                      cut):
    inp, expect = dup_inputs
    kw = {**SMALL, "phrases_per_shard": 64}
    straight = tmp_path / "straight"
    res = pack([inp], straight, name="d", workers=1, **kw)
    assert (res.n_inputs, res.n_packed_songs, res.n_rejected) == (21, 16, 5)
    assert _rejects(straight) == expect

    out = tmp_path / "resumed"
    part = pack([inp], out, name="d", workers=2, max_songs=cut, **kw)
    assert part.n_read == cut
    kept = list(out.rglob("shard-*.tar"))
    assert kept or cut == 4, "shards should have finished before the cut"
    rest = pack([inp], out, name="d", workers=2, **kw)
    assert rest.n_resumed_shards == len(kept)
    assert rest.n_read < 21 or not kept  # songs in kept shards are not read again
    assert _rejects(out) == expect
    assert all_files(out) == all_files(straight)


def test_records_without_hashes_are_packed_again(lpd5_test_small, tmp_path):
    """Shards recorded before content hashes were never checked for duplicates: a resume
    must not trust them (their songs would be missing from the seen set)."""
    out = tmp_path / "out"
    pack([lpd5_test_small], out, name="s", workers=1, **SMALL)
    done = all_files(out)
    for s in SPLITS:
        prog = out / s / ".progress.jsonl"
        recs = [json.loads(line) for line in prog.read_text().splitlines()]
        assert recs and all(len(r["hashes"]) == r["n_songs"] for r in recs)
        prog.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "hashes"},
                                           sort_keys=True) + "\n" for r in recs))
    again = pack([lpd5_test_small], out, name="s", workers=2, **SMALL)
    assert (again.n_resumed_shards, again.n_read) == (0, 16)
    assert all_files(out) == done


def test_content_hash_keeps_onsets_only():
    """Shift, velocities, note ends and length do not change the hash; one onset does."""
    from ms2dist.songs.song import Song

    def song(n: int, cells: list[tuple[slice, int, int, int]]) -> Song:
        roll = np.zeros((n, 128, 5), np.uint8)
        for t, p, k, v in cells:
            roll[t, p, k] = v
        return Song.from_roll("s", roll, 24, np.full(n, 120.0))

    a = song(400, [(slice(5, 10), 60, 1, 90), (slice(12, 13), 60, 1, 5),
                   (slice(300, 310), 40, 0, 1)])
    b = song(900, [(slice(105, 108), 60, 1, 1), (slice(112, 114), 60, 1, 127),
                   (slice(400, 401), 40, 0, 64)])
    c = song(400, [(slice(5, 10), 60, 1, 90), (slice(12, 13), 61, 1, 5),
                   (slice(300, 310), 40, 0, 1)])
    assert a.content_hashes() == b.content_hashes()
    assert a.content_hashes()[0] != c.content_hashes()[0]
    assert a.content_hashes(1)[1] != c.content_hashes(1)[1]
    d = song(400, [(slice(5, 10), 60, 1, 90), (slice(12, 13), 60, 1, 5),
                   (slice(300, 310), 41, 0, 1)])  # differs after the first bar only
    assert a.content_hashes(1)[1] == d.content_hashes(1)[1]
    assert a.content_hashes(4)[1] != d.content_hashes(4)[1]

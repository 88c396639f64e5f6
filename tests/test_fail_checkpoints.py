"""Checkpoints where they used to fail: incomplete ``step-*`` folders that were never
pruned, and saves that fail (unwritable directory, full disk) with torch's cryptic
``unexpected pos ... vs ...``.

Real parts: ``accelerate.Accelerator(cpu=True)`` and a prepared ``nn.Linear`` + Adam; the
full-disk case runs in a child process whose file-size limit (``RLIMIT_FSIZE``) makes the
write fail halfway, as a full disk does.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from ms2dist import TRACKS
from ms2dist.training.checkpoint import (
    CheckpointError,
    Snapshot,
    _failure_message,
    list_checkpoints,
    read_snapshot,
    save_checkpoint,
)


def _snap(step: int) -> Snapshot:
    return Snapshot(stage="stage1", step=step, phase="vrae", tracks=list(TRACKS),
                    config={"preset": "test"})


@pytest.fixture
def accelerator() -> Accelerator:
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(4, 32)).square().sum().backward()
    opt.step()
    return acc


def _incomplete(out: Path, step: int) -> Path:
    """A ``step-*`` folder as a half copy leaves it: weights, no ``snapshot.json``."""
    d = out / "checkpoints" / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\0" * 1000)
    return d


def test_incomplete_step_folders_are_pruned_by_the_next_save(accelerator, tmp_path):
    first = save_checkpoint(accelerator, tmp_path, _snap(1), keep=3)
    stale = [_incomplete(tmp_path, 2), _incomplete(tmp_path, 3)]
    tmp_left = tmp_path / "checkpoints" / ".tmp-step-000000004"
    tmp_left.mkdir()
    other = tmp_path / "checkpoints" / "step-notes"  # not ours: never touched
    other.mkdir()

    final = save_checkpoint(accelerator, tmp_path, _snap(5), keep=3)

    assert not any(p.exists() for p in stale) and not tmp_left.exists() and other.is_dir()
    assert list_checkpoints(tmp_path) == [first, final]
    assert read_snapshot(final).step == 5 and read_snapshot(final).tracks == list(TRACKS)
    accelerator.load_state(str(final))  # what remains resumes


def test_keep_incomplete_keeps_only_the_newest_one(accelerator, tmp_path):
    older, newest = _incomplete(tmp_path, 2), _incomplete(tmp_path, 3)
    final = save_checkpoint(accelerator, tmp_path, _snap(5), keep=3, keep_incomplete=True)
    assert not older.exists()
    assert (newest / "model.safetensors").read_bytes() == b"\0" * 1000  # kept as it was
    assert list_checkpoints(tmp_path) == [final]  # and never offered for resume


def test_old_complete_checkpoints_are_still_pruned_to_keep(accelerator, tmp_path):
    saved = [save_checkpoint(accelerator, tmp_path, _snap(s), keep=2) for s in (1, 2, 3)]
    assert list_checkpoints(tmp_path) == saved[1:] and not saved[0].exists()


def test_a_save_into_an_unwritable_place_names_the_checkpoint(accelerator, tmp_path):
    if os.geteuid() != 0:
        out = tmp_path / "run"
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints").chmod(0o555)  # read-only
    else:  # root writes anywhere: a parent that is a file fails for everyone
        (tmp_path / "file").write_text("not a directory")
        out = tmp_path / "file" / "run"
    try:
        with pytest.raises(CheckpointError) as e:
            save_checkpoint(accelerator, out, _snap(7), keep=2)
    finally:
        if os.geteuid() != 0:
            (out / "checkpoints").chmod(0o755)
    msg = str(e.value)
    assert f"could not save checkpoint {out / 'checkpoints' / 'step-000000007'}" in msg
    assert ("PermissionError" in msg or "NotADirectoryError" in msg) and "\n" not in msg
    assert "no space left" not in msg  # the disk is not full
    assert isinstance(e.value.__cause__, OSError)


CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from ms2dist.training.checkpoint import CheckpointError, Snapshot, save_checkpoint

    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights, 8 MB of Adam state
    opt = torch.optim.Adam(model.parameters())
    model, opt = acc.prepare(model, opt)
    model(torch.randn(2, 1000)).sum().backward()
    opt.step()
    snap = lambda s: Snapshot(stage="stage1", step=s, phase="vrae", tracks=[], config={})
    save_checkpoint(acc, out, snap(1), keep=3)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill, past the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (5_000_000, resource.RLIM_INFINITY))
    try:
        save_checkpoint(acc, out, snap(2), keep=3)
    except CheckpointError as e:
        print(json.dumps({"msg": str(e), "cause": repr(e.__cause__)}))
""")


def test_a_write_that_fails_halfway_names_the_checkpoint(tmp_path):
    """The optimizer state stops at 5 MB (as on a full disk): torch says only ``unexpected
    pos``; the error names the checkpoint, the partial save is gone, step 1 stands."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f"could not save checkpoint {out / 'checkpoints' / 'step-000000002'}" in got["msg"]
    assert "unexpected pos" in got["msg"] or "File too large" in got["msg"]
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000000001"]  # no .tmp, no step-2
    assert [p.name for p in list_checkpoints(out)] == ["step-000000001"]


def test_a_full_disk_says_how_much_a_checkpoint_needs(tmp_path):
    final = tmp_path / "checkpoints" / "step-000000009"
    full = OSError(errno.ENOSPC, "No space left on device")
    msg = _failure_message(final, full, free=3_000_000, need=123_400_000)
    assert msg.startswith(f"could not save checkpoint {final} (OSError: ")
    assert f"no space left on {final.parent}: need ~123 MB, 3.0 MB free" in msg
    # torch's message says nothing of the disk: the free space does
    pos = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4001536 vs 4")
    assert "need ~123 MB" in _failure_message(final, pos, free=1_000_000, need=123_400_000)
    assert "no space" not in _failure_message(final, pos, free=10**12, need=123_400_000)
    # an error that says what failed (not the disk) is never called a full disk
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert "no space" not in _failure_message(final, denied, free=0, need=123_400_000)
    # no earlier checkpoint to measure: what was written before the disk filled
    assert "need more than 2.5 MB, 0.0 MB free" in _failure_message(
        final, full, free=0, need=None, written=2_500_000)

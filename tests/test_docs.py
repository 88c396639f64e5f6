"""The README cannot rot: its commands are run here, literally.

- The first code block holds exactly the two set-up commands; the second is the one
  ``.ci/run`` executes. (The first, ``ms2dist demo``, runs in tests/test_demo.py.)
- The pipeline block runs end to end in a scratch directory (``../shared/data`` mapped
  to the shared data), then the Python snippet runs against its MLflow store.
- The SLURM examples run with ``--dry-run`` (the real scripts run in tests/test_slurm.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def test_readme_starts_with_the_two_setup_commands() -> None:
    first = README.split("```", 2)
    assert README.startswith("# ms2dist\n\n```bash\n")
    cmds = commands(first[1].removeprefix("bash\n"))
    assert len(cmds) == 2
    assert cmds[0].endswith("ms2dist demo")
    ci = (REPO / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines(), "the README's test command must be what CI runs"


@pytest.mark.slow
def test_readme_pipeline_block_runs(shared_data: Path, tmp_path: Path) -> None:
    pipeline = next(b for b in blocks("bash") if "ms2dist pack" in b)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = []
    for cmd in commands(pipeline):
        cmd = cmd.replace("../shared/data", str(shared_data))
        cmd = cmd.replace("launch_configs/", f"{REPO}/launch_configs/")
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stderr[-4000:]}"
        ran.append(cmd.split()[1] if cmd.startswith("ms2dist") else cmd.split()[0])
    assert ran.count("train") == 1 and "accelerate" in ran and "evaluate" in ran
    assert list((tmp_path / "out" / "gen").glob("*.mid"))
    assert (tmp_path / "out" / "eval" / "table_i.md").is_file()
    snippet = next(b for b in blocks("python") if "pyfunc.load_model" in b)
    check = snippet + "\nassert rolls.shape == (2, 4, 48, 84, 5)\nassert m.cfg.n_tracks == 5\n"
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_readme_slurm_examples_dry_run(tmp_path: Path) -> None:
    slurm = next(b for b in blocks("bash") if "slurm/pipeline.sh" in b)
    for cmd in commands(slurm):
        if "pipeline.sh" not in cmd:
            continue  # local-cluster.sh start: run by .ci/run and tests/test_slurm.py
        if "--dry-run" not in cmd:
            cmd += " --dry-run --skip-pack --data shards/lpd5"  # print, submit nothing
        proc = subprocess.run(cmd, shell=True, cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "MS2DIST_RUN": str(tmp_path)})
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "sbatch" in proc.stdout + proc.stderr


def test_architecture_page_names_every_module() -> None:
    """docs/architecture.md lists every room and every module in it (it cannot fall behind)."""
    page = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted((REPO / "ms2dist").rglob("*.py")):
        rel = path.relative_to(REPO / "ms2dist")
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        if len(rel.parts) > 1 and f"`{rel.parts[0]}/`" not in page:
            missing.append(f"{rel.parts[0]}/")
        name = f"`{rel.stem}`" if rel.parts[0] == "commands" else f"`{rel.name}`"
        if name not in page:
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not mention {sorted(set(missing))}"

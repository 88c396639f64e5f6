"""The ms2dist wheel a logged model carries, so ``mlflow models serve --env-manager uv``
(or ``virtualenv``) can rebuild the model's environment from the artifact alone: no index
holds ms2dist.

The wheel is built from the *installed* package files (an editable install of the
repository or an install from a wheel alike), with a ``pyproject.toml`` written from the
installed distribution's metadata (version, dependencies, the ``ms2dist`` command). The
shipped ``pretrained/`` weights are left out: the logged model's own weights are already
in the artifact. :func:`pinned_requirements` pins the wheel's dependencies to the
installed versions (torch included, local build tag and all), so a rebuild installs what
the model was logged with.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

__all__ = ["build_wheel", "pinned_requirements", "DIST"]

DIST = "ms2dist"
_EXCLUDE = shutil.ignore_patterns("__pycache__", "*.pyc", "pretrained")
_built: dict[str, Path] = {}


def _package_dir() -> Path:
    import ms2dist

    return Path(ms2dist.__file__).resolve().parent


def _runtime_requirements() -> list[Requirement]:
    """The installed distribution's dependencies, extras left out."""
    reqs = [Requirement(r) for r in md.requires(DIST) or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def _pyproject(source_digest: str) -> str:
    meta = md.metadata(DIST)
    deps = ",\n".join(f"    {str(r)!r}" for r in _runtime_requirements())
    scripts = "\n".join(f"{ep.name} = {ep.value!r}"
                        for ep in md.distribution(DIST).entry_points
                        if ep.group == "console_scripts")
    python = meta.get("Requires-Python") or ">=3.10"
    return (f'[build-system]\nrequires = ["setuptools>=68"]\n'
            f'build-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{DIST}"\nversion = "{meta["Version"]}+g{source_digest[:12]}"\n'
            f'requires-python = "{python}"\ndependencies = [\n{deps}\n]\n\n'
            f"[project.scripts]\n{scripts}\n\n"
            f'[tool.setuptools.packages.find]\ninclude = ["{DIST}*"]\n')


def _digest(pkg: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        if "pretrained" in p.relative_to(pkg).parts:
            continue
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def build_wheel() -> Path:
    """Build (once per process and source state) the wheel of the installed ms2dist.

    Returns
    -------
    Path
        ``ms2dist-<version>+g<source digest>-py3-none-any.whl`` in a directory removed
        when the process ends; copy it where it must stay.

    Raises
    ------
    RuntimeError
        When the build fails, with the builder's last output lines.
    """
    pkg = _package_dir()
    key = _digest(pkg)
    if key in _built and _built[key].is_file():
        return _built[key]
    work = Path(tempfile.mkdtemp(prefix="ms2dist-wheel-"))
    atexit.register(shutil.rmtree, work, True)
    src, out = work / "src", work / "dist"
    shutil.copytree(pkg, src / DIST, ignore=_EXCLUDE)
    # The source digest as the local version label: MLflow names a rebuilt environment by a
    # hash of requirements.txt and reuses it, so two models logged from different code must
    # not name the same wheel file.
    (src / "pyproject.toml").write_text(_pyproject(key))
    # In a subprocess: setuptools' build leaves state (logging, distutils) in its process.
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
        raise RuntimeError("building the ms2dist wheel for the logged model failed:\n"
                           + "\n".join(tail))
    wheel = out / proc.stdout.strip().splitlines()[-1]
    _built[key] = wheel
    return wheel


def pinned_requirements(wheel_ref: str) -> list[str]:
    """``requirements.txt`` lines: the wheel (``wheel_ref``, a path relative to the model
    directory) and each of its dependencies at the installed version."""
    lines = []
    for r in _runtime_requirements():
        try:
            lines.append(f"{r.name}=={md.version(r.name)}")
        except md.PackageNotFoundError:
            lines.append(str(r))
    return [wheel_ref, *lines]

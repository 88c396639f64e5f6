"""Config values: every number declares its range; bad values fail in one line (exit 2)
before anything is trained; scientific notation is read as the number it is."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from ms2dist.configs import PRESETS, RunConfig, resolve_config
from ms2dist.yamlconfig import ConfigError
from tests.conftest import run_ms2dist


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float) or typing.get_origin(tp) is tuple:
            out.append((prefix + f.name, f))
    return out


def test_every_number_declares_a_range() -> None:
    fields = _numeric_fields(RunConfig)
    assert len(fields) > 30
    assert [k for k, f in fields if "range" not in f.metadata] == []


@pytest.mark.parametrize("override, key, text", [
    ("--train.vrae_steps=-5", "train.vrae_steps", ">= 1"),
    ("--train.kl_weight=-1", "train.kl_weight", ">= 0"),
    ("--optim.lr=0", "optim.lr", "> 0"),
    ("--optim.lr=-1", "optim.lr", "> 0"),
    ("--train.keep_checkpoints=0", "train.keep_checkpoints", ">= 1"),
    ("--data.batch_size=0", "data.batch_size", ">= 1"),
    ("--train.checkpoint_every=0", "train.checkpoint_every", ">= 1"),
    ("--model.bvae.latent=0", "model.bvae.latent", ">= 1"),
    ("--data.max_corrupt_fraction=2", "data.max_corrupt_fraction", "0..1"),
    ("--optim.lr=nan", "optim.lr", "finite"),
    ("--train.vrae_steps=1.5", "train.vrae_steps", "integer"),
])
def test_out_of_range_values_are_refused(override: str, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_config("tiny", [override])
    msg = str(e.value)
    assert msg.startswith(key) and text in msg and "\n" not in msg


@pytest.mark.parametrize("override, path, value", [
    ("--optim.lr=3e-3", ("optim", "lr"), 3e-3),
    ("--optim.lr=1E-3", ("optim", "lr"), 1e-3),
    ("--train.vrae_steps=1e3", ("train", "vrae_steps"), 1000),
    ("--train.kl_weight=1.5e-4", ("train", "kl_weight"), 1.5e-4),
])
def test_scientific_notation_is_a_number(override: str, path: tuple, value: float) -> None:
    cfg = resolve_config("tiny", [override])
    got = getattr(getattr(cfg, path[0]), path[1])
    assert got == pytest.approx(value) and type(got) is type(value)


def test_yaml_file_with_scientific_notation_and_bad_values(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("preset: tiny\noptim:\n  lr: 3e-3\ntrain:\n  vrae_steps: 2e3\n")
    cfg = resolve_config(str(good))
    assert (cfg.optim.lr, cfg.train.vrae_steps) == (3e-3, 2000)
    for text, needle in (("preset: papr\n", "papr"), ("train: {vrae_steps: -1}\n", ">= 1"),
                         ("optim: [1, 2\n", "not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            resolve_config(str(bad))


def test_presets_are_within_their_ranges() -> None:
    for name in PRESETS:
        resolve_config(name)  # every field goes through the range checks


def test_cli_answers_a_bad_value_in_one_line_with_exit_2(tmp_path: Path) -> None:
    """Before any process group or data: --data does not even need to exist."""
    proc = run_ms2dist(["train", "stage1", "--config", "tiny", "--data", tmp_path / "none",
                        "--out", tmp_path / "out", "--data.batch_size=0"], check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.batch_size: 0 is out of range (valid: >= 1)" in lines[0]
    assert not (tmp_path / "out").exists()

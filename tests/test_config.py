from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ms2dist.yamlconfig import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    tracks: tuple[str, ...] = ("Drums", "Bass")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_overrides_parse_types_and_nest():
    cfg = apply_overrides(Outer(), ["--inner.lr=0.5", "--inner.steps=3", "--flag=true"])
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == 3 and cfg.flag is True
    cfg = apply_overrides(cfg, ["--inner.tracks=Piano,Strings"])
    assert cfg.inner.tracks == ("Piano", "Strings")


def test_unknown_keys_are_errors_with_names():
    with pytest.raises(ConfigError, match="inner.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match="'lrr'"):
        apply_overrides(Outer(), ["--inner.lrr=1"])
    with pytest.raises(ConfigError, match="section 'nope'"):
        apply_overrides(Outer(), ["--nope.x=1"])


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="inner.steps"):
        apply_overrides(Outer(), ["--inner.steps=abc"])
    with pytest.raises(ConfigError, match="flag"):
        from_dict(Outer, {"flag": "yes please"})


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Outer(), ["--inner.lr=0.25", "--name=y"])
    p = tmp_path / "c.yaml"
    dump_yaml(cfg, p)
    assert load_yaml(Outer, p) == cfg
    p.write_text("inner: {bogus: 1}\n")
    with pytest.raises(ConfigError, match=str(p)):
        load_yaml(Outer, p)


def test_scientific_notation_is_a_number() -> None:
    # PyYAML (YAML 1.1) reads "3e-3" as a string; float fields must still take it.
    cfg = apply_overrides(Outer(), ["--inner.lr=3e-3"])
    assert cfg.inner.lr == 0.003
    with pytest.raises(ConfigError, match="expected a number"):
        apply_overrides(Outer(), ["--inner.lr=fast"])

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


@dataclass
class Numbers:
    lr: float = 1e-3
    maybe: float | None = None
    rates: tuple[float, ...] = (0.1,)
    steps: int = 10


@pytest.mark.parametrize("override, key, value", [
    ("--lr=3E-3", "lr", 3e-3),
    ("--lr=+2.5e-4", "lr", 2.5e-4),
    ("--lr=1e2", "lr", 100.0),
    ("--maybe=5e-1", "maybe", 0.5),
    ("--rates=1e-3,2e-3", "rates", (1e-3, 2e-3)),
    ("--steps=2e3", "steps", 2000),
    ("--steps=1.5e3", "steps", 1500),
])
def test_scientific_notation_in_every_kind_of_number_field(override, key, value) -> None:
    cfg = apply_overrides(Numbers(), [override])
    got = getattr(cfg, key)
    assert got == pytest.approx(value) and type(got) is type(value)


def test_scientific_notation_that_is_no_integer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"steps: '1e-3'.*expected an integer|expected an "
                                          r"integer, got '1e-3'"):
        apply_overrides(Numbers(), ["--steps=1e-3"])
    with pytest.raises(ConfigError, match="finite"):
        apply_overrides(Numbers(), ["--lr=inf"])

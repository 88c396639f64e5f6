"""Every subcommand teaches itself: ``--help`` works, every option says what it does and
shows its default, and an epilog gives real examples."""

from __future__ import annotations

import argparse

import pytest

from ms2dist.cli import COMMANDS, HelpFormatter, command_parser
from ms2dist.cli import main as cli_main


def _says_nothing(default: object) -> bool:
    """Defaults the formatter leaves unsaid (None, "", [], a flag's False)."""
    return default is None or isinstance(default, bool) or \
        (isinstance(default, (str, list, tuple)) and not default)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_options_defaults_and_examples(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: ms2dist {name}")

    parser, _ = command_parser(name)
    assert parser.epilog and f"ms2dist {name}" in parser.epilog, "no example in the epilog"
    assert "\n  ms2dist" in text or "\n  accelerate" in text, "epilog lines were re-wrapped"
    formatter = HelpFormatter(prog=f"ms2dist {name}")
    undocumented, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        if not (action.help or "").strip():
            undocumented.append(label)
            continue
        shown = formatter._get_help_string(action) or ""
        if not _says_nothing(action.default) and "default" not in shown:
            no_default.append(label)
        if "(default: %(default)s)" in shown:
            assert f"(default: {action.default})" in " ".join(text.split()), label
    assert not undocumented, f"ms2dist {name}: options without help: {undocumented}"
    assert not no_default, f"ms2dist {name}: defaults not shown: {no_default}"


def test_defaults_appear_in_the_printed_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["pack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 2048)", "(default: 90,5,5)", "(default: auto)",
                  "(default: 24)", "(default: shards/<name>)"):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text

"""The ``ms2dist`` command: one subcommand per pipeline step.

Each subcommand lives in its own module of :mod:`ms2dist.commands` exposing
``add_arguments(parser)`` and ``main(args, extra) -> int``; only the chosen one is imported,
so ``ms2dist pack`` does not pay for importing MLflow, and ``--help`` is instant. A module's
``EPILOG`` (examples) closes its ``--help``, which shows every option's default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ms2dist import __version__
from ms2dist.yamlconfig import ConfigError

__all__ = ["main", "COMMANDS", "HelpFormatter", "command_parser"]

# name -> (one-line help, accepts --section.key=value overrides); the module is
# ms2dist.commands.<name>.
COMMANDS: dict[str, tuple[str, bool]] = {
    "pack": ("pack LPD .npz / MIDI songs into WebDataset shards", False),
    "verify": ("check a pack's shards against its manifests (sha256, checksums, counts)",
               False),
    "train": ("train stage1 (BVAEs) or stage2 (MFG-VAE); accelerate-launchable", True),
    "sample": ("phrases, songs, infilled bars, variations -> MIDI, npz, PNG", False),
    "calibrate": ("fit per-track note thresholds of a model on held-out data", False),
    "attributes": ("fit a model's attribute vectors (sample --attribute) on its data",
                   False),
    "evaluate": ("objective metrics and the paper's Table I", False),
    "registry": ("list and promote registered models in MLflow", False),
    "demo": ("the whole pipeline end to end on the embedded default", True),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help, the epilog's examples line by line.

    A default of None, "", [] or a flag's False says nothing, and a help text that already speaks of
    its default (a machine-dependent one, say) is left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if d is None or isinstance(d, bool) or (isinstance(d, (str, list, tuple)) and not d) \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of subcommand ``name`` (its options, defaults and examples) and its module."""
    help_text, _ = COMMANDS[name]
    module = importlib.import_module(f"ms2dist.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"ms2dist {name}", description=help_text,
                                     epilog=getattr(module, "EPILOG", None),
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser, module


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ms2dist",
        description="Train MIDI-Sandwich2 at scale.",
        epilog="commands:\n"
        + "\n".join(f"  {n:<10} {h}" for n, (h, _) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ms2dist {__version__}")
    p.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose from {', '.join(sorted(COMMANDS))}")
    _, takes_overrides = COMMANDS[name]
    parser, module = command_parser(name)
    if takes_overrides:
        args, extra = parser.parse_known_args(argv[1:])
        bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
    else:
        args, extra = parser.parse_args(argv[1:]), []
    try:
        return int(module.main(args, extra) or 0)
    except ConfigError as e:
        print(f"ms2dist {name}: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"ms2dist {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

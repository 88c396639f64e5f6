"""Save and load trained models as safetensors + a JSON config. Nothing is unpickled.

A model directory holds ``config.json`` (the ModelConfig and metadata such as which
tracks were trained and the data-manifest hash) and ``model.safetensors``. Loading
builds the module from our own code and copies tensors in: a model directory (or an
MLflow artifact) can never run code on load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _st_load
from safetensors.torch import save_model as _st_save

from ms2dist import __version__
from ms2dist.layout import DEFAULT_LAYOUT, PhraseLayout
from ms2dist.models.config import ModelConfig
from ms2dist.yamlconfig import from_dict, to_dict

__all__ = ["save_model", "load_model", "read_model_config", "resolve_model_dir",
           "pretrained_models", "PRETRAINED_DIR",
           "update_model_meta", "layout_of", "save_attributes", "load_attributes",
           "CONFIG_FILE", "WEIGHTS_FILE", "ATTRIBUTES_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ATTRIBUTES_FILE = "attributes.safetensors"  # attribute vectors (inference.attributes)
FORMAT = "ms2dist-model/1"


def save_model(model: torch.nn.Module, cfg: ModelConfig, directory: str | Path,
               meta: dict[str, Any] | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # fp32 on CPU whatever the training precision/device was.
    cpu = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
           for k, v in model.state_dict().items()}
    tmp_model = type(model)(cfg)
    tmp_model.load_state_dict(cpu)
    _st_save(tmp_model, str(d / WEIGHTS_FILE))  # handles shared (tied) tensors
    payload = {"format": FORMAT, "ms2dist_version": __version__, "model": to_dict(cfg),
               "meta": meta or {}}
    (d / CONFIG_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True))
    return d


PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def pretrained_models() -> list[str]:
    """Names of the models shipped with the package (``pretrained:<name>``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_model_dir(source: str | Path) -> Path:
    """A local model directory, a run directory holding ``model/``, an MLflow URI, or
    ``pretrained:<name>`` (a model shipped inside the package)."""
    s = str(source)
    if s.startswith("pretrained:"):
        name = s.split(":", 1)[1]
        d = PRETRAINED_DIR / name
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"no pretrained model {name!r}; shipped: "
                                    f"{', '.join(pretrained_models()) or 'none'}")
        return d
    if s.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=s))
        except MlflowException as e:
            raise FileNotFoundError(
                f"model {s} not found in the MLflow store {mlflow.get_tracking_uri()} "
                f"({e.message}); set MLFLOW_TRACKING_URI to the store holding it") from None
        return _find_model_dir(local, s)
    p = Path(s)
    if not p.exists():
        raise FileNotFoundError(f"model {s} does not exist (give a model directory, a training "
                                f"output directory, or an MLflow URI such as "
                                f"models:/midi-sandwich2@champion)")
    return _find_model_dir(p, s)


def _find_model_dir(p: Path, label: str) -> Path:
    for cand in (p, p / "model", p / "ms2dist-model", p / "data" / "model"):
        if (cand / CONFIG_FILE).is_file() and (cand / WEIGHTS_FILE).is_file():
            return cand
    hits = sorted(p.rglob(CONFIG_FILE))
    for h in hits:
        if (h.parent / WEIGHTS_FILE).is_file():
            return h.parent
    raise FileNotFoundError(f"{label}: no {CONFIG_FILE} + {WEIGHTS_FILE} found under {p}")


def read_model_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig and metadata of a model directory's ``config.json``.

    Any failure to read it is a ``ValueError`` (``FileNotFoundError`` when it is missing)
    whose one-line message names the file, the cause and what to do: the commands print
    it as it is.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: a model directory holds "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e}): check the file's "
                         f"permissions and disk") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is truncated or corrupt (not JSON: {_one_line(e)}): "
                         f"re-download or re-export the model") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{directory}/{CONFIG_FILE}: not an ms2dist model "
                         f"(format {found!r}, expected {FORMAT!r})")
    try:
        cfg = from_dict(ModelConfig, payload["model"], "model")
    except (KeyError, TypeError, ValueError) as e:
        cause = f"no {e} block" if isinstance(e, KeyError) else _one_line(e)
        raise ValueError(f"{path} does not describe a model this ms2dist can build ({cause}): "
                         f"re-export the model, or use the ms2dist version that wrote it "
                         f"({payload.get('ms2dist_version', 'unknown')})") from e
    meta = payload.get("meta", {})
    return cfg, meta if isinstance(meta, dict) else {}


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy ``path``'s tensors into ``model``; every failure is a one-line ``ValueError``
    (``FileNotFoundError``) naming the file, the cause and what to do."""
    try:
        _st_load(model, str(path), strict=True)  # raises on any missing/extra tensor
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: a model directory holds "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e}): check the file's "
                         f"permissions and disk") from e
    except SafetensorError as e:  # e.g. "incomplete metadata, file not fully covered"
        cause = _one_line(e).removeprefix("Error while deserializing header: ")
        raise ValueError(f"{path} is truncated or corrupt ({cause}): re-download or "
                         f"re-export the model") from e
    except RuntimeError as e:  # missing/unexpected tensors, shape mismatches
        raise ValueError(f"{path} does not fit {path.parent / CONFIG_FILE} "
                         f"({_one_line(e)}): the two files come from different models; "
                         f"re-export the model") from e


def update_model_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    """Merge ``meta`` into the ``meta`` block of a model directory's config.json."""
    read_model_config(directory)  # refuse to touch anything that is not an ms2dist model
    path = Path(directory) / CONFIG_FILE
    payload = json.loads(path.read_text())
    payload.setdefault("meta", {}).update(meta)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    tmp.replace(path)


def save_attributes(directory: str | Path, names: list[str], directions: torch.Tensor,
                    stats: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Write ``attributes.safetensors`` and ``meta.attributes``; returns that meta block."""
    d = Path(directory)
    tmp = d / f".{ATTRIBUTES_FILE}.part"
    save_file({"directions": directions.contiguous().float().cpu()}, str(tmp))
    tmp.chmod(0o644)  # as the model's other files (the writer makes it owner-only)
    tmp.replace(d / ATTRIBUTES_FILE)
    stats = dict(stats)
    block = {"file": ATTRIBUTES_FILE, "names": list(names), "source": source,
             "skipped": stats.pop("skipped", {}), "stats": stats,
             "unit": "half the top-vs-bottom-quartile latent distance"}
    update_model_meta(d, {"attributes": block})
    return block


def load_attributes(directory: str | Path, meta: Mapping[str, Any]
                    ) -> dict[str, torch.Tensor] | None:
    """name -> direction ``(Z,)`` of a model directory, or None if it has none."""
    block = meta.get("attributes")
    path = Path(directory) / ATTRIBUTES_FILE
    if not block or not path.is_file():
        return None
    try:
        dirs = load_file(str(path))["directions"]
    except Exception as e:  # safetensors raises several types for a bad file
        raise ValueError(f"{path} cannot be read ({' '.join(str(e).split())[:200]}): "
                         f"refit it with `ms2dist attributes`") from e
    names = block.get("names", [])
    if dirs.ndim != 2 or len(names) != dirs.shape[0]:
        raise ValueError(f"{path} holds {tuple(dirs.shape)} directions for {len(names)} "
                         f"names in config.json: refit it with `ms2dist attributes`")
    return {n: dirs[i] for i, n in enumerate(names)}


def load_model(source: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Return the ``MidiSandwich2`` module (eval mode) from a directory or MLflow URI,
    with ``ms2dist_meta`` (its config.json's meta) and ``ms2dist_attributes`` (its
    attribute vectors, or None) set.

    A missing, unreadable, truncated or mismatched ``config.json``/``model.safetensors`` is
    a ``FileNotFoundError``/``ValueError`` with a one-line message naming the file.
    """
    from ms2dist.models import MidiSandwich2

    d = resolve_model_dir(source)
    cfg, meta = read_model_config(d)
    model = MidiSandwich2(cfg)
    _load_weights(model, d / WEIGHTS_FILE)
    model.ms2dist_meta = meta
    # name -> latent direction (ms2dist.inference.attributes), None without them.
    model.ms2dist_attributes = load_attributes(d, meta)
    return model.to(device).eval()


def layout_of(model: torch.nn.Module) -> PhraseLayout:
    """The phrase layout a loaded model reads and writes: as recorded at export
    (``meta.layout``), else the default layout with the model's dimensions."""
    recorded = getattr(model, "ms2dist_meta", {}).get("layout")
    if recorded:
        return PhraseLayout(**recorded)
    cfg = model.cfg
    steps_per_beat = cfg.steps_per_bar // DEFAULT_LAYOUT.beats_per_bar
    return PhraseLayout(n_bars=cfg.n_bars, steps_per_beat=steps_per_beat,
                        n_pitches=cfg.n_pitches, n_tracks=cfg.n_tracks)

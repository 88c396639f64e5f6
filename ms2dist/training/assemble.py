"""``ms2dist train assemble``: per-track stage-1 outputs (e.g. a SLURM array) -> one model."""

from __future__ import annotations

import sys
from pathlib import Path

from ms2dist import TRACKS
from ms2dist.inference.modelio import load_model, read_model_config, resolve_model_dir, save_model
from ms2dist.yamlconfig import to_dict

__all__ = ["assemble"]


def assemble(out: Path, sources: list[Path]) -> Path:
    """Merge per-track stage-1 outputs (e.g. from a SLURM array) into one model."""
    cfg0 = None
    merged = None
    owner: dict[str, Path] = {}
    metas = []
    for src in sources:
        d = resolve_model_dir(src)
        cfg, meta = read_model_config(d)
        if meta.get("stage") != "stage1":
            raise ValueError(f"{d} is not a stage-1 model (stage={meta.get('stage')})")
        if cfg0 is None:
            cfg0, merged = cfg, load_model(d)
        elif to_dict(cfg) != to_dict(cfg0):
            raise ValueError(f"{d} was trained with a different model config than {sources[0]}")
        model = load_model(d)
        for t in meta.get("trained_tracks", []):
            if t in owner:
                raise ValueError(f"track {t} is trained in both {owner[t]} and {d}")
            owner[t] = d
            i = TRACKS.index(t)
            merged.bvae(i).load_state_dict(model.bvae(i).state_dict())
        metas.append(meta)
    missing = [t for t in TRACKS if t not in owner]
    if missing:
        print(f"warning: assembled model has untrained BVAEs for {missing}", file=sys.stderr)
    pipelines = {m.get("pipeline_id") for m in metas} - {None}
    meta = {"stage": "stage1", "trained_tracks": [t for t in TRACKS if t in owner],
            "stage1_versions": {t: m.get("registered_version") for m in metas
                                for t in m.get("trained_tracks", [])},
            "pipeline_id": pipelines.pop() if len(pipelines) == 1 else None,
            "assembled_from": {t: str(p) for t, p in owner.items()},
            "preset": metas[0].get("preset"),
            "data_manifest_sha256": metas[0].get("data_manifest_sha256")}
    return save_model(merged, cfg0, Path(out) / "model", meta)

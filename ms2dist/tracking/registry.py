"""Model registry: log trained models as safe pyfunc models and manage aliases
(``ms2dist registry`` is :mod:`ms2dist.commands.registry`).

``ms2-bvae`` holds stage-1 versions (the five BVAEs with refine nets, one version =
one set); ``midi-sandwich2`` holds full models, each tagged with the ``ms2-bvae``
version it was trained on. New versions get alias ``candidate``; ``promote`` moves
``champion``.

    ms2dist registry list
    ms2dist registry promote midi-sandwich2 3
    ms2dist registry import pretrained:lpd5      # the shipped model, as @champion
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ms2dist import __version__
from ms2dist.inference.modelio import read_model_config, resolve_model_dir, update_model_meta
from ms2dist.inference.requests import DEFAULTS
from ms2dist.tracking.connect import (
    TrackingUnavailable,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from ms2dist.tracking.wheel import build_wheel, pinned_requirements

__all__ = ["REGISTERED_NAMES", "log_and_register", "import_model", "list_models", "promote",
           "stage1_lineage", "parse_models_uri", "TrackingUnavailable", "serving_signature",
           "INPUT_EXAMPLE"]

REGISTERED_NAMES = {"stage1": "ms2-bvae", "stage2": "midi-sandwich2"}
ARTIFACT = "ms2dist-model"
WHEELS = "wheels"
#: The logged model's input example (docs/serving.md): one request, small answer.
INPUT_EXAMPLE = {"mode": "generate", "n": 1, "seed": 0, "output": "notes"}
_PARAM_TYPES = {"mode": "string", "n": "long", "seed": "long", "temperature": "double",
                "binarize": "string", "threshold": "double", "output": "string",
                "bars": "string", "form": "string", "link": "double", "tracks": "string",
                "amount": "double", "attributes": "string"}


def serving_signature():
    """The MLflow signature of served models: a params schema of every request key
    but ``phrases`` (defaults as in docs/serving.md) and no column schema.

    No column schema on purpose: MLflow drops input columns a schema does not declare,
    silently, and ``phrases`` is a 5-D array; ``predict`` checks every key and value of
    a request itself (:mod:`ms2dist.inference.requests`).
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, params=ParamSchema(
        [ParamSpec(k, t, DEFAULTS[k]) for k, t in _PARAM_TYPES.items()]))


def log_and_register(model_dir: Path, stage: str, register: bool = True,
                     meta: dict[str, Any] | None = None) -> str | None:
    """Log `model_dir` into the active run as a pyfunc model; register it (alias candidate).

    ``meta`` (lineage: run id, pipeline id, ...) is merged into the model's config.json
    first, so it travels inside the logged artifact. The logged model carries the serving
    signature (:func:`serving_signature`), an input example, and the ms2dist wheel under
    ``data/<model>/wheels/`` that its ``requirements.txt`` names (with every dependency
    pinned to the installed version), so ``mlflow models serve --env-manager uv`` can
    rebuild its environment. Returns "name/version" or None when not registered.
    """
    import mlflow
    from mlflow import MlflowClient

    if meta:
        update_model_meta(model_dir, meta)
    name = REGISTERED_NAMES[stage]
    _, meta = read_model_config(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        # The artifact's data directory = the model + the wheel that rebuilds its
        # environment (requirements.txt names it relative to the logged model's root).
        staged = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, staged)
        wheel = build_wheel()
        (staged / WHEELS).mkdir()
        shutil.copy2(wheel, staged / WHEELS / wheel.name)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT,
            loader_module="ms2dist.pyfunc",
            data_path=str(staged),
            pip_requirements=pinned_requirements(
                f"data/{staged.name}/{WHEELS}/{wheel.name}"),
            signature=serving_signature(),
            input_example=INPUT_EXAMPLE,
            registered_model_name=name if register else None,
            metadata={"ms2dist_stage": stage, "trained_tracks": meta.get("trained_tracks"),
                      "ms2dist_request_format": "docs/serving.md"},
        )
    if not register:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(name, "candidate", version)
    tags = {"ms2dist.stage": stage, "ms2dist.data_manifest_sha256":
            str(meta.get("data_manifest_sha256", "")),
            "ms2dist.trained_tracks": ",".join(meta.get("trained_tracks", []))}
    if stage == "stage2":
        # The plain version number: models:/ms2-bvae/<tag value> is the stage-1 model.
        s1 = str(meta.get("stage1_version") or "")
        tags["ms2-bvae.version"] = s1.rsplit("/", 1)[-1]
        tags["ms2-bvae.source"] = str(meta.get("stage1_source") or "")
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    # Stage 2 reading this directory learns which registered set it stands on.
    update_model_meta(model_dir, {"registered_version": f"{name}/{version}"})
    return f"{name}/{version}"


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``models:/name/3`` -> (name, "3", ""); ``models:/name@alias`` -> (name, "", alias)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, "", alias
    name, _, version = rest.partition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, version, ""


def stage1_lineage(source: str) -> dict[str, str]:
    """What stage 2 records about its stage-1 model: ``version`` ("ms2-bvae/N", when it is
    registered) and ``pipeline_id``. Uses the active tracking URI for ``models:/`` sources."""
    out: dict[str, str] = {}
    if source.startswith("models:/"):
        from mlflow import MlflowClient

        client = MlflowClient()
        name, version, alias = parse_models_uri(source)
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, version))
        out["version"] = f"{name}/{mv.version}"
        if mv.run_id:
            tags = client.get_run(mv.run_id).data.tags
            if tags.get("ms2dist.pipeline_id"):
                out["pipeline_id"] = tags["ms2dist.pipeline_id"]
        return out
    if source.startswith(("runs:/", "mlflow-artifacts:/")):
        return out
    try:
        _, meta = read_model_config(resolve_model_dir(source))
    except (OSError, ValueError):
        return out  # the training loop reports a bad stage-1 source itself
    if meta.get("registered_version"):
        out["version"] = str(meta["registered_version"])
    if meta.get("pipeline_id"):
        out["pipeline_id"] = str(meta["pipeline_id"])
    return out


def list_models(tracking_uri: str = "") -> list[dict[str, Any]]:
    from mlflow import MlflowClient

    connect(tracking_uri)
    client = MlflowClient()
    rows = []
    for rm in client.search_registered_models():
        aliases_by_version: dict[str, list[str]] = {}
        for alias, ver in (rm.aliases or {}).items():
            aliases_by_version.setdefault(str(ver), []).append(alias)
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            metrics = {}
            if mv.run_id:
                try:
                    run_metrics = client.get_run(mv.run_id).data.metrics
                    metrics = {k: v for k, v in run_metrics.items() if k.startswith("val/f1")}
                except Exception:  # noqa: BLE001 - a deleted run must not break the listing
                    metrics = {}
            rows.append({"name": rm.name, "version": str(mv.version),
                         "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                         "run_id": mv.run_id, "tags": dict(mv.tags or {}), "metrics": metrics})
    rows.sort(key=lambda r: (r["name"], int(r["version"])))
    return rows


def promote(name: str, version: str, alias: str = "champion", tracking_uri: str = "") -> None:
    from mlflow import MlflowClient

    connect(tracking_uri)
    client = MlflowClient()
    client.get_model_version(name, version)  # clear MLflow error if it does not exist
    client.set_registered_model_alias(name, alias, version)


def import_model(source: str, alias: str = "champion", tracking_uri: str = "") -> str:
    """Register a local or shipped model (``pretrained:lpd5``) as a ``midi-sandwich2``
    version in its own MLflow run, with ``alias``; returns "name/version".

    The model is copied first: registering writes its version into the copy's
    config.json, never into the installed package.
    """
    src = resolve_model_dir(source)
    _, meta = read_model_config(src)
    if meta.get("stage") != "stage2":
        raise ValueError(f"{source} is a {meta.get('stage')} model; only full (stage-2) "
                         f"models can be imported as midi-sandwich2")
    mlflow = connect(tracking_uri)
    exp = get_or_create_experiment(mlflow, "ms2dist", resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        shutil.copytree(src, model_dir)
        tags = {"ms2dist.stage": "import", "ms2dist.imported_from": str(source),
                "ms2dist.version": __version__}
        with mlflow.start_run(experiment_id=exp.experiment_id,
                              run_name=f"import-{Path(str(source)).name}", tags=tags):
            cal = meta.get("calibration") or {}
            mlflow.log_params({f"calibration.threshold.{t}": round(v, 5)
                               for t, v in (cal.get("thresholds") or {}).items()})
            version = log_and_register(model_dir, "stage2", register=True)
    name, ver = version.split("/")
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, ver)
    return version

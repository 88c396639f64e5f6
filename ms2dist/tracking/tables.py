"""Table I in MLflow: one ``table-i`` run per ``ms2dist evaluate``, in the same pipeline as
the model it evaluates.

A model trained by ms2dist carries its lineage (``mlflow_run_id``, ``pipeline_id`` in the
``meta`` of its config.json; a registered version points at its run): the evaluation is
logged into the experiment of that run, tagged with the same ``ms2dist.pipeline_id``, so it
sits beside the stage-1 and stage-2 runs. A model from elsewhere (``pretrained:``, another
store) goes to the ``ms2dist-evaluate`` experiment. Either experiment is made through
:func:`ms2dist.tracking.connect.get_or_create_experiment`, so the artifacts land beside the
store (a sqlite store: ``<folder of the .db>/mlruns``; a server: its artifact root), never
in the working directory.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ms2dist.inference.modelio import read_model_config, resolve_model_dir
from ms2dist.inference.tables import slug
from ms2dist.tracking.connect import (
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    ui_url,
)
from ms2dist.tracking.registry import parse_models_uri

__all__ = ["EVALUATE_EXPERIMENT", "model_lineage", "log_table_run"]

EVALUATE_EXPERIMENT = "ms2dist-evaluate"


def model_lineage(source: str) -> dict[str, str]:
    """``mlflow_run_id`` and ``pipeline_id`` of the training run a model came from (those
    known; empty for a model without lineage). Uses the active tracking URI."""
    out: dict[str, str] = {}
    s = str(source)
    if s.startswith("models:/"):
        from mlflow import MlflowClient

        client = MlflowClient()
        try:
            name, version, alias = parse_models_uri(s)
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
        except Exception:  # noqa: BLE001 - loading the model succeeded; lineage is a bonus
            return out
        if mv.run_id:
            out["mlflow_run_id"] = mv.run_id
        return out
    m = re.match(r"runs:/([0-9a-f]{32})(/|$)", s)
    if m:
        return {"mlflow_run_id": m.group(1)}
    if s.startswith("mlflow-artifacts:/"):
        return out
    try:
        _, meta = read_model_config(resolve_model_dir(s))
    except (OSError, ValueError):
        return out
    for key in ("mlflow_run_id", "pipeline_id"):
        if meta.get(key):
            out[key] = str(meta[key])
    return out


def _pipeline_run(client: Any, lineage: Mapping[str, str]) -> Any | None:
    """The training run of the model in this store: by run id, else by pipeline id."""
    if lineage.get("mlflow_run_id"):
        try:
            return client.get_run(lineage["mlflow_run_id"])
        except Exception:  # noqa: BLE001 - another store's run: look for the pipeline
            pass
    pipeline = lineage.get("pipeline_id")
    if pipeline and re.fullmatch(r"[A-Za-z0-9_.-]+", pipeline):
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, f"tags.`ms2dist.pipeline_id` = '{pipeline}'",
                                  order_by=["attributes.start_time DESC"], max_results=1) \
            if exps else []
        return runs[0] if runs else None
    return None


def log_table_run(tracking_uri: str, model: str, data: str,
                  table: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any],
                  files: list[Path], folders: Mapping[str, Path]) -> tuple[str, str]:
    """Log one evaluation: params, a metric per table cell, ``files`` and ``folders``.

    Parameters
    ----------
    tracking_uri
        The store (``""``: ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``); an unreachable
        server raises :class:`~ms2dist.tracking.connect.TrackingUnavailable`.
    model, data
        What was evaluated (the ``--model`` source and the split), recorded as tags.
    table
        Row -> metric -> value; metrics are logged as ``<row slug>/<metric>`` (finite only).
    meta
        What ``write_tables`` recorded (``n_phrases``, ``threshold``, ``binarize``, ``seed``,
        ``extra_models``).
    files, folders
        Artifacts: files at the root, folders under their artifact path.

    Returns
    -------
    tuple[str, str]
        ``(experiment_id, run_id)``.
    """
    from mlflow.entities import Metric, Param

    mlflow = connect(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    lineage = model_lineage(model)
    source = _pipeline_run(client, lineage)
    tags = {"ms2dist.stage": "evaluate", "ms2dist.model": str(model)[:5000],
            "ms2dist.data": str(data)[:5000]}
    if source is not None:
        name = client.get_experiment(source.info.experiment_id).name
        pipeline = source.data.tags.get("ms2dist.pipeline_id") or lineage.get("pipeline_id")
        tags["ms2dist.model_run_id"] = source.info.run_id
    else:
        name, pipeline = EVALUATE_EXPERIMENT, lineage.get("pipeline_id")
    if pipeline:
        tags["ms2dist.pipeline_id"] = pipeline
    exp = get_or_create_experiment(mlflow, name, uri)
    run = client.create_run(exp.experiment_id, tags=tags,
                            run_name=f"table-i-{pipeline}" if pipeline else "table-i")
    rid = run.info.run_id
    try:
        params = {"n_phrases": meta["n_phrases"], "threshold": meta["threshold"],
                  "binarize": str(meta["binarize"])[:500], "seed": meta["seed"],
                  **{f"extra_model.{k}": v for k, v in meta["extra_models"].items()}}
        now = int(time.time() * 1000)
        metrics = [Metric(f"{slug(row)}/{k}", float(v), now, 0)
                   for row, cells in table.items() for k, v in cells.items()
                   if math.isfinite(v)]
        client.log_batch(rid, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        for i in range(0, len(metrics), 900):
            client.log_batch(rid, metrics=metrics[i:i + 900])
        for f in files:
            client.log_artifact(rid, str(f))
        for path, folder in folders.items():
            if Path(folder).is_dir():
                client.log_artifacts(rid, str(folder), artifact_path=path)
    except BaseException:
        client.set_terminated(rid, status="FAILED")
        raise
    client.set_terminated(rid, status="FINISHED")
    print(f"[ms2dist] MLflow run {run.info.run_name}: {ui_url(uri, exp.experiment_id, rid)}",
          file=sys.stderr, flush=True)
    return exp.experiment_id, rid

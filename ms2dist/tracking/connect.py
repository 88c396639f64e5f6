"""Where MLflow is and whether it answers: the one connect sequence of every command.

Default store: the embedded sqlite database (``sqlite:///mlflow.db`` in the working
directory; no server). ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` point elsewhere; an
unreachable server fails before any work, naming the URI.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["TrackingUnavailable", "resolve_tracking_uri", "check_tracking_server", "connect",
           "get_or_create_experiment", "experiment_tags", "ui_url", "EXPERIMENT_KIND_TAG",
           "TRAINING_KIND", "UI_WORKFLOW_QUERY"]

# MLflow 3's UI reads this experiment tag to choose between its GenAI pages (traces, an
# empty "Overview") and its model-training pages (runs, charts, artifacts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# The description the UI shows at the top of an experiment (markdown).
NOTE_TAG = "mlflow.note.content"
# Newer UIs (3.5 on) decide with a per-browser switch in the sidebar, "GenAI" by default;
# this query parameter selects "Model training" for the page it opens (and the tag above
# does not count there), so every link ms2dist prints carries it.
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
_LOCAL_UI = "http://127.0.0.1:5000"  # where a plain `mlflow ui` listens

_DESCRIPTIONS = {
    "ms2dist-evaluate": (
        "**MIDI-Sandwich2: Table I evaluations** (model training, not GenAI traces). One run "
        "per `ms2dist evaluate` of a model whose training pipeline is not in this store: "
        "metrics per row, the tables (`table_i.md/.csv/.json`) and pianoroll figures as "
        "artifacts."),
}
_TRAINING_DESCRIPTION = (
    "**MIDI-Sandwich2 training runs** (model training, not GenAI traces). Each pipeline "
    "(tag `ms2dist.pipeline_id`) has a `stage1-<id>` run (the per-track BVAEs), a "
    "`stage2-<id>` run (the MFG-VAE) and its `table-i` evaluations. Metrics are logged at "
    "the global step; artifacts hold the config, the data manifests, the model, and under "
    "`samples/step_*` pianoroll PNGs, MIDI (and audio) of validation reconstructions and of "
    "phrases sampled from the priors. In the UI choose **Model training** in the sidebar "
    "switch (or add `?workflowType=machine_learning` to the URL) to see the runs.")


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the way out."""


def resolve_tracking_uri(explicit: str = "") -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI", "") or \
        f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """For http(s) URIs, GET /health; raise TrackingUnavailable naming the URI."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            if r.status != 200:
                raise TrackingUnavailable(f"MLflow server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({e}); start it, fix "
            f"MLFLOW_TRACKING_URI / --tracking-uri, or use --tracking.enabled=false") from None


def connect(explicit: str = "") -> Any:
    """Resolve the URI, check a server answers, point MLflow at it; returns ``mlflow``."""
    import mlflow

    uri = resolve_tracking_uri(explicit)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow


def _sqlite_artifact_root(uri: str) -> str | None:
    """``<folder of the .db>/mlruns`` for a sqlite store (MLflow's default is ``./mlruns``
    in whatever directory the first run happened to start in)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return str(Path(db).expanduser().resolve().parent / "mlruns")


def experiment_tags(name: str) -> dict[str, str]:
    """The tags every ms2dist experiment carries: its kind (model training, so the UI opens
    on the runs), a description, and ``ms2dist.experiment``."""
    return {EXPERIMENT_KIND_TAG: TRAINING_KIND,
            NOTE_TAG: _DESCRIPTIONS.get(name, _TRAINING_DESCRIPTION),
            "ms2dist.experiment": "evaluate" if name in _DESCRIPTIONS else "training"}


def get_or_create_experiment(mlflow: Any, name: str, uri: str) -> Any:
    """The experiment ``name`` (created if missing), tagged and described, made active.

    A new experiment of a sqlite store keeps its artifacts beside the database
    (``<folder of the .db>/mlruns``), whatever the working directory. An existing one gets
    the tags it lacks (a description someone edited in the UI is left alone); its artifact
    location is fixed by MLflow and stays what it is.
    """
    tags = experiment_tags(name)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            mlflow.create_experiment(name, artifact_location=_sqlite_artifact_root(uri),
                                     tags=tags)
            return mlflow.set_experiment(name)
        except Exception:  # noqa: BLE001 - created concurrently by another job: use that one
            exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        client = mlflow.MlflowClient(tracking_uri=uri)
        for key, value in tags.items():
            if key == NOTE_TAG and exp.tags.get(NOTE_TAG):
                continue
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp.experiment_id, key, value)
    return mlflow.set_experiment(name)


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment (or of one run) on the model-training pages.

    For an http(s) store the server's own address; otherwise where ``mlflow ui
    --backend-store-uri <uri>`` listens by default.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else _LOCAL_UI
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_WORKFLOW_QUERY}"

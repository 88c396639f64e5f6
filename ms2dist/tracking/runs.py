"""MLflow runs of training stages: one run per stage; only the main process talks to MLflow.

Where the store is and how it is reached: :mod:`ms2dist.tracking.connect` (an unreachable
server fails the job before the first step, naming the URI). Once the run is open, every
metric, param and artifact goes through :class:`~ms2dist.tracking.courier.Courier` (a
local spool and a background thread): an outage later on never stops or slows training.

The run id is written into every checkpoint, so a resumed or requeued job re-attaches
to the same run (metric steps continue, nothing is duplicated). Both stages of one
model share the tag ``ms2dist.pipeline_id`` (stage 2 inherits it from its stage-1
model), so they are found together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ms2dist import __version__
from ms2dist.tracking.connect import (
    TrackingUnavailable,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    ui_url,
)
from ms2dist.tracking.courier import Courier
from ms2dist.tracking.registry import log_and_register, stage1_lineage
from ms2dist.yamlconfig import dump_yaml, to_dict

__all__ = ["RunTracker", "RunInfo", "flatten"]


@dataclass
class RunInfo:
    """What a run records about its job (the loop fills it in; tracking never sees the loop)."""

    stage: str
    data: Path
    tracks: list[str]
    data_manifest_sha256: str
    out: Path  # the job's output folder: the tracking spool lives in <out>/tracking
    stage1: str | None = None
    launch_config: str = ""
    resume_step: int | None = None  # the checkpoint's step when the job resumes


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunTracker:
    """One MLflow run per stage; every method is a no-op off the main process."""

    def __init__(self, cfg: Any, job: RunInfo, accelerator: Any, run_id: str | None = None,
                 extra_tags: dict[str, Any] | None = None,
                 broadcast: Callable[[Any], Any] | None = None) -> None:
        """``cfg``: the run's config dataclass (logged as params and config.yaml; its
        ``tracking`` section says where and whether); ``accelerator``: who is main and the
        world; ``broadcast``: the main process's value on every rank (needed when the world
        has more than one process, to agree on a start failure)."""
        self.cfg, self.job, self.acc = cfg, job, accelerator
        self.broadcast = broadcast
        self.run_id = run_id
        self.extra = {k: v for k, v in (extra_tags or {}).items() if v is not None}
        self.enabled = bool(cfg.tracking.enabled) and accelerator.is_main_process
        self.uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
        self._mlflow: Any = None
        self.courier: Courier | None = None
        self.pipeline_id = ""

    def _stage1_lineage(self) -> None:
        """Stage 2: the stage-1 model's pipeline id and registered ``ms2-bvae`` version.

        A local stage-1 directory carries both in its config.json (written when it was
        logged); a ``models:/ms2-bvae@alias`` URI is looked up in the registry.
        """
        info = stage1_lineage(str(self.job.stage1))
        if info.get("pipeline_id") and not self.extra.get("pipeline_id"):
            self.extra["pipeline_id"] = info["pipeline_id"]
        if info.get("version") and not self.extra.get("stage1_version"):
            self.extra["stage1_version"] = info["version"]

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        error = ""
        if self.enabled:
            try:
                self._start_main()
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(e).__name__}: {e}"
        self._agree_or_raise(error)

    def _agree_or_raise(self, error: str) -> None:
        """Every rank raises the main process's error if it could not start tracking (no
        hang, and whichever rank the launcher reports first names the URI and the cause)."""
        if self.acc.num_processes > 1:
            assert self.broadcast is not None, "a multi-process run needs broadcast="
            error = self.broadcast(error)
        if error:
            raise TrackingUnavailable(error)

    def _start_main(self) -> None:
        mlflow = self._mlflow = connect(self.uri)
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        if self.job.stage == "stage2" and self.job.stage1:
            self._stage1_lineage()
        if self.run_id:
            try:
                run = client.get_run(self.run_id)
            except Exception as e:  # noqa: BLE001 - MlflowException, HTTP errors, ...
                raise TrackingUnavailable(
                    f"the checkpoint to resume belongs to MLflow run {self.run_id}, which "
                    f"{self.uri} does not hold ({type(e).__name__}): resume with the tracking "
                    f"URI the job started with, or start over with --resume never") from None
            self.pipeline_id = run.data.tags.get("ms2dist.pipeline_id", "")
            client.update_run(self.run_id, status="RUNNING")
            client.set_tag(self.run_id, "ms2dist.resumed", "true")
            # An experiment made before ms2dist tagged its experiments gets the tags now.
            get_or_create_experiment(mlflow, client.get_experiment(
                run.info.experiment_id).name, self.uri)
            self._announce(run.info.experiment_id, run.info.run_name)
        else:
            self._create_run(mlflow, client)
        self._open_courier()

    def _announce(self, experiment_id: str, run_name: str) -> None:
        """Where to watch the run: its page on the UI's model-training side."""
        how = "" if self.uri.startswith(("http://", "https://")) else \
            f" (after `mlflow ui --backend-store-uri {self.uri}`)"
        print(f"[ms2dist] MLflow run {run_name}: {ui_url(self.uri, experiment_id, self.run_id)}"
              f"{how}", file=sys.stderr, flush=True)

    def _create_run(self, mlflow: Any, client: Any) -> None:
        from mlflow.entities import Param

        exp = get_or_create_experiment(mlflow, self.cfg.tracking.experiment, self.uri)
        # A launcher (slurm/pipeline.sh) may name the pipeline for all its jobs at once.
        pipeline = (self.extra.get("pipeline_id") or os.environ.get("MS2DIST_PIPELINE_ID")
                    or uuid.uuid4().hex[:12])
        self.pipeline_id = str(pipeline)
        run = client.create_run(exp.experiment_id, tags=self._tags(pipeline),
                                run_name=f"{self.job.stage}-{pipeline}")
        self.run_id = run.info.run_id
        self._announce(exp.experiment_id, run.info.run_name)
        items = list(flatten(to_dict(self.cfg)).items())
        for i in range(0, len(items), 90):
            client.log_batch(self.run_id, params=[Param(k, str(v)[:500])
                                                  for k, v in items[i:i + 90]])
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "config.yaml"
            dump_yaml(self.cfg, p)
            client.log_artifact(self.run_id, str(p))
            for split in ("train", "val", "test"):
                m = self.job.data / split / "manifest.json"
                if m.is_file():
                    client.log_artifact(self.run_id, str(m), artifact_path=f"data/{split}")

    def _tags(self, pipeline: str) -> dict[str, str]:
        tags = {
            "ms2dist.stage": self.job.stage,
            "ms2dist.pipeline_id": pipeline,
            "ms2dist.version": __version__,
            "ms2dist.git_commit": _git_commit(),
            "ms2dist.world_size": str(self.acc.num_processes),
            "ms2dist.mixed_precision": str(self.acc.mixed_precision),
            "ms2dist.distributed_type": str(self.acc.distributed_type),
            "ms2dist.launch_config": self.job.launch_config or "none",
            "ms2dist.tracks": ",".join(self.job.tracks),
            "ms2dist.data_manifest_sha256": self.job.data_manifest_sha256,
        }
        # Launch scripts translate scheduler variables into these (training never reads SLURM_*).
        for env, tag in (("MS2DIST_JOB_ID", "slurm.job_id"),
                         ("MS2DIST_ARRAY_INDEX", "slurm.array_index")):
            if os.environ.get(env):
                tags[tag] = os.environ[env]
        for k, v in self.extra.items():
            if k != "pipeline_id":
                tags[f"ms2dist.{k}"] = str(v)
        return tags

    def _open_courier(self) -> None:
        """From here on nothing waits for the server: the courier's thread delivers, and
        a dead server costs one quick failed request per retry, not minutes of retries."""
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
        resume = (self.run_id, self.job.resume_step) if self.job.resume_step is not None \
            else None
        self.courier = Courier(self.uri, Path(self.job.out) / "tracking", resume=resume)

    def pause(self) -> None:
        """Preempted: mark the run killed; the requeued job re-opens it."""
        if self.enabled and self.courier:
            self.courier.put(self.run_id, "end", status="KILLED")
            self.courier.close(timeout_s=10)

    def abort(self) -> None:
        """The job is dying of an error: mark the run failed, deliver what can be."""
        if self.enabled and self.courier:
            self.courier.put(self.run_id, "end", status="FAILED")
            self.courier.close(timeout_s=10)

    def finish(self) -> None:
        if self.enabled and self.courier:
            self.courier.put(self.run_id, "end", status="FINISHED")
            self.courier.close(timeout_s=60)

    # -- logging --------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and self.courier:
            clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
            self.courier.put(self.run_id, "metrics", values=clean, step=int(step))

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled and self.courier:
            self.courier.put(self.run_id, "params",
                             values={k: str(v)[:500] for k, v in params.items()})

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        """Every file under ``local_dir`` into the run (pictures and MIDI of samples); the
        folder is copied first, so the caller may delete it right away."""
        if self.enabled and self.courier:
            self.courier.put(self.run_id, "artifacts", dir=self.courier.stash_dir(local_dir),
                             path=artifact_path)

    def log_model(self, model_dir: Path, stage: str) -> None:
        """Log and register the exported model (synchronous: the model is the point of the
        run). If the server is down now, the model stays in ``model_dir`` and training
        still ends cleanly; ``ms2dist registry import`` registers it later."""
        if not self.enabled or not self._mlflow:
            return
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)  # worth waiting for
        try:
            self._log_model(model_dir, stage)
        except Exception as e:  # noqa: BLE001 - the model is on disk; say how to register it
            print(f"[ms2dist] warning: could not log the model to {self.uri} "
                  f"({type(e).__name__}: {e}); it is saved in {model_dir}", file=sys.stderr,
                  flush=True)
        finally:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"

    def _log_model(self, model_dir: Path, stage: str) -> None:
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.uri)
        # Lineage travels with the model (also inside the logged artifact): stage 2 trained
        # on this directory or on its registered copy finds the pipeline and the version.
        lineage = {"mlflow_run_id": self.run_id, "pipeline_id": self.pipeline_id or None}
        if stage == "stage2":
            lineage["stage1_version"] = self.extra.get("stage1_version")
        with mlflow.start_run(run_id=self.run_id):
            version = log_and_register(model_dir, stage, register=self.cfg.tracking.register,
                                       meta={k: v for k, v in lineage.items() if v})
        if version is not None:
            print(f"[ms2dist] registered {version}", file=sys.stderr, flush=True)

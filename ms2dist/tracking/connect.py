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
           "get_or_create_experiment"]


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


def get_or_create_experiment(mlflow: Any, name: str, uri: str) -> Any:
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            mlflow.create_experiment(name, artifact_location=_sqlite_artifact_root(uri))
        except Exception:  # noqa: BLE001 - created concurrently by another job: use that one
            pass
    return mlflow.set_experiment(name)

"""Metrics, params and artifacts reach MLflow from a background thread, through a local spool.

Training never waits for the tracking server. Every item is first appended to a
write-ahead spool (``<out>/tracking/spool.jsonl``: one JSON line per item, numbered) and
then delivered, in order, by a daemon thread; the number of the last delivered item is kept
in ``<out>/tracking/delivered``. When the server is unreachable the thread says so once
(tracking is degraded), keeps the items on disk (memory stays flat however long the
outage) and retries with backoff; when the server is back it delivers the backlog. What is
still undelivered when the job ends stays in the spool and is delivered by the next job
that uses the same output folder (a resume), so every item reaches its run exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Courier"]

_BATCH = 200  # spool lines per delivery (MLflow takes up to 1000 metrics per log_batch)
_METRICS_PER_CALL = 1000


class Courier:
    """Delivers spooled items to ``uri``; ``put`` never blocks on the network."""

    def __init__(self, uri: str, folder: Path, *, retry_s: float = 2.0,
                 max_retry_s: float = 30.0, resume: tuple[str, int] | None = None) -> None:
        """``resume``: (run id, step) of the checkpoint a resumed job starts from: its
        undelivered metrics past that step are dropped first (the job logs them again)."""
        from mlflow import MlflowClient

        self.uri, self.folder = uri, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spool, self.mark = self.folder / "spool.jsonl", self.folder / "delivered"
        self.client = MlflowClient(tracking_uri=uri)
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.delivered = int(self.mark.read_text()) if self.mark.is_file() else 0
        self.seq = self._last_seq()
        self._out = open(self.spool, "a")
        if resume is not None:
            self._drop_metrics_after(*resume)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.degraded = False
        self._thread = threading.Thread(target=self._run, name="ms2dist-tracking", daemon=True)
        self._thread.start()

    # -- producer side (the training thread) ------------------------------------------
    def put(self, run_id: str, kind: str, **payload: Any) -> None:
        with self._lock:
            self.seq += 1
            item = {"seq": self.seq, "run": run_id, "kind": kind,
                    "ts": int(time.time() * 1000), **payload}
            self._out.write(json.dumps(item) + "\n")
            self._out.flush()
        self._wake.set()

    def stash_dir(self, src: str | Path) -> str:
        """A copy of ``src`` that lives until its artifacts are delivered."""
        dst = self.folder / "artifacts" / f"{self.seq + 1:09d}-{time.time_ns()}"
        shutil.copytree(src, dst)
        return str(dst)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every item is delivered or ``timeout_s`` passed; True if delivered."""
        deadline = time.monotonic() + timeout_s
        while self.delivered < self.seq and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return self.delivered >= self.seq

    def close(self, timeout_s: float = 30.0) -> int:
        """Deliver what can be delivered within ``timeout_s``; returns items left spooled."""
        self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        left = self.seq - self.delivered
        if left:
            print(f"[ms2dist] warning: {left} tracking item(s) not delivered to {self.uri}; "
                  f"they stay in {self.spool} and are sent by the next run with this output "
                  f"folder (a resume)", file=sys.stderr, flush=True)
        self._out.close()
        if not left:  # everything is in MLflow: start the next job with an empty spool
            self.spool.unlink(missing_ok=True)
            self.mark.unlink(missing_ok=True)
        return left

    # -- consumer side (the thread) ----------------------------------------------------
    def _run(self) -> None:
        wait = self.retry_s
        while not self._stop.is_set() or self.delivered < self.seq:
            batch = self._pending(_BATCH)
            if not batch:
                if self._stop.is_set():
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._deliver(batch)
            except Exception as e:  # noqa: BLE001 - any failure: keep the items, retry
                if self._stop.is_set():
                    return
                if not self.degraded:
                    self.degraded = True
                    print(f"[ms2dist] warning: tracking degraded: {self.uri} is not answering "
                          f"({type(e).__name__}); training goes on, metrics are kept in "
                          f"{self.spool} and sent when it is back", file=sys.stderr, flush=True)
                self._stop.wait(wait)
                wait = min(wait * 2, self.max_retry_s)
                continue
            wait = self.retry_s
            if self.degraded:
                self.degraded = False
                print(f"[ms2dist] tracking recovered: {self.uri} answers again; the backlog "
                      f"is being delivered", file=sys.stderr, flush=True)
            self.delivered = batch[-1]["seq"]
            tmp = self.mark.with_suffix(".tmp")
            tmp.write_text(str(self.delivered))
            os.replace(tmp, self.mark)

    def _deliver(self, batch: list[dict]) -> None:
        from mlflow.entities import Metric, Param

        i = 0
        while i < len(batch):
            item = batch[i]
            if item["kind"] in ("metrics", "params"):  # consecutive ones go in one call
                j, metrics, params = i, [], []
                while j < len(batch) and batch[j]["kind"] in ("metrics", "params") and \
                        batch[j]["run"] == item["run"] and len(metrics) < _METRICS_PER_CALL:
                    it = batch[j]
                    if it["kind"] == "metrics":
                        metrics += [Metric(k, v, it["ts"], it["step"])
                                    for k, v in it["values"].items()]
                    else:
                        params += [Param(k, v) for k, v in it["values"].items()]
                    j += 1
                self.client.log_batch(item["run"], metrics=metrics, params=params)
                i = j
                continue
            if item["kind"] == "artifacts":
                if Path(item["dir"]).is_dir():
                    self.client.log_artifacts(item["run"], item["dir"], item["path"])
                    shutil.rmtree(item["dir"], ignore_errors=True)
            elif item["kind"] == "end":
                self.client.set_terminated(item["run"], status=item["status"])
            i += 1

    # -- the spool file ------------------------------------------------------------------
    def _pending(self, limit: int | None = None) -> list[dict]:
        out = []
        with open(self.spool) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # being written
                item = json.loads(line)
                if item["seq"] > self.delivered:
                    out.append(item)
                    if limit and len(out) >= limit:
                        break
        return out

    def _last_seq(self) -> int:
        last = self.delivered
        if self.spool.is_file():
            with open(self.spool) as f:
                for line in f:
                    if line.endswith("\n"):
                        last = max(last, json.loads(line)["seq"])
        return last

    def _drop_metrics_after(self, run_id: str, step: int) -> None:
        kept = [it for it in self._pending()
                if not (it["kind"] == "metrics" and it["run"] == run_id and it["step"] > step)]
        if len(kept) != self.seq - self.delivered:
            self._rewrite(kept)

    def _rewrite(self, pending: list[dict]) -> None:
        """Replace the spool with ``pending`` (renumbered after ``delivered``)."""
        self._out.close()
        tmp = self.spool.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for n, item in enumerate(pending, self.delivered + 1):
                f.write(json.dumps({**item, "seq": n}) + "\n")
        os.replace(tmp, self.spool)
        self.seq = self.delivered + len(pending)
        self._out = open(self.spool, "a")

"""MLflow pyfunc flavour by ``loader_module``: MLflow imports this installed module and
hands it the logged model directory (safetensors + JSON). No pickle, no code from the
artifact store is ever executed.

``predict`` accepts a dict (or a one-row DataFrame) with ``mode``:
``{"mode": "generate", "n": 2, "seed": 0, "temperature": 1.0}`` or
``{"mode": "restore", "phrases": array (N, 4, 48, 84, 5)}``; it returns a numpy array
``(N, 4, 48, 84, 5)``: the notes played (0/1) under the model's calibrated per-track
thresholds by default (``"binarize"``: ``"calibrated"``, ``"threshold"`` with
``"threshold": x``, or ``"bernoulli"``), or the note probabilities with
``"output": "probabilities"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ms2dist.inference.calibration import rule_for_model
from ms2dist.inference.modelio import load_model

__all__ = ["_load_pyfunc", "MidiSandwich2Pyfunc"]


class MidiSandwich2Pyfunc:
    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        req = dict(params or {})
        if hasattr(model_input, "to_dict") and not isinstance(model_input, dict):
            rows = model_input.to_dict(orient="records")
            model_input = rows[0] if rows else {}
        if isinstance(model_input, np.ndarray):
            req.setdefault("mode", "restore")
            req["phrases"] = model_input
        elif isinstance(model_input, dict):
            req.update(model_input)
        # A DataFrame row carries NaN for the cells a request left empty.
        req = {k: v for k, v in req.items() if not (isinstance(v, float) and v != v)}
        mode = req.get("mode", "generate")
        with torch.no_grad():
            if mode == "generate":
                out = self.model.generate(int(req.get("n", 1)),
                                          temperature=float(req.get("temperature", 1.0)),
                                          seed=int(req.get("seed", 0)))
            elif mode == "restore":
                x = torch.as_tensor(np.asarray(req["phrases"]), dtype=torch.float32)
                out = self.model.restore(x, sample=False)
            else:
                raise ValueError(f"predict: unknown mode {mode!r} (generate or restore)")
        output = req.get("output", "notes")
        if output == "probabilities":
            return out.cpu().numpy()
        if output != "notes":
            raise ValueError(f"predict: unknown output {output!r} (notes or probabilities)")
        threshold = req.get("threshold")
        rule = rule_for_model(getattr(self.model, "ms2dist_meta", {}), req.get("binarize"),
                              None if threshold is None else float(threshold))
        g = torch.Generator().manual_seed(int(req.get("seed", 0)))
        return rule.apply(out.cpu(), generator=g).to(torch.float32).numpy()


def _load_pyfunc(data_path: str) -> MidiSandwich2Pyfunc:
    return MidiSandwich2Pyfunc(load_model(data_path))

"""MLflow pyfunc flavour by ``loader_module``: MLflow imports this installed module and
hands it the logged model directory (safetensors + JSON). No pickle, no code from the
artifact store is ever executed.

``predict`` takes requests in the format of ``docs/serving.md``
(:mod:`ms2dist.inference.requests`): one row or dict per request, ``params`` for what a
row leaves out, e.g. ``{"mode": "generate", "n": 2, "seed": 0}`` or
``{"mode": "restore", "phrases": array (N, 4, 48, 84, 5)}``; the modes ``song``
(``bars``, ``form``, ``link``), ``infill`` (``phrases``, ``bars``, ``tracks``) and ``vary``
(``phrases``, ``amount``), and ``attributes`` (``"Drums.density=1.5"``), are those of
``ms2dist sample`` (:mod:`ms2dist.inference.modes`). It answers, per sample, with
``output``:

- ``"notes"`` (default): a dict with the notes of each track as
  ``[start_step, midi_pitch, duration_steps]`` and the grid to play them, the notes
  being those the model's calibrated per-track thresholds select (``binarize``:
  ``"calibrated"``, ``"threshold"`` with ``threshold``, or ``"bernoulli"``);
- ``"midi"``: a dict with ``midi_base64``, the MIDI file ``ms2dist sample`` writes;
- ``"probabilities"``: a float32 array ``(N, 4, 48, 84, 5)`` of note probabilities.

Several requests' answers are concatenated in order. A bad request raises
``MlflowException`` (INVALID_PARAMETER_VALUE, HTTP 400) whose message is the reason.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch

from ms2dist.inference import modes
from ms2dist.inference.attributes import shift_vector
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.modelio import layout_of, load_model
from ms2dist.inference.requests import (
    FIELDS,
    Request,
    RequestError,
    midi_answer,
    notes_answer,
    parse_requests,
)

__all__ = ["_load_pyfunc", "MidiSandwich2Pyfunc"]

# MLflow drops params its schema does not declare before ``predict`` sees them, saying so
# only in a warning of this logger; reading that warning lets a typo ("num") fail the
# request instead of being ignored. The names are kept on the request's prediction
# context (a fresh one per PyFuncModel.predict call), so they never leak to another call.
_MLFLOW_PARAMS_LOGGER = "mlflow.models.utils"
_UNRECOGNIZED = re.compile(r"Unrecognized params (\[.*?\]) are ignored")


class _DroppedParams(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        m = _UNRECOGNIZED.search(str(record.getMessage()))
        if m:
            ctx = _prediction_context()
            if ctx is not None:
                ctx._ms2dist_dropped_params = m.group(1)
        return True


def _prediction_context() -> Any:
    try:
        from mlflow.pyfunc.context import get_prediction_context
    except ImportError:  # pragma: no cover - only without MLflow
        return None
    return get_prediction_context()


def _install_params_watch() -> None:
    logger = logging.getLogger(_MLFLOW_PARAMS_LOGGER)
    # A logger's filters only run for records it is enabled for (MLFLOW_LOGGING_LEVEL=ERROR
    # would otherwise let a typo through silently).
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DroppedParams) for f in logger.filters):
        logger.addFilter(_DroppedParams())


def _serving() -> bool:
    """True inside ``mlflow models serve`` (its scoring server sets this variable)."""
    try:
        from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    except ImportError:  # pragma: no cover - older or newer MLflow: plain float32
        return False
    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def _for_json(probs: np.ndarray) -> np.ndarray:
    """float32 values as the float64 of their shortest float32 decimal: JSON then carries
    ~9 digits instead of 17 (a third smaller) and reads back as the same float32."""
    return probs.astype(str).astype(np.float64)


def _bad_request(message: str) -> Exception:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - only without MLflow
        return RequestError(message)
    return MlflowException.invalid_parameter_value(message)


class MidiSandwich2Pyfunc:
    """The model MLflow's ``PyFuncModel`` wraps: ``predict`` per docs/serving.md."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.meta = getattr(model, "ms2dist_meta", {})
        self.layout = layout_of(model)
        self.attributes = getattr(model, "ms2dist_attributes", None)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Answer every request of ``model_input``; see the module docstring."""
        ctx = _prediction_context()
        dropped = getattr(ctx, "_ms2dist_dropped_params", None)
        if ctx is not None and dropped:
            ctx._ms2dist_dropped_params = None  # a reused context must not fail later calls
        if dropped:
            known = ", ".join(k for k in FIELDS if k != "phrases")
            raise _bad_request(f"params: unknown key(s) {dropped.strip('[]')}; "
                               f"known params: {known}")
        try:
            requests = parse_requests(model_input, params, self.layout,
                                      None if self.attributes is None else list(self.attributes))
            answers = [self._answer(r, i) for i, r in enumerate(requests)]
        except (RequestError, CalibrationError) as e:
            raise _bad_request(str(e)) from None
        if all(isinstance(a, np.ndarray) for a in answers):
            if len({a.shape[1:] for a in answers}) > 1:  # songs of other lengths, phrases
                raise _bad_request("output probabilities of requests of different lengths "
                                   "(songs of other bars, or songs and phrases) cannot be "
                                   "answered in one call; send them separately")
            return np.concatenate(answers) if len(answers) > 1 else answers[0]
        if any(isinstance(a, np.ndarray) for a in answers):
            raise _bad_request("output probabilities cannot be mixed with notes or midi in "
                               "one call; send them separately")
        return [sample for a in answers for sample in a]

    def _probabilities(self, r: Request) -> torch.Tensor:
        """The request's note probabilities ``(N, bars, T, P, tracks)``."""
        m = self.model
        shift = shift_vector(self.attributes or {}, r.attributes or {})
        x = None if r.phrases is None else torch.as_tensor(r.phrases, device=m.device)
        if r.mode == "generate" and shift is None:
            return m.generate(r.n, temperature=r.temperature, seed=r.seed)
        if r.mode == "generate":  # model.generate's draws, moved along the attributes
            g = torch.Generator(device=m.device).manual_seed(r.seed)
            z = m.mfg.sample_prior(r.n * m.n_segments, r.temperature, g)
            return m.decode(z + shift.to(z), generator=g)
        if r.mode == "restore" and shift is None:
            return m.restore(x, sample=False)
        if r.mode == "restore":
            mu, _ = m.encode(x)
            return m.decode(mu + shift.to(mu), sample_bvae=False)
        if r.mode == "song":
            return modes.song(m, modes.sample_seeds(r.seed, 0, r.n),
                              r.song_bars // m.cfg.n_bars, form=r.form, link=r.link,
                              temperature=r.temperature, shift=shift)
        seeds = modes.sample_seeds(r.seed, 0, len(x))
        if r.mode == "infill":
            return modes.infill(m, x, r.infill_bars, r.tracks, seeds, link=r.link)
        return modes.vary(m, x, r.amount, seeds, shift=shift)

    def _answer(self, r: Request, index: int) -> np.ndarray | list[dict[str, Any]]:
        with torch.no_grad():
            probs = self._probabilities(r).cpu().to(torch.float32)
        if r.output == "probabilities":
            return _for_json(probs.numpy()) if _serving() else probs.numpy()
        rule = rule_for_model(self.meta, r.binarize, r.threshold)
        g = torch.Generator().manual_seed(r.seed)
        binary = rule.apply(probs, generator=g).numpy().astype(bool)
        if r.mode == "infill":  # every cell not infilled comes back as sent
            regen = modes.infill_mask(binary.shape[1], binary.shape[-1], r.infill_bars,
                                      r.tracks).numpy()[:, None, None, :]
            binary = np.where(regen, binary, r.phrases > 0.5)
        encode = notes_answer if r.output == "notes" else midi_answer
        return [encode(b, self.layout, request=index, sample=j) for j, b in enumerate(binary)]


def _load_pyfunc(data_path: str) -> MidiSandwich2Pyfunc:
    _install_params_watch()
    return MidiSandwich2Pyfunc(load_model(data_path))

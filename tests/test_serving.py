"""``mlflow models serve`` of the registered model, over real HTTP (issue 14).

The shipped model is imported (``ms2dist registry import pretrained:lpd5``) into a real
``mlflow server`` on 127.0.0.1, then served with ``mlflow models serve -m
models:/midi-sandwich2@champion``; the tests send every request format of
``docs/serving.md`` to ``/invocations`` and check what comes back.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
import yaml

from ms2dist import TRACKS
from ms2dist.inference.calibration import rule_for_model
from ms2dist.inference.modelio import load_model
from ms2dist.inference.requests import FIELDS, notes_to_roll
from ms2dist.music.midi import read_midi
from tests.test_tracking import (
    _clean_env,
    _free_port,
    _logged_model_dir,
    _start_server,
    _stop_server,
    cli,
    wait_until_up,
)

MODEL = "models:/midi-sandwich2@champion"
SHAPE = (4, 48, 84, 5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-store")
    proc, st = _start_server(root)
    try:
        cli(["registry", "import", "pretrained:lpd5", "--tracking-uri", st.uri],
            env=_clean_env(), cwd=root)
        yield st
    finally:
        _stop_server(proc)


def _serve(store, root: Path, env_manager: str, timeout: float,
           extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve`` of the champion; the venv's bin on PATH (uvicorn lives there)."""
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = _clean_env(MLFLOW_TRACKING_URI=store.uri,
                     PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                     **(extra_env or {}))
    log = open(root / f"serve-{env_manager}.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL, "--env-manager",
         env_manager, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url + "/ping", root / f"serve-{env_manager}.log",
                  "mlflow models serve", timeout)
    return proc, url


@pytest.fixture(scope="module")
def served(store, tmp_path_factory) -> str:
    proc, url = _serve(store, tmp_path_factory.mktemp("serve"), "local", 180)
    try:
        yield url
    finally:
        _stop_server(proc)


def post(url: str, body: object) -> tuple[int, object, int]:
    """POST ``body`` as JSON to /invocations: (status, parsed body, bytes received)."""
    req = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw), len(raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw), len(raw)


@pytest.fixture(scope="module")
def model():
    return load_model("pretrained:lpd5")


def _rolls(answers: list[dict]) -> np.ndarray:
    return np.stack([notes_to_roll(a) for a in answers])


# ---- the logged model --------------------------------------------------------------------

def test_mlmodel_has_params_schema_input_example_and_its_wheel(store) -> None:
    mv = store.client().get_model_version_by_alias("midi-sandwich2", "champion")
    art = _logged_model_dir(store, mv)
    mlmodel = yaml.safe_load((art / "MLmodel").read_text())
    params = {p["name"]: p for p in json.loads(mlmodel["signature"]["params"])}
    assert set(params) == set(FIELDS) - {"phrases"}
    assert params["n"]["type"] == "long" and params["n"]["default"] == 1
    assert params["output"]["default"] == "notes"
    example = json.loads((art / mlmodel["saved_input_example_info"]["artifact_path"])
                         .read_text())
    assert example["mode"] == "generate" and set(example) <= set(FIELDS)
    reqs = (art / "requirements.txt").read_text().split()
    wheel = art / reqs[0]
    assert wheel.name.startswith("ms2dist-") and wheel.is_file(), reqs
    # Named by the source it holds: MLflow reuses a rebuilt environment by requirements hash.
    from ms2dist.tracking.wheel import _digest, _package_dir
    assert f"+g{_digest(_package_dir())[:12]}-" in wheel.name
    assert f"torch=={torch.__version__}" in reqs
    names = zipfile.ZipFile(wheel).namelist()
    assert "ms2dist/pyfunc.py" in names and "ms2dist/inference/requests.py" in names
    assert not [n for n in names if "pretrained" in n or n.endswith(".safetensors")]
    assert wheel.stat().st_size < 1_000_000


# ---- every request format ------------------------------------------------------------------

FORMATS = {
    "inputs dict": {"inputs": {"mode": "generate", "n": 2, "seed": 3}},
    "inputs list": {"inputs": [{"mode": "generate", "n": 2, "seed": 3}]},
    "instances": {"instances": [{"mode": "generate", "n": 2, "seed": 3}]},
    "dataframe_split": {"dataframe_split": {"columns": ["mode", "n", "seed"],
                                            "data": [["generate", 2, 3]]}},
    "dataframe_records": {"dataframe_records": [{"mode": "generate", "n": 2, "seed": 3}]},
    "params only": {"inputs": {}, "params": {"mode": "generate", "n": 2, "seed": 3}},
    "row + params": {"inputs": {"mode": "generate"}, "params": {"n": 2, "seed": 3}},
}


def test_every_documented_request_format_gives_the_same_notes(served, model) -> None:
    answers = {}
    for name, body in FORMATS.items():
        status, out, _ = post(served, body)
        assert status == 200, (name, out)
        samples = out["predictions"]
        assert [(s["request"], s["sample"]) for s in samples] == [(0, 0), (0, 1)], name
        assert list(samples[0]["tracks"]) == list(TRACKS), name
        assert samples[0]["grid"] == {"steps_per_beat": 12, "beats_per_bar": 4, "bars": 4,
                                      "steps": 192, "lowest_pitch": 24, "pitches": 84,
                                      "tempo_bpm": 100.0}
        answers[name] = _rolls(samples)
    first = answers["inputs dict"]
    assert first.shape == (2, *SHAPE) and first.any()
    for name, roll in answers.items():
        np.testing.assert_array_equal(roll, first, err_msg=name)
    # the notes are the calibrated binarisation of the model's own probabilities
    with torch.no_grad():
        probs = model.generate(2, seed=3)
    np.testing.assert_array_equal(first, rule_for_model(model.ms2dist_meta).apply(probs)
                                  .numpy().astype(bool))


def test_several_rows_are_several_requests_concatenated(served) -> None:
    rows = [{"mode": "generate", "n": 1, "seed": 5}, {"mode": "generate", "n": 2, "seed": 6}]
    status, out, _ = post(served, {"dataframe_records": rows})
    assert status == 200, out
    got = out["predictions"]
    assert [(s["request"], s["sample"]) for s in got] == [(0, 0), (1, 0), (1, 1)]
    for body in ({"instances": rows}, {"inputs": rows}):
        status, again, _ = post(served, body)
        assert status == 200 and again == out, again
    _, alone, _ = post(served, {"inputs": rows[1]})
    assert [s["tracks"] for s in alone["predictions"]] == [s["tracks"] for s in got[1:]]


def test_notes_midi_and_probabilities_agree_and_are_compact(served, model) -> None:
    body = {"inputs": {"mode": "generate", "n": 2, "seed": 11}}
    sizes = {}
    _, notes, sizes["notes"] = post(served, body)
    _, midi, sizes["midi"] = post(served, {**body, "params": {"output": "midi"}})
    status, probs, sizes["probabilities"] = post(served, {"inputs": {**body["inputs"],
                                                                    "output": "probabilities"}})
    assert status == 200
    p = np.asarray(probs["predictions"], dtype=np.float32)
    assert p.shape == (2, *SHAPE) and 0 <= p.min() and p.max() <= 1
    binary = rule_for_model(model.ms2dist_meta).apply(torch.as_tensor(p)).numpy().astype(bool)
    rolls = _rolls(notes["predictions"])
    np.testing.assert_array_equal(rolls, binary)
    for j, answer in enumerate(midi["predictions"]):
        data = base64.b64decode(answer["midi_base64"])
        mid = mido.MidiFile(file=io.BytesIO(data))
        names = [m.name for t in mid.tracks for m in t if m.type == "track_name"]
        assert names[1:] == list(TRACKS)
        n_on = sum(1 for t in mid.tracks for m in t if m.type == "note_on" and m.velocity)
        assert n_on == sum(len(v) for v in notes["predictions"][j]["tracks"].values()) > 0
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ms2dist-serve-{os.getpid()}-{j}.mid"
        path.write_bytes(data)
        try:
            back = read_midi(path, n_steps=192).reshape(SHAPE)
        finally:
            path.unlink()
        np.testing.assert_array_equal(back, rolls[j])
    per_phrase = {k: v / 2 for k, v in sizes.items()}
    print(f"\nresponse bytes per phrase: {per_phrase}")
    assert per_phrase["notes"] < 60_000 and per_phrase["midi"] < 60_000
    assert per_phrase["probabilities"] < 1_300_000  # float64 JSON: ~1.87 MB


def test_restore_takes_phrases_and_checks_their_shape(served, model) -> None:
    _, gen, _ = post(served, {"inputs": {"mode": "generate", "n": 2, "seed": 2}})
    phrases = _rolls(gen["predictions"]).astype(np.uint8)
    status, out, _ = post(served, {"inputs": {"mode": "restore", "phrases": phrases.tolist()}})
    assert status == 200, out
    with torch.no_grad():
        probs = model.restore(torch.as_tensor(phrases, dtype=torch.float32), sample=False)
    expected = rule_for_model(model.ms2dist_meta).apply(probs).numpy().astype(bool)
    np.testing.assert_array_equal(_rolls(out["predictions"]), expected)
    status, same, _ = post(served, {"dataframe_records": [{"mode": "restore",
                                                           "phrases": phrases.tolist()}]})
    assert status == 200 and same == out
    status, err, _ = post(served, {"inputs": {"mode": "restore",
                                              "phrases": phrases[:, :, :24].tolist()}})
    assert status == 400 and "(2, 4, 24, 84, 5)" in err["message"], err
    assert "(N, 4, 48, 84, 5)" in err["message"], err


def test_song_infill_vary_and_attributes_over_http(served, model) -> None:
    """The generation modes answer over HTTP exactly as in process (same seed, same notes),
    their keys given in a row or as params."""
    from ms2dist.pyfunc import MidiSandwich2Pyfunc

    local = MidiSandwich2Pyfunc(model)
    _, gen, _ = post(served, {"inputs": {"mode": "generate", "n": 2, "seed": 4}})
    phrases = _rolls(gen["predictions"]).astype(np.uint8)
    for row, params in (({"mode": "song", "bars": "8", "form": "AB", "n": 1, "seed": 1}, {}),
                        ({"mode": "song", "n": 1}, {"bars": "8", "link": 0.5}),
                        ({"mode": "infill", "bars": "2", "tracks": "Bass"}, {}),
                        ({"mode": "vary", "amount": 0.5, "seed": 2}, {}),
                        ({"mode": "generate", "n": 1}, {"attributes": "Drums.density=2"})):
        body_row = {**row, "phrases": phrases.tolist()} if row["mode"] in ("infill", "vary") \
            else row
        status, out, _ = post(served, {"inputs": body_row, "params": params})
        assert status == 200, (row, out)
        in_row = {**row, "phrases": phrases} if "phrases" in body_row else row
        want = json.loads(json.dumps(local.predict(in_row, params=params)))
        assert out["predictions"] == want, row
        if row["mode"] == "song":
            assert out["predictions"][0]["grid"]["bars"] == 8
        if row["mode"] == "infill":  # everything but bar 2 of the bass comes back as sent
            got = _rolls(out["predictions"])
            assert (got[:, [0, 2, 3]] == phrases[:, [0, 2, 3]]).all()
            assert (got[:, 1, ..., :3] == phrases[:, 1, ..., :3]).all()


BAD = [
    ({"inputs": {"mode": "bogus"}}, ["mode='bogus'", "generate, restore"]),
    ({"inputs": {"mode": "song", "bars": 6}}, ["bars=6", "whole number of 4-bar phrases"]),
    ({"inputs": {"mode": "song", "amount": 0.5}}, ["amount applies to mode vary, not song"]),
    ({"inputs": {"mode": "generate", "attributes": "Drums.loud=1"}},
     ["unknown attribute 'Drums.loud'", "Drums.density"]),
    ({"inputs": {"mode": "vary"}}, ["vary needs phrases"]),
    ({"inputs": {"mode": "song", "form": "ABC", "bars": 16}}, ["3 sections", "4 phrases"]),
    ({"inputs": {"n": -1}}, ["n=-1", "1..64"]),
    ({"inputs": {"n": 0}}, ["n=0", "1..64"]),
    ({"inputs": {"n": 1000}}, ["n=1000", "1..64"]),
    ({"inputs": {"n": "abc"}}, ["n='abc'", "integer"]),
    ({"inputs": {"n": 1.5}}, ["n=1.5", "integer"]),
    ({"inputs": {"temperature": -5}}, ["temperature=-5", "(0, 10]"]),
    ({"inputs": {"threshold": 1.5}}, ["threshold=1.5", "(0, 1)"]),
    ({"inputs": {"binarize": "threshold"}}, ["binarize threshold needs threshold"]),
    ({"inputs": {"binarize": "bernoulli", "threshold": 0.3}}, ["threshold goes with"]),
    ({"inputs": {"output": "wav"}}, ["output='wav'", "notes, midi, probabilities"]),
    ({"inputs": {"mode": "restore"}}, ["restore needs phrases", "(N, 4, 48, 84, 5)"]),
    ({"inputs": {"num": 2}}, ["'num'", "known keys: mode, n, seed"]),
    ({"inputs": [{"n": 2}, {"sed": 1}]}, ["request 1", "'sed'", "known keys"]),
    ({"dataframe_records": [{"mode": "generate", "nn": 1}]}, ["'nn'", "known keys"]),
    ({"inputs": {}, "params": {"sed": 3}}, ["params", "'sed'", "known params: mode"]),
    ({"inputs": {}, "params": {"n": "abc"}}, ["'n'", "abc"]),
    ({"inputs": {"mode": "generate", "phrases": [[0]]}}, ["phrases given with mode generate"]),
    ({"inputs": {"mode": "generate", "n": [1, 2]}}, ["mixes single values and lists"]),
    ({"inputs": ["generate"]}, ["list of strings", "mode, n, seed"]),
]


@pytest.mark.parametrize("body,reasons", BAD, ids=[json.dumps(b)[:60] for b, _ in BAD])
def test_bad_requests_answer_400_with_the_reason(served, body, reasons) -> None:
    status, err, _ = post(served, body)
    assert status == 400, err
    assert err["error_code"] == "INVALID_PARAMETER_VALUE", err
    for reason in reasons:
        assert reason in err["message"], (reason, err["message"])
    assert "unexpected error" not in err["message"]


# ---- the model's own environment, rebuilt from the artifact ------------------------------

@pytest.mark.slow
def test_serve_rebuilds_the_environment_from_the_artifact(store, tmp_path) -> None:
    """A fresh virtualenv from the model's requirements.txt alone (the ms2dist wheel in the
    artifact, every dependency pinned to this environment's version): ``--env-manager
    virtualenv`` (pip, with pip's own configuration) where pyenv is installed, else
    ``--env-manager uv`` (pip's find-links handed to uv as UV_FIND_LINKS)."""
    extra = {"MLFLOW_ENV_ROOT": str(tmp_path / "envs")}
    if shutil.which("pyenv"):
        manager = "virtualenv"
    else:
        manager = "uv"
        assert shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv"), \
            "MLflow needs pyenv (--env-manager virtualenv) or uv: pip install uv"
        links = subprocess.run([sys.executable, "-m", "pip", "config", "get",
                                "global.find-links"], capture_output=True, text=True)
        if links.returncode == 0 and links.stdout.strip():
            extra["UV_FIND_LINKS"] = links.stdout.strip()
    t0 = time.time()
    proc, url = _serve(store, tmp_path, manager, 1200, extra)
    try:
        built = time.time() - t0
        status, out, _ = post(url, {"inputs": {"mode": "generate", "n": 1, "seed": 3},
                                    "params": {"output": "midi"}})
        assert status == 200, out
        assert base64.b64decode(out["predictions"][0]["midi_base64"])[:4] == b"MThd"
        status, err, _ = post(url, {"inputs": {"sed": 1}})
        assert status == 400 and "'sed'" in err["message"]
    finally:
        _stop_server(proc)
    env_python = next((tmp_path / "envs").rglob("bin/python"))
    version = subprocess.run([str(env_python), "-c", "import torch, ms2dist, sys; "
                              "print(torch.__version__, ms2dist.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path,
                             env=_clean_env())
    assert version.returncode == 0, version.stderr[-3000:]
    torch_version, location = version.stdout.split()
    assert torch_version == torch.__version__
    assert str(tmp_path) in location  # the env's own copy, not this checkout
    assert not (Path(location).parent / "pretrained").exists()  # the wheel leaves it out
    print(f"\n{manager} environment built and served in {built:.0f} s")

"""``ms2dist evaluate``: Table I with every row and column, figures, and MLflow logging.

Known-answer tests of the metrics themselves are in ``tests/test_metrics.py``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import run_ms2dist
from test_audio import fluidsynth  # noqa: F401  (the fixture: fails in CI when missing)
from test_listening_page import check_page
from test_sample import ENV, THRESHOLD, tiny_model_dir

from ms2dist import TRACKS
from ms2dist.metrics import compute_all

pytestmark = pytest.mark.data

ROWS = ["Dataset", "MSG1", "MSG2", "MSR", "no-fusion", "shared-BVAE (MSG2)",
        "shared-BVAE (MSR)"]
PITCHED = [t for t in TRACKS if t != "Drums"]
MAX_PHRASES = "24"


def _strict_json(text: str):
    def refuse(c: str):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def models(tmp_path_factory, lpd5_test_small) -> tuple[Path, Path]:
    return (tiny_model_dir(tmp_path_factory, lpd5_test_small),
            tiny_model_dir(tmp_path_factory, lpd5_test_small, shared=True))


@pytest.fixture(scope="module")
def table(models, packed_small, tmp_path_factory) -> Path:
    model, shared = models
    out = tmp_path_factory.mktemp("eval") / "eval"
    run_ms2dist(["evaluate", "--model", model, "--data", packed_small / "test", "--out", out,
                 "--extra-model", f"shared-BVAE={shared}", "--max-phrases", MAX_PHRASES,
                 "--threshold", THRESHOLD, "--no-mlflow"], env=ENV, timeout=300)
    return out


def test_shared_model_really_shares_its_bvae(models):
    from ms2dist.inference.modelio import load_model

    assert len(load_model(models[1]).bvaes) == 1 and len(load_model(models[0]).bvaes) == 5


def test_table_has_every_row_and_column(table):
    doc = _strict_json((table / "table_i.json").read_text())  # nan is written as null
    rows = doc["rows"]
    assert list(rows) == ROWS
    assert doc["meta"]["n_phrases"] == int(MAX_PHRASES)
    assert doc["meta"]["extra_models"] == {"shared-BVAE": doc["meta"]["extra_models"]
                                           ["shared-BVAE"]}
    metric_keys = set(compute_all(__import__("numpy").zeros((1, 4, 48, 84, 5), bool)))
    f1 = {f"F1/{t}" for t in TRACKS}
    for name, row in rows.items():
        restore = name in ("MSR", "shared-BVAE (MSR)")
        assert set(row) == metric_keys | {"dist"} | (f1 if restore else set()), name

    with open(table / "table_i.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["row"] for r in csv_rows] == ROWS
    for r in csv_rows:
        for k, v in rows[r["row"]].items():
            if v is None:
                assert r[k] == "nan", (r["row"], k)
            else:
                assert float(r[k]) == pytest.approx(v), (r["row"], k)

    md = (table / "table_i.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in md
    for key in sorted(metric_keys | f1 | {"dist"}):
        assert key in md, key
    assert f"{float(rows['Dataset']['DP']):.3f}" in md


def test_values_are_finite_where_the_data_allows(table):
    rows = _strict_json((table / "table_i.json").read_text())["rows"]
    fin = {name: {k: v is not None and math.isfinite(v) for k, v in row.items()}
           for name, row in rows.items()}
    data = rows["Dataset"]
    # Every track of the test songs plays: every Dataset metric is defined.
    assert all(fin["Dataset"].values()), [k for k, ok in fin["Dataset"].items() if not ok]
    assert data["dist"] == 0.0
    assert 0 < data["DP"] <= 1 and all(0 <= data[f"EB/{t}"] < 1 for t in TRACKS)
    for t in PITCHED:
        assert 1 <= data[f"UPC/{t}"] <= 12 and 0 < data[f"SR/{t}"] <= 1
        assert 0 < data[f"QN/{t}"] <= 1
    for name, row in rows.items():
        assert all(fin[name][f"EB/{t}"] for t in TRACKS), name
        if name != "Dataset":
            assert fin[name]["dist"] and row["dist"] > 0, name
        # A track that plays has its per-track metrics.
        for t in PITCHED:
            if row[f"EB/{t}"] < 1:
                assert all(fin[name][f"{m}/{t}"] for m in ("UPC", "QN", "SR", "polyphony"))
        if row["EB/Drums"] < 1:
            assert fin[name]["DP"] and fin[name]["polyphony/Drums"]
    for name in ("MSR", "shared-BVAE (MSR)"):
        for t in TRACKS:
            assert rows[name][f"F1/{t}"] is not None and 0 <= rows[name][f"F1/{t}"] <= 1
    assert rows["MSR"]["F1/Piano"] > 0  # restore reproduces some of the notes


def test_paper_numbers_are_labelled_not_comparable(table):
    md = (table / "table_i.md").read_text()
    head, paper = md.split("## As published in the paper", 1)
    assert "not comparable" in paper and "not comparable" not in head
    assert "| MSR | 55.9 |" in paper


def test_figures_one_png_per_row(table):
    pngs = sorted(p.name for p in (table / "figures").glob("*.png"))
    assert pngs == sorted(f"{r.replace(' ', '_').replace('(', '').replace(')', '')}_000.png"
                          for r in ROWS)


def _row_entries(out: Path, rows: list[str]) -> list[dict]:
    from ms2dist.inference.tables import slug

    return [e for r in rows
            for e in json.loads((out / "figures" / f"{slug(r)}_index.json").read_text())]


def test_page_one_sample_per_row_without_audio(table):
    html = (table / "index.html").read_text()
    assert "<audio" not in html and html.count("<img ") == len(ROWS)
    assert html.count('src="figures/') == len(ROWS)
    for entry, row in zip(_row_entries(table, ROWS), ROWS, strict=True):
        assert f"<h3>{row}" in html and "audio" not in entry
    assert "<th>n_phrases</th><td>24</td>" in html and "<th>audio</th><td>none</td>" in html


def test_bad_arguments_are_clear_errors(models, packed_small, tmp_path):
    proc = run_ms2dist(["evaluate", "--model", models[0], "--data", tmp_path, "--out",
                        tmp_path / "o", "--no-mlflow"], env=ENV, check=False)
    assert proc.returncode == 2 and "manifest.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_ms2dist(["evaluate", "--model", models[0], "--data", packed_small / "test",
                        "--out", tmp_path / "o", "--extra-model", "shared", "--no-mlflow"],
                       env=ENV, check=False)
    assert proc.returncode == 2 and "NAME=URI" in proc.stderr


def test_mlflow_logging_into_sqlite(models, packed_small, tmp_path, fluidsynth):  # noqa: F811
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = tmp_path / "eval"
    # a working directory away from the database: MLflow's default artifact root would be
    # ./mlruns there; ms2dist keeps the artifacts beside the store
    work = tmp_path / "work"
    work.mkdir()
    run_ms2dist(["evaluate", "--model", models[0], "--data", packed_small / "test", "--out",
                 out, "--max-phrases", "4", "--threshold", THRESHOLD, "--audio", "wav"],
                env={**ENV, "MLFLOW_TRACKING_URI": uri}, cwd=work, timeout=300)
    assert sorted(p.name for p in work.iterdir()) == []
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ms2dist-evaluate")
    assert exp.artifact_location == str(tmp_path / "mlruns")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["ms2dist.model"] == str(models[0])
    assert run.data.metrics["Dataset/dist"] == 0.0
    assert math.isfinite(run.data.metrics["Dataset/DP"])
    assert "MSR/F1/Piano" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"table_i.md", "table_i.csv", "table_i.json", "figures"} <= arts
    figs = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/Dataset_000.png" in figs
    rows = ["Dataset", "MSG1", "MSG2", "MSR", "no-fusion"]
    entries = _row_entries(out, rows)
    assert {f"figures/{e['audio']}" for e in entries} <= figs  # the audio, with the samples
    shown = check_page(out, entries, "listening_page_evaluate.png")
    assert [s["title"] for s in shown["samples"]] == [
        r if r == "Dataset" else f"{r}, threshold {float(THRESHOLD):g}" for r in rows]
    local = Path(client.download_artifacts(run.info.run_id, "table_i.md", str(tmp_path)))
    assert local.read_text() == (out / "table_i.md").read_text()

"""`propensity train` and `propensity evaluate` end to end on the real October and November
samples: real Spark batch, Feast point-in-time sets, LightGBM, the moto S3 model store."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from propensity import aws, lineage, model_store
from propensity.cloudwatch import RETRAIN_SUCCEEDED
from propensity.drift import PROFILE_FILE
from propensity.model import PropensityModel
from propensity.ops.cli import main
from propensity.ops.pipelines import files_data, lake_data, retrain_challenger
from propensity.ops.testing import isolated
from propensity.rollout import CANARY, Challenger
from propensity.samples import COSMETICS_NOVEMBER, COSMETICS_OCTOBER
from propensity.settings import Settings
from propensity.streaming.job import run as run_stream
from propensity.streaming.options import StreamOptions
from propensity.training.retrain import Retrain
from propensity.training.train import TrainResult, train
from tests.test_streaming import send

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(stack: Settings, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Settings, TrainResult, Path]:
    folder = tmp_path_factory.mktemp("training")
    settings = isolated(stack, folder)
    data = files_data(settings, COSMETICS_OCTOBER, COSMETICS_NOVEMBER, [])
    return settings, train(settings, data, folder / "report"), folder


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
        ) -> Callable[..., subprocess.CompletedProcess]:
    """`propensity ARGS` with the settings in the environment, run in this process (its
    Spark JVM is up and warm: a command in a new process spent 76 s of CPU on a JVM of its
    own); its exit code and output, as subprocess.run would give them."""

    def run(settings: Settings, *args: str) -> subprocess.CompletedProcess:
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["propensity", *args], code, out.out, out.err)

    return run


def test_train_on_october_beats_both_baselines_on_november(
        trained: tuple[Settings, TrainResult, Path]) -> None:
    settings, result, _ = trained
    summary = result.metrics
    model_auc = summary["validation"]["roc_auc"]
    for name, baseline in summary["baselines"].items():
        assert model_auc > baseline["roc_auc"], name
    assert summary["checks_passed"], summary["checks"]
    assert result.promoted and model_store.latest(settings) == result.version

    valid = summary["validation"]
    assert valid["points"] == 17_637 and valid["sessions"] == 5_050
    low, high = valid["roc_auc_ci95"]
    assert low < model_auc < high
    for key in ("pr_auc", "log_loss", "brier"):
        assert 0 < valid[key] < 1
    assert set(valid["at_threshold"]) == {"0.5", "0.7", "0.9"}
    assert set(valid["top"]) == {"5%", "10%"}
    assert {s["slice"] for s in summary["slices"]} == {"user", "cart", "hour band (UTC)"}
    assert summary["calibration"]["reliability_after_cross_fitted"]

    # Lineage: the code, the files' digests, the feature definitions, the libraries; stored
    # with the version and printed on its card.
    record = model_store.metadata_of(settings, result.version)["lineage"]
    assert record["code"] == {**lineage.git_identity(ROOT), "source": "git"}
    assert record["data"] == {"kind": "files", "files": {
        path.name: lineage.file_sha256(path) for path in (COSMETICS_OCTOBER,
                                                          COSMETICS_NOVEMBER)}}
    assert record["features_sha256"] == lineage.features_sha256()
    assert record["libraries"]["lightgbm"] == importlib.metadata.version("lightgbm")
    card = model_store.read_file(settings, result.version, "model_card.md").decode()
    assert "## Lineage" in card and record["features_sha256"] in card
    assert max(summary["mean_abs_shap"].values()) > 0


def test_the_version_holds_booster_features_calibration_metrics_card_and_plots(
        trained: tuple[Settings, TrainResult, Path], cli: Callable) -> None:
    settings, result, folder = trained
    stored = {name: model_store.read_file(settings, result.version, name)
              for name in ("model.txt", "model.json", "metrics.json", "model_card.md",
                           "roc.png", "pr.png", "calibration.png", "importance.png",
                           PROFILE_FILE)}
    assert all(data for data in stored.values()), [k for k, v in stored.items() if not v]
    assert all(stored[n].startswith(PNG) for n in stored if n.endswith(".png"))
    assert stored["model.txt"].startswith(b"tree")  # LightGBM's text format
    spec = json.loads(stored["model.json"])
    assert spec["calibration"]["method"] == "platt" and spec["columns"]
    card = stored["model_card.md"].decode()
    for heading in ("## Data", "## Validation metrics", "## Slices", "## Behavioural checks",
                    "## Limits"):
        assert heading in card
    assert (folder / "report" / "model_card.md").read_bytes() == stored["model_card.md"]
    # The training profile the monitor compares live rows with: the model's columns, from
    # every training point.
    profile = json.loads(stored[PROFILE_FILE])
    assert profile["columns"] == spec["columns"]
    assert profile["rows"] == result.metrics["rows"]["train"]

    listed = cli(settings, "model", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"* {result.version}" in listed.stdout
    status = cli(settings, "model", "status")
    assert status.returncode == 0, status.stderr[-2000:]
    commit = spec["metadata"]["lineage"]["code"]["commit"]
    assert f"champion (latest): {result.version}\n  code: {commit}" in status.stdout
    assert f"data: {COSMETICS_OCTOBER.name} sha256 " in status.stdout


def test_evaluate_scores_every_point_with_the_stored_model(
        trained: tuple[Settings, TrainResult, Path], cli: Callable) -> None:
    settings, result, folder = trained
    out = folder / "november-scores.csv"
    done = cli(settings, "evaluate", "--events", str(COSMETICS_NOVEMBER),
               "--predictions-out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["model_version"] == result.version
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["user_session", "event_time", "score"]
    assert len(predictions) == report["metrics"]["points"] == 17_637
    assert predictions["score"].between(0, 1).all()
    # The same points, features and model as training's validation: the same AUC.
    assert report["metrics"]["roc_auc"] == pytest.approx(result.metrics["validation"]["roc_auc"],
                                                         abs=1e-12)


def test_evaluate_reports_a_missing_model_or_version_in_one_line(
        stack: Settings, tmp_path: Path, trained: tuple[Settings, TrainResult, Path],
        cli: Callable) -> None:
    empty = isolated(stack, tmp_path)
    done = cli(empty, "evaluate", "--events", str(COSMETICS_NOVEMBER), "--predictions-out",
               str(tmp_path / "p.csv"))
    assert done.returncode == 2
    assert "no `latest` model" in done.stderr and "Traceback" not in done.stderr
    settings, _, _ = trained
    done = cli(settings, "model", "promote", "nope")
    assert done.returncode == 2 and "no model version 'nope'" in done.stderr
    assert isinstance(model_store.load(settings), PropensityModel)


def head(path: Path, rows: int, out: Path) -> Path:
    """The first `rows` events of a REES46 file (a smaller real sample)."""
    with gzip.open(path, "rt") as source, gzip.open(out, "wt") as sink:
        for _, line in zip(range(rows + 1), source, strict=False):
            sink.write(line)
    return out


def test_training_on_streamed_days_equals_training_on_the_files(
        stack: Settings, tmp_path: Path) -> None:
    october = head(COSMETICS_OCTOBER, 6000, tmp_path / "october.csv.gz")
    november = head(COSMETICS_NOVEMBER, 6000, tmp_path / "november.csv.gz")
    by_file = isolated(stack, tmp_path / "files")
    from_files = train(by_file, files_data(by_file, october, november, []),
                       tmp_path / "files-report", register=False)

    by_lake = isolated(stack, tmp_path / "lake")
    for path in (october, november):
        send(by_lake, path, events_per_record=20)
    run_stream(by_lake, StreamOptions(until_idle=True))
    data = lake_data(by_lake, (date(2019, 10, 1), date(2019, 10, 31)),
                     (date(2019, 11, 1), date(2019, 11, 30)))
    from_lake = train(by_lake, data, tmp_path / "lake-report")
    assert from_lake.promoted and model_store.latest(by_lake) == from_lake.version
    assert from_lake.metrics["trained_on"].startswith("lake 2019-10-01..2019-10-31")
    data_identity = from_lake.metrics["lineage"]["data"]
    assert data_identity["kind"] == "lake" and data_identity["last_day"] == "2019-11-30"
    assert data_identity["objects"] > 2  # the lake's and the archive's, each day
    for key in ("points", "positives", "sessions", "roc_auc", "pr_auc", "log_loss"):
        assert from_lake.metrics["validation"][key] == pytest.approx(
            from_files.metrics["validation"][key], rel=1e-9), key
    assert from_lake.metrics["rows"]["train"] == from_files.metrics["rows"]["train"]

    # Retraining on the same lake: refit on both days, a canary challenger, never the champion.
    by_lake = by_lake.model_copy(update={"metrics_namespace": f"Test{tmp_path.name[-12:]}"})
    retrained = retrain_challenger(by_lake, Retrain(days=40, valid_days=7, canary_share=0.1,
                                         out=tmp_path / "retrain"))
    listed = aws.client("cloudwatch", by_lake).list_metrics(
        Namespace=by_lake.metrics_namespace)["Metrics"]
    assert {m["MetricName"] for m in listed} >= {RETRAIN_SUCCEEDED}
    assert model_store.latest(by_lake) == from_lake.version  # the champion stays
    assert retrained.challenger == Challenger(retrained.version, CANARY, 0.1)
    assert model_store.rollout(by_lake).challenger == retrained.challenger
    assert "sessions started from 2019-10-26" in retrained.split  # November's day validates
    assert retrained.metrics["validation"]["points"] == from_lake.metrics["validation"]["points"]
    refit = retrained.metrics["refit"]
    assert refit["points"] == (from_lake.metrics["rows"]["train"]
                               + from_lake.metrics["rows"]["validation"])
    assert refit["trees"] == from_lake.metrics["params"]["trees"]  # the same settings chosen
    stored = model_store.load(by_lake, retrained.version)
    assert stored.booster.num_trees() == refit["trees"]
    assert stored.calibration.a == refit["calibration"]["a"]
    assert model_store.read_file(by_lake, retrained.version, PROFILE_FILE) is not None
    assert all(check["passed"] for check in retrained.metrics["checks"])

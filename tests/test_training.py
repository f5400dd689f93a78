"""`propensity train` and `propensity evaluate` end to end on the real October and November
samples: real Spark batch, Feast point-in-time sets, LightGBM, the moto S3 model store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from propensity import model_store
from propensity.model import PropensityModel
from propensity.settings import Settings
from propensity.testing import isolated
from tests.test_batch import OCTOBER
from training.train import TrainResult, train

NOVEMBER = OCTOBER.with_name("cosmetics-2019-11.csv.gz")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(stack: Settings, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Settings, TrainResult, Path]:
    folder = tmp_path_factory.mktemp("training")
    settings = isolated(stack, folder)
    return settings, train(settings, OCTOBER, NOVEMBER, [], folder / "report"), folder


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "propensity.cli", *args],
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=600)


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
    assert max(summary["mean_abs_shap"].values()) > 0


def test_the_version_holds_booster_features_calibration_metrics_card_and_plots(
        trained: tuple[Settings, TrainResult, Path]) -> None:
    settings, result, folder = trained
    stored = {name: model_store._get(settings, f"{result.version}/{name}")
              for name in ("model.txt", "model.json", "metrics.json", "model_card.md",
                           "roc.png", "pr.png", "calibration.png", "importance.png")}
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

    listed = cli(settings, "model", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"* {result.version}" in listed.stdout


def test_evaluate_scores_every_point_with_the_stored_model(
        trained: tuple[Settings, TrainResult, Path]) -> None:
    settings, result, folder = trained
    out = folder / "november-scores.csv"
    done = cli(settings, "evaluate", "--events", str(NOVEMBER), "--predictions-out", str(out),
               "--json")
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
        stack: Settings, tmp_path: Path, trained: tuple[Settings, TrainResult, Path]) -> None:
    empty = isolated(stack, tmp_path)
    done = cli(empty, "evaluate", "--events", str(NOVEMBER), "--predictions-out",
               str(tmp_path / "p.csv"))
    assert done.returncode == 2
    assert "no `latest` model" in done.stderr and "Traceback" not in done.stderr
    settings, _, _ = trained
    done = cli(settings, "model", "promote", "nope")
    assert done.returncode == 2 and "no model version 'nope'" in done.stderr
    assert isinstance(model_store.load(settings), PropensityModel)

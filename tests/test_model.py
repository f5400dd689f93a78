"""The model artifact, metrics, behavioural checks (which a broken model fails) and the model
store's registration gate, on real LightGBM and the moto S3 server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from propensity import events, model_store
from propensity import features as F
from propensity.model import (
    COLUMN_NAMES,
    PropensityModel,
    encode,
    encode_row,
    source_features,
)
from propensity.ops.testing import isolated
from propensity.rollout import CANARY, SHADOW, Challenger
from propensity.samples import COSMETICS_NOVEMBER, COSMETICS_OCTOBER
from propensity.settings import Settings
from propensity.training import checks, metrics
from propensity.training.dataset import LABEL, prediction_points, with_request_time_features
from propensity.training.train import fit_booster, fit_model


def points_without_history(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A file's valid events and its points, with the streaming fold's session features and
    no user or product history (batch features missing)."""
    valid = events.validate_file(path).valid
    snapshots = F.snapshots(valid)
    session_features = [*F.SESSION_FEATURE_NAMES, *F.SESSION_PRODUCT_FEATURE_NAMES]
    points = prediction_points(snapshots).merge(
        snapshots[["event_id", *session_features]], on="event_id", validate="one_to_one")
    batch = {f.name: np.nan for f in (*F.USER_FEATURES, *F.PRODUCT_FEATURES)}
    points = points.assign(**batch).assign(**{
        F.LAST_PURCHASE_AT.name: pd.Series(pd.NaT, index=points.index,
                                           dtype="datetime64[us, UTC]"),
        F.PREFERRED_PRODUCT_CATEGORY.name: None})
    return valid, with_request_time_features(points)


@pytest.fixture(scope="module")
def november() -> tuple[pd.DataFrame, pd.DataFrame]:
    return points_without_history(COSMETICS_NOVEMBER)


@pytest.fixture(scope="module")
def model(november: tuple[pd.DataFrame, pd.DataFrame]) -> PropensityModel:
    """Trained on October, early-stopped and calibrated on November."""
    _, points = november
    return fit_model(points_without_history(COSMETICS_OCTOBER)[1], points)[0]


def test_encoding_reads_each_feature_by_name_and_one_hots_categories() -> None:
    rows = {name: [None, None] for name in source_features()}
    rows.update(last_event_type=["cart", None], add_to_cart_count=[2, None],
                product_in_cart=[True, False])
    matrix = encode(rows)
    assert matrix.shape == (2, len(COLUMN_NAMES))
    column = {name: i for i, name in enumerate(COLUMN_NAMES)}
    assert matrix[0, column["last_event_type=cart"]] == 1.0
    assert matrix[0, column["last_event_type=view"]] == 0.0
    assert np.isnan(matrix[1, column["last_event_type=cart"]])  # unknown stays missing
    assert matrix[0, column["add_to_cart_count"]] == 2.0
    assert np.isnan(matrix[1, column["add_to_cart_count"]])
    assert list(matrix[:, column["product_in_cart"]]) == [1.0, 0.0]
    assert not {F.SESSION_ID, F.USER_ID, F.PRODUCT_ID} & set(source_features())


def test_the_scorers_row_encoding_equals_the_training_encoding(
        november: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, points = november
    rows = points.head(2000)
    one_by_one = np.vstack([encode_row(r) for r in rows.to_dict("records")])
    np.testing.assert_array_equal(one_by_one, encode(rows))


def test_model_files_round_trip_and_refuse_unknown_columns(
        model: PropensityModel, november: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, points = november
    loaded = PropensityModel.from_files(model.to_files())
    assert np.array_equal(loaded.predict(points), model.predict(points))
    files = model.to_files()
    files[PropensityModel.SPEC_FILE] = files[PropensityModel.SPEC_FILE].replace(
        b'"event_count"', b'"user_id"')
    with pytest.raises(ValueError, match="user_id"):
        PropensityModel.from_files(files)


def test_metrics_on_a_known_ranking() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.4])
    groups = np.array(["a", "a", "b", "b", "c", "d"])
    summary = metrics.summary(y, score, groups, resamples=200)
    assert summary["roc_auc"] == 1.0
    low, high = summary["roc_auc_ci95"]
    assert low <= 1.0 <= high + 1e-12
    assert summary["at_threshold"]["0.5"] == {"flagged": 2, "precision": 1.0, "recall": 2 / 3}
    assert summary["top"]["10%"]["flagged"] == 1
    rows = metrics.reliability(y, score, bins=2)
    assert [r["points"] for r in rows] == [4, 2]
    frame = pd.DataFrame({F.LIFETIME_SESSION_COUNT.name: [0, 0, 1, 1, 0, 0],
                          "add_to_cart_count": [0, 1, 1, 0, 1, 1],
                          "hour_of_day": [1, 1, 7, 7, 13, 20],
                          "device_type": [None] * 6})
    found = {(s["slice"], s["value"]): s for s in metrics.slices(frame, y, score)}
    assert ("device", "unknown") not in found  # no devices in the data: no device slice
    assert found[("user", "new")]["roc_auc"] == 1.0


def test_bootstrap_resamples_whole_sessions() -> None:
    # Two sessions of many identical points each: resampling points would give a tight
    # interval, resampling sessions shows how little two sessions say.
    y = np.r_[np.zeros(50), np.ones(50), np.zeros(50), np.ones(50)].astype(int)
    score = np.r_[np.full(50, 0.2), np.full(50, 0.8), np.full(50, 0.9), np.full(50, 0.1)]
    groups = np.repeat(["s1", "s2", "s3", "s4"], 50)
    low, high = metrics.bootstrap_auc(y, score, groups, resamples=300)
    assert low <= 0.25 and high >= 0.75


def test_a_resample_auc_equals_sklearns_on_the_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.2).astype(int)
    score = np.round(rng.random(2000) + 0.3 * y, 2)  # many ties
    weight = rng.integers(0, 4, 2000)
    levels, by_level = np.unique(score, return_inverse=True)
    pos = np.bincount(by_level, weights=weight * (y == 1), minlength=len(levels))
    neg = np.bincount(by_level, weights=weight * (y == 0), minlength=len(levels))
    rows = np.repeat(np.arange(2000), weight)
    assert metrics._weighted_auc(pos, neg) == pytest.approx(
        roc_auc_score(y[rows], score[rows]), abs=1e-12)
    assert metrics._weighted_auc(pos, np.zeros_like(neg)) is None


def test_behavioural_checks_pass_for_the_trained_model(
        model: PropensityModel, november: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    valid, points = november
    results = checks.run_checks(model, checks.probes(valid, points, sessions=150))
    assert [r.name for r in results] == ["ids", "cart", "price"]
    assert all(r.passed for r in results), [r.detail for r in results]


def test_a_model_that_reads_carts_backwards_fails_the_cart_check_and_is_not_promoted(
        stack: Settings, tmp_path: Path, model: PropensityModel,
        november: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    valid, points = november
    backwards = points.assign(**{LABEL: (points["add_to_cart_count"] == 0).astype(np.int8)})
    booster = fit_booster(backwards, backwards,
                          {"monotone_constraints": [0] * len(COLUMN_NAMES)})
    broken = PropensityModel(booster, COLUMN_NAMES)
    results = {r.name: r for r in checks.run_checks(broken, checks.probes(valid, points, 150))}
    assert not results["cart"].passed
    assert results["cart"].figures["lowered"] > 0
    assert results["ids"].passed

    settings = isolated(stack, tmp_path)
    good = model_store.register(settings, _files(model, 0.70, True), 0.70, True)
    assert good.promoted
    blocked = model_store.register(settings, _files(broken, 0.99, False), 0.99, False)
    assert not blocked.promoted and "checks failed" in blocked.reason
    assert model_store.latest(settings) == good.version
    with pytest.raises(model_store.ModelStoreError, match="failed its behavioural checks"):
        model_store.promote(settings, blocked.version)


def _files(model: PropensityModel, auc: float, passed: bool) -> dict[str, bytes]:
    model.metadata = {"validation": {"roc_auc": auc}, "checks_passed": passed,
                      "trained_on": "test"}
    return {**model.to_files(), "model_card.md": b"# card"}


def test_store_promotes_only_better_models_and_rolls_back(
        stack: Settings, tmp_path: Path, model: PropensityModel,
        november: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, points = november
    settings = isolated(stack, tmp_path)
    with pytest.raises(model_store.ModelStoreError, match="propensity train"):
        model_store.load(settings)
    with pytest.raises(model_store.ModelStoreError, match="nothing to roll back"):
        model_store.rollback(settings)

    first = model_store.register(settings, _files(model, 0.70, True), 0.70, True)
    worse = model_store.register(settings, _files(model, 0.69, True), 0.69, True)
    assert first.promoted and not worse.promoted
    assert "does not beat" in worse.reason
    better = model_store.register(settings, _files(model, 0.75, True), 0.75, True)
    assert better.promoted and model_store.latest(settings) == better.version
    assert len({first.version, worse.version, better.version}) == 3

    listed = model_store.list_versions(settings)
    assert [v.version for v in listed] == sorted([first.version, worse.version,
                                                   better.version])
    assert [v.is_latest for v in listed].count(True) == 1
    assert model_store.load(settings).version == better.version
    assert np.array_equal(model_store.load(settings).predict(points), model.predict(points))

    assert model_store.rollback(settings) == model_store.RolledBack(None, first.version)
    assert model_store.latest(settings) == first.version
    model_store.promote(settings, worse.version)  # by hand: any version that passed checks
    assert model_store.latest(settings) == worse.version
    assert model_store.rollback(settings).latest == first.version
    with pytest.raises(model_store.ModelStoreError, match="no model version"):
        model_store.promote(settings, "19990101T000000Z-00000000")


def test_a_challenger_runs_beside_the_champion_until_promoted_or_rolled_back(
        stack: Settings, tmp_path: Path, model: PropensityModel) -> None:
    settings = isolated(stack, tmp_path)
    with pytest.raises(model_store.ModelStoreError, match="no champion"):
        model_store.canary(settings, model_store.put_version(settings, _files(model, 0.5, True)),
                           0.05)
    champion = model_store.register(settings, _files(model, 0.70, True), 0.70, True).version
    challenger = model_store.register(settings, _files(model, 0.69, True), 0.69, True).version
    failed = model_store.register(settings, _files(model, 0.9, False), 0.9, False).version
    assert model_store.rollout(settings) == model_store.Rollout(champion, None)
    with pytest.raises(model_store.ModelStoreError, match="no challenger to promote"):
        model_store.promote(settings)
    with pytest.raises(model_store.ModelStoreError, match="failed its behavioural checks"):
        model_store.canary(settings, failed, 0.05)
    with pytest.raises(model_store.ModelStoreError, match="is the champion already"):
        model_store.shadow(settings, champion)
    with pytest.raises(model_store.ModelStoreError, match="use promote"):
        model_store.canary(settings, challenger, 1.0)

    assert model_store.canary(settings, challenger, 0.05) == Challenger(challenger, CANARY, 0.05)
    assert model_store.rollout(settings) == model_store.Rollout(
        champion, Challenger(challenger, CANARY, 0.05))
    model_store.canary(settings, challenger, 0.2)  # the canary grows
    listed = {v.version: v for v in model_store.list_versions(settings)}
    assert listed[challenger].challenger == Challenger(challenger, CANARY, 0.2)
    assert listed[champion].is_latest and listed[champion].challenger is None
    model_store.shadow(settings, challenger)
    assert model_store.rollout(settings).challenger == Challenger(challenger, SHADOW)

    assert model_store.rollback(settings) == model_store.RolledBack(challenger, champion)
    assert model_store.rollout(settings) == model_store.Rollout(champion, None)
    model_store.canary(settings, challenger, 0.05)
    assert model_store.promote(settings) == challenger
    assert model_store.rollout(settings) == model_store.Rollout(challenger, None)
    assert model_store.rollback(settings) == model_store.RolledBack(None, champion)


def test_versions_are_immutable(stack: Settings, tmp_path: Path,
                                model: PropensityModel) -> None:
    settings = isolated(stack, tmp_path)
    files = _files(model, 0.7, True)
    version = model_store.put_version(settings, files)
    assert version == model_store.new_version(files, _version_time(version))
    # The same booster in the same second names the same version: refused, not overwritten.
    with pytest.raises(model_store.ModelStoreError, match="immutable"):
        model_store.put_version(settings, {**files, "model_card.md": b"changed"}, version)
    assert model_store._get(settings, f"{version}/model_card.md") == b"# card"
    assert model_store.load(settings, version).columns == model.columns


def _version_time(version: str) -> datetime:
    return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

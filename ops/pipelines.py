"""The jobs in order, for the operator's commands: the daily batch over the days a training
set, an evaluation or a retraining needs (it is idempotent: running it again over a day rewrites
the same rows), then the training step on what it published. The jobs never call each other;
this layer does, and `propensity train|dataset|evaluate|retrain` and the demo run through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from propensity import model_store
from propensity.batch.job import run as run_batch
from propensity.batch.request import BatchRun
from propensity.lake import lake_days
from propensity.settings import Settings
from propensity.training import dataset, retrain, train
from propensity.training import evaluate as evaluation


def file_points(settings: Settings, files: list[Path], history: list[Path],
                spark: Any = None) -> list:
    """The batch over the days of `history` and `files` (imported into the lake), then each
    file's points with every feature and the file through the event contract."""
    run_batch(settings, BatchRun(imports=(*history, *files)), spark)
    return dataset.file_points(settings, files)


def files_data(settings: Settings, train_file: Path, valid_file: Path, history: list[Path]
               ) -> train.TrainingData:
    run_batch(settings, BatchRun(imports=(*history, train_file, valid_file)))
    return train.files_data(settings, train_file, valid_file, list(history))


def lake_data(settings: Settings, train_days: tuple[date, date],
              valid_days: tuple[date, date]) -> train.TrainingData:
    train.check_lake_days(train_days, valid_days)
    run_batch(settings, BatchRun(first=train_days[0], last=valid_days[1]))
    return train.lake_data(settings, train_days, valid_days)


@dataclass(frozen=True)
class DatasetRequest:
    """`propensity dataset`: the points of a REES46 file (`events`, with `history` files for
    the batch) or, without one, of the lake as the streaming job left it."""

    out: Path
    events: Path | None = None
    history: tuple[Path, ...] = ()


def build_dataset(settings: Settings, request: DatasetRequest) -> dataset.DatasetSummary:
    if request.events is None:
        return dataset.save(dataset.with_request_time_features(dataset.from_lake(settings)),
                            request.out)
    ((frame, checked),) = file_points(settings, [request.events], list(request.history))
    return dataset.save(frame, request.out, dict(checked.reason_counts()))


def evaluate(settings: Settings, events_file: Path, history: list[Path], version: str | None,
             predictions_out: Path) -> dict:
    model = model_store.load(settings, version)  # before any work: a missing model fails fast
    ((points, checked),) = file_points(settings, [events_file], history)
    return evaluation.evaluate(model, points, checked, events_file, history, predictions_out)


def retrain_challenger(settings: Settings, request: retrain.Retrain) -> retrain.RetrainResult:
    """The batch over the lake's newest `request.days` days, then a challenger from them."""
    days = retrain.window(lake_days(settings), request.days)
    run_batch(settings, BatchRun(first=days[0], last=days[1]))
    return retrain.retrain(settings, request, days)

"""A trained model's report: plots (ROC, PR, reliability, feature contributions) as PNG
bytes, and the model card (markdown) from the training summary."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure  # no pyplot: files only, no display or global state
from sklearn.metrics import precision_recall_curve, roc_curve

from propensity.lineage import lines as lineage_lines
from propensity.model import NOT_MODEL_INPUTS
from propensity.training import metrics


def _figure(width: float = 5, height: float = 5) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plots(y: np.ndarray, scores: dict[str, np.ndarray], before: np.ndarray,
          after: np.ndarray, importance: dict[str, float]) -> dict[str, bytes]:
    """roc.png, pr.png (every score), calibration.png (reliability of the model before and
    after calibration), importance.png (mean |SHAP| per column)."""
    out = {}
    figure, axis = _figure()
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(y, score)
        axis.plot(fpr, tpr, label=f"{name} (AUC {metrics.auc(y, score):.3f})")
    axis.plot([0, 1], [0, 1], "k:", lw=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, validation")
    axis.legend(loc="lower right", fontsize=8)
    out["roc.png"] = _png(figure)

    figure, axis = _figure()
    for name, score in scores.items():
        precision, recall, _ = precision_recall_curve(y, score)
        axis.plot(recall, precision, label=name)
    axis.axhline(y.mean(), color="k", ls=":", lw=0.8, label=f"base rate {y.mean():.3f}")
    axis.set(xlabel="recall", ylabel="precision", title="precision-recall, validation")
    axis.legend(fontsize=8)
    out["pr.png"] = _png(figure)

    figure, axis = _figure()
    for name, probability in (("before calibration", before),
                              ("after (cross-fitted)", after)):
        rows = metrics.reliability(y, probability)
        axis.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows],
                  "o-", label=name)
    axis.plot([0, 1], [0, 1], "k:", lw=0.8)
    axis.set(xlabel="mean predicted probability", ylabel="observed purchase rate",
             title="reliability, validation")
    axis.legend(fontsize=8)
    out["calibration.png"] = _png(figure)

    names = list(importance)[::-1]
    figure, axis = _figure(6, 0.28 * len(names) + 1)
    axis.barh(names, [importance[n] for n in names])
    axis.set(xlabel="mean |SHAP| (raw score)", title="feature contributions, validation")
    axis.tick_params(labelsize=7)
    out["importance.png"] = _png(figure)
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metric_rows(results: dict[str, dict]) -> list[str]:
    rows = ["| score | ROC AUC [95% CI] | PR AUC | log loss | Brier |", "|---|---|---|---|---|"]
    for name, m in results.items():
        ci = m["roc_auc_ci95"]
        interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        rows.append(f"| {name} | {_fmt(m['roc_auc'])}{interval} | {_fmt(m['pr_auc'])} | "
                    f"{_fmt(m.get('log_loss'))} | {_fmt(m.get('brier'))} |")
    return rows


def _operating_rows(m: dict) -> list[str]:
    rows = ["| operating point | flagged | precision | recall |", "|---|---|---|---|"]
    for threshold, v in m["at_threshold"].items():
        rows.append(f"| score >= {threshold} | {v['flagged']} | {_fmt(v['precision'])} | "
                    f"{_fmt(v['recall'])} |")
    for fraction, v in m["top"].items():
        rows.append(f"| top {fraction} | {v['flagged']} | {_fmt(v['precision'])} | "
                    f"{_fmt(v['recall'])} |")
    return rows


def model_card(summary: dict) -> str:
    valid = summary["validation"]
    lines = [
        "# Model card: purchase propensity (LightGBM)", "",
        "Predicts, at each event of a shopping session before its first purchase, the "
        "probability that the session ends with a purchase. Inputs: the session's features "
        "from the streaming fold, the product within the session, the user's and product's "
        "daily aggregates as of the previous day's end, and request-time recencies.", "",
        "## Data",
        f"- trained on {summary['trained_on']} ({summary['rows']['train']} points, positive "
        f"rate {summary['rows']['train_positive_rate']:.3f})",
        f"- validated on {summary['validated_on']} ({summary['rows']['validation']} points, "
        f"positive rate {summary['rows']['validation_positive_rate']:.3f}); early stopping "
        "and calibration used this month",
        f"- history for user and product features: {', '.join(summary['history']) or 'none'}",
        f"- rows that failed the event contract: {summary['rows']['invalid_rows']}", "",
        "## Validation metrics",
        "Probability metrics of the model use a calibration fitted on the other half of the "
        "validation sessions (cross-fitted); intervals: 1,000 bootstrap resamples of sessions.",
        "", *_metric_rows({"lightgbm": valid, **summary["baselines"]}), "",
        *_operating_rows(valid), "",
        "## Slices (ROC AUC; flagged: more than 10% below overall)", "",
        "| slice | value | points | positives | ROC AUC | flagged |", "|---|---|---|---|---|---|",
        *[f"| {s['slice']} | {s['value']} | {s['points']} | {s['positives']} | "
          f"{_fmt(s['roc_auc'])} | {'**yes**' if s['flagged'] else ''} |"
          for s in summary["slices"]], "",
        "## Behavioural checks", "",
        *[f"- {c['name']}: {'passed' if c['passed'] else '**failed**'}: {c['detail']}"
          for c in summary["checks"]], "",
        "## Feature contributions (mean |SHAP|, raw score)", "",
        *[f"- {name}: {value:.4f}" for name, value in summary["mean_abs_shap"].items()], "",
        "## Calibration",
        f"Platt scaling fitted on validation: a = {summary['calibration']['a']:.4f}, "
        f"b = {summary['calibration']['b']:.4f}. Plots: roc.png, pr.png, calibration.png, "
        "importance.png.", "",
        "## Lineage", "",
        *[f"- {line}" for line in lineage_lines(summary.get("lineage", {}))], "",
        "## Limits",
        "- Validation figures are optimistic: the validation month chose the number of trees "
        "and the calibration. A later month (`propensity evaluate`) is the honest test.",
        "- REES46 slices cover a few hours per month: sessions cut off by the end of a slice "
        "look like sessions without a purchase, and most users have little or no history.",
        "- Points are events: long sessions contribute many correlated points.",
        "- Not read by the model: " + "; ".join(f"{k} ({v})" for k, v in
                                                 NOT_MODEL_INPUTS.items()) + ".",
        "",
    ]
    return "\n".join(lines)

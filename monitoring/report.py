"""The monitor's daily report: markdown with plots (PNG bytes), and the text the command
prints. Plots: per model version and variant, the score's histogram live against training,
the reliability of the live scores, and the drifted features' histograms side by side (the
flagged ones with the largest PSI, at most six; else the three largest)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: files only, no display or global state

from propensity import drift

REPORT_FILE = "report.md"
PLOTTED_FEATURES = 6  # per version and variant: the flagged ones with the largest PSI


@dataclass
class DayReport:
    """A day's measured figures (live.py measures them; this module renders them)."""

    day: date
    quality: list[dict[str, Any]]  # a row per (model version, variant)
    drift: list[dict[str, Any]]  # a row per (model version, variant, feature or score)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _side_by_side(row: dict[str, Any], title: str) -> bytes:
    figure = Figure(figsize=(max(5.0, 0.6 * len(row["bins"])), 3.4))
    axis = figure.add_subplot()
    at = np.arange(len(row["bins"]))
    axis.bar(at - 0.2, row["training_shares"], 0.4, label="training")
    axis.bar(at + 0.2, row["live_shares"], 0.4, label="live")
    axis.set_xticks(at, row["bins"], rotation=35, ha="right", fontsize=7)
    axis.set(ylabel="share of rows", title=f"{title}: PSI {row['psi']:.3f}")
    axis.legend(fontsize=8)
    return _png(figure)


def _reliability(table: list[dict[str, Any]], title: str) -> bytes:
    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.add_subplot()
    axis.plot([0, 1], [0, 1], "k:", lw=0.8)
    axis.plot([r["mean_predicted"] for r in table], [r["observed_rate"] for r in table], "o-")
    axis.set(xlabel="mean predicted", ylabel="observed purchase rate", title=title)
    return _png(figure)


def _plotted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The features to plot (rows come largest PSI first): the flagged ones, else the first
    three, at most PLOTTED_FEATURES."""
    features = [r for r in rows if r["kind"] == "feature"]
    return ([r for r in features if r["flagged"]] or features[:3])[:PLOTTED_FEATURES]


def _name(*parts: str) -> str:
    return "-".join(p.replace("=", "_").replace("/", "_") for p in parts) + ".png"


def files(measured: DayReport) -> dict[str, bytes]:
    """report.md and its plots."""
    plots: dict[str, bytes] = {}
    lines = [f"# Live quality and drift, {measured.day}", "",
             "Predictions from the scorer's log, outcomes from the event lake (did the session "
             "purchase after the prediction). PSI: live against the version's training profile; "
             f"flags above {drift.FEATURE_PSI_FLAG} for a feature, {drift.SCORE_PSI_FLAG} for "
             "the score.", "", "## Quality", "", *_quality_table(measured.quality)]
    for row in measured.quality:
        version, variant = row["model_version"], row["variant"]
        mine = [r for r in measured.drift
                if (r["model_version"], r["variant"]) == (version, variant)]
        lines += ["", f"## {version} ({variant})", ""]
        table = json.loads(row["reliability"])
        if table:
            name = _name("calibration", version, variant)
            plots[name] = _reliability(table, f"reliability, {version} ({variant})")
            lines.append(f"![calibration]({name})")
        if not mine:
            lines.append("No training profile for this version: no drift figures.")
            continue
        score = next(r for r in mine if r["kind"] == "score")
        name = _name("score", version, variant)
        plots[name] = _side_by_side(score, f"score, {version} ({variant})")
        lines += [f"![score]({name})", "", "| feature | PSI | flagged |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['psi']:.3f} | {'**yes**' if r['flagged'] else ''} |"
                  for r in mine]
        for r in _plotted(mine):
            name = _name("drift", version, variant, r["name"])
            plots[name] = _side_by_side(r, r["name"])
            lines += ["", f"![{r['name']}]({name})"]
    return {REPORT_FILE: "\n".join(lines).encode() + b"\n", **plots}


def _cell(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


QUALITY_HEADER = ("version", "variant", "answers", "pos.rate", "ROC AUC", "valid.AUC", "PR AUC",
                  "ECE", "P@5%", "R@5%", "P@10%", "R@10%", "degraded")


def quality_cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (r["model_version"], r["variant"], str(r["points"]), _cell(r["positive_rate"]),
            _cell(r["roc_auc"]), _cell(r["validation_auc"]), _cell(r["pr_auc"]),
            _cell(r["ece"]), _cell(r["precision_top5"], 3), _cell(r["recall_top5"], 3),
            _cell(r["precision_top10"], 3), _cell(r["recall_top10"], 3),
            _cell(r["degraded_share"], 3))


def _quality_table(rows: list[dict[str, Any]]) -> list[str]:
    return ["| " + " | ".join(QUALITY_HEADER) + " |",
            "|" + "---|" * len(QUALITY_HEADER),
            *("| " + " | ".join(quality_cells(r)) + " |" for r in rows)]


def text(measured: DayReport) -> str:
    """What `propensity monitor --day` prints."""
    if not measured.quality:
        return f"no predictions logged on {measured.day}"
    lines = [f"live quality {measured.day}:", " | ".join(QUALITY_HEADER)]
    for r in measured.quality:
        alarm = "  ALARM: ROC AUC below 95% of validation" if r["below_validation"] else ""
        lines.append(" | ".join(quality_cells(r)) + alarm)
    for r in measured.quality:
        mine = [d for d in measured.drift
                if (d["model_version"], d["variant"]) == (r["model_version"], r["variant"])]
        if not mine:
            continue
        score = next(d for d in mine if d["kind"] == "score")
        flagged = [f"{d['name']} {d['psi']:.2f}" for d in mine
                   if d["kind"] == "feature" and d["flagged"]]
        lines.append(f"drift {r['model_version']} ({r['variant']}): score PSI "
                     f"{score['psi']:.3f}{' FLAGGED' if score['flagged'] else ''}; features "
                     f"above {drift.FEATURE_PSI_FLAG}: {', '.join(flagged) or 'none'}")
    return "\n".join(lines)

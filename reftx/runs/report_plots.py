"""The figures of ``reftx report`` (reftx.runs.report), headless matplotlib.

metrics.png: one panel per metric, each group's mean over seeds with its 95% interval as an error
bar (a group whose interval was refused, e.g. one seed, is drawn as a hollow point without a bar).
curves.png: each group's training loss by optimizer step from its runs' metrics.jsonl, the mean over
seeds with a 95% Student-t band at every step all its seeds logged (one seed: its line alone).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from reftx.runs import stats
from reftx.runs.compare import Report
from reftx.runs.gather import Group


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rep: Report, path: Path) -> Path | None:
    """metrics.png (see the module docstring); None when no group has a value."""
    metrics = [m for m in rep.metrics if any(rep.cells[g.label, m].est for g in rep.groups)]
    if not metrics:
        return None
    plt = _pyplot()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 0.5 + 0.35 * len(rep.groups) * rows + 1.2 * rows),
                             squeeze=False)
    labels = [g.label for g in rep.groups]
    for ax, m in zip(axes.flat, metrics):
        for y, g in enumerate(rep.groups):
            est = rep.cells[g.label, m].est
            if est is None:
                continue
            if est.low is None:
                ax.plot([est.mean], [y], "o", mfc="none", color="C0")
            else:
                ax.errorbar([est.mean], [y], xerr=[[est.mean - est.low], [est.high - est.mean]], fmt="o", color="C0",
                            capsize=3)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylim(-0.5, len(labels) - 0.5)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` from a run's metrics.jsonl (empty without one; unreadable lines skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("loss"), (int, float)):
            out[row["step"]] = float(row["loss"])
    return out


def band(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float] | None, list[float] | None]:
    """Steps every curve has, the mean loss there and its 95% t band (None for one curve)."""
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    ests = [stats.t_interval([c[s] for c in curves]) for s in steps]
    if len(curves) < 2:
        return steps, [e.mean for e in ests], None, None
    return steps, [e.mean for e in ests], [e.low for e in ests], [e.high for e in ests]


def plot_curves(groups: list[Group], path: Path) -> Path | None:
    """curves.png (see the module docstring); None when no run logged a loss."""
    series = [(g.label, [c for c in (losses(r.path) for r in g.runs) if c]) for g in groups]
    series = [(label, curves) for label, curves in series if curves]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, curves) in enumerate(series):
        steps, mean, low, high = band(curves)
        ax.plot(steps, mean, lw=1.5, color=f"C{i % 10}", label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if low is not None:
            ax.fill_between(steps, np.asarray(low), np.asarray(high), color=f"C{i % 10}", alpha=0.2, lw=0)
    ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss: mean over seeds, 95% band")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["band", "losses", "plot_curves", "plot_metrics"]

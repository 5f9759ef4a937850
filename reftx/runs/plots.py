"""A run's figures from its metrics.jsonl (headless matplotlib): loss.png (with the dev loss, when the
run evaluated during training), records.png (what
primitives logged: ``rec/<group key>/<name>``) and objective.png (what the objective logged:
``obj/<term>``, e.g. GRPO's reward and KL, NLFT's token weights, CARFT's similarities), one panel
per term because their scales differ. Per-step objective terms of sampling objectives are noisy
(each step sees a few questions); when the run spans several epochs, each panel also draws every
epoch's mean over its steps (dashed), a comparison over the same questions."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def plot_loss(run_dir: Path) -> Path | None:
    """Write the run's figures; returns loss.png (None when nothing was logged)."""
    every = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in every if "loss" in r]  # training rows; dev rows (train.eval_every) hold dev/* alone
    dev = [r for r in every if "dev/loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    recs = sorted({k for r in rows for k in r if k.startswith("rec/")})
    for name, lines in (("loss", {"training loss": [r["loss"] for r in rows]}),
                        ("records", {k[4:]: [r.get(k, math.nan) for r in rows] for k in recs})):
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, ys in lines.items():
            ax.plot(steps, ys, lw=1.5, label=label)
        if name == "loss" and dev:
            ax.plot([r["step"] for r in dev], [r["dev/loss"] for r in dev], "o-", lw=1.5, label="dev loss")
            ax.legend(fontsize=7)
        ax.set(xlabel="optimizer step", ylabel="training loss" if name == "loss" else "mean value",
               title=run_dir.name)
        if name == "records":
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / f"{name}.png", dpi=120)
        plt.close(fig)
    terms = sorted({k for r in rows for k in r if k.startswith("obj/")})
    if terms:
        epochs = [r.get("epoch", 0) for r in rows]
        _panels(plt, run_dir, steps, epochs, {k[4:]: [r.get(k, math.nan) for r in rows] for k in terms})
    return run_dir / "loss.png"


def epoch_means(epochs: list[int], ys: list[float]) -> list[float]:
    """Each row's epoch mean of ``ys`` (NaN values left out; NaN for an epoch without values)."""
    sums: dict[int, list[float]] = {}
    for e, y in zip(epochs, ys):
        if not math.isnan(y):
            sums.setdefault(e, []).append(y)
    return [sum(sums[e]) / len(sums[e]) if e in sums else math.nan for e in epochs]


def _panels(plt: Any, run_dir: Path, steps: list[int], epochs: list[int], series: dict[str, list[float]]) -> None:
    """objective.png: one small panel per logged objective term (and its epoch means, several epochs)."""
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (label, ys) in zip(axes.flat, series.items()):
        ax.plot(steps, ys, lw=1.2)
        if len(set(epochs)) > 1:
            ax.step(steps, epoch_means(epochs, ys), where="mid", ls="--", lw=1.2, color="black", label="epoch mean")
            ax.legend(fontsize=5)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(f"{run_dir.name}: objective terms", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "objective.png", dpi=120)
    plt.close(fig)

"""A run's figures: the epoch means drawn on objective.png, by hand, and the files written from a
hand-made metrics.jsonl."""
from __future__ import annotations

import json
import math

import pytest

from reftx.runs.plots import epoch_means, plot_loss


def test_epoch_means_by_hand():
    epochs = [0, 0, 0, 1, 1, 2]
    ys = [0.1, 0.5, math.nan, 0.4, 0.8, math.nan]  # NaN: a step that did not log the term
    out = epoch_means(epochs, ys)
    assert out[:5] == pytest.approx([0.3, 0.3, 0.3, 0.6, 0.6]) and math.isnan(out[5])


def test_figures_from_a_metrics_file(tmp_path):
    rows = [{"step": s, "epoch": s // 3, "loss": 1.0 / s, "obj/reward": 0.1 * s} for s in range(1, 7)]
    rows[2]["rec/L1.block_output/norm"] = 2.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss(tmp_path) == tmp_path / "loss.png"
    for name in ("loss.png", "records.png", "objective.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_loss(tmp_path) is None

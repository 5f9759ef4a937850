"""Synthetic run folders for the report tests (tests/unit/runs/test_report.py): what reftx run writes
(config.yaml, results.json, samples.jsonl with ids and per-example metrics, metrics.jsonl), with
numbers chosen so the statistics can be computed by hand."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

IDS = [f"e{i}" for i in range(10)]


def config(name: str, kind: str, seed: int, lr: float = 1e-3, n_eval: int = 10) -> dict[str, Any]:
    return {"schema": 1, "name": name, "seed": seed, "output_dir": "runs",
            "task": {"name": "persona", "n_train": None, "n_eval": n_eval, "eval_seed": 0, "options": {}},
            "interventions": [{"kind": kind, "rank": 4, "layers": [1]}],
            "train": {"lr": lr, "max_steps": 2}, "lora": None}


def write_run(folder: Path, cfg: dict[str, Any], per_example: dict[str, dict[str, Any]],
              metrics: dict[str, float] | None = None, aggregates: dict[str, str] | None = None,
              losses: list[float] | None = None, params: int = 520, wall: float = 10.0, cpu: float = 20.0) -> Path:
    """A finished run folder; ``metrics`` defaults to each per-example key's mean."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is None:
        keys = {k for row in per_example.values() for k in row}
        metrics = {k: sum(row[k] for row in per_example.values()) / len(per_example) for k in sorted(keys)}
    results = {"name": cfg["name"], "config_hash": "0" * 12, "metrics": metrics, "trainable_parameters": params,
               "train": {"steps": 2}, "wall_seconds": wall, "cpu_seconds": cpu}
    (folder / "results.json").write_text(json.dumps(results))
    rows = [{"id": i, "prompt": i, "gold": "", "after": "", "metrics": m, **({"aggregates": aggregates} if aggregates
                                                                              else {})} for i, m in per_example.items()]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if losses:
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s + 1, "loss": v}) + "\n"
                                                      for s, v in enumerate(losses)))
    return folder


def correct(n_right: int, key: str = "accuracy", ids: list[str] = IDS) -> dict[str, dict[str, float]]:
    """Per example: the first ``n_right`` examples right (1.0), the rest wrong."""
    return {i: {key: float(k < n_right)} for k, i in enumerate(ids)}

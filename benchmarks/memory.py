#!/usr/bin/env python
"""GPU memory each paper-size experiment needs per GPU, COMPUTED from parameter counts (not measured):
the table of README "Scaling up". Nothing is downloaded: each model's architecture is its published
config (reftx.models.hub.PUBLISHED when not cached), instantiated on the meta device to count its
parameters; the trained parameters are what ``reftx plan`` counts.

    python benchmarks/memory.py                      # every experiments/*/paper_*.yaml
    python benchmarks/memory.py EXP.yaml --gpus 1,2,8

Per process, at the experiment's batch split over the processes (``train.batch_size`` rows a step, or
twice that for objectives that pair a forget with a retain row) and every row at ``train.max_length``
tokens (an upper bound: shorter rows take less):

* base weights: parameters x 2 bytes (bf16), each process a full copy (DDP) or 1/N of it (FSDP, plus
  the two decoder layers it gathers at a time);
* trained parameters: x 16 bytes (fp32 weights, gradients and AdamW's two moments);
* activations with gradient checkpointing: every layer's input kept (tokens x hidden x 2 bytes x
  layers), one layer's activations recomputed at a time, and the logits (tokens x vocabulary x 10
  bytes: bf16 logits, their fp32 copy for the loss and its gradient);
* without checkpointing: every layer's activations kept.

One layer's activations, per token, in bf16: about 8 x hidden (norm inputs, q, k, v, attention and
o_proj outputs, residual) + 4 x intermediate (gate, up, the activation, their product), with
SDPA/flash attention (no tokens^2 matrix kept). Allocator fragmentation, CUDA context (~0.5 GiB) and
the evaluation's KV cache are not counted: leave 10-20% headroom.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]


def shape(exp) -> dict:
    """Parameter counts and sizes of the experiment's base and its trained parameters."""
    from transformers import AutoModelForCausalLM

    from reftx.recipes.registry import validate
    from reftx.recipes.train import model_config_of
    from reftx.train.objectives.common import OBJECTIVES

    cfg = model_config_of(exp)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(cfg)
    n_base = sum(p.numel() for p in base.parameters())
    layer = sum(p.numel() for p in base.model.layers[0].parameters())
    paired = bool(getattr(OBJECTIVES.get(exp.train.objective), "pairs_by", None))
    return {"base": n_base, "layer": layer, "trained": sum(g.params for g in validate(exp)),
            "rows": exp.train.batch_size * (2 if paired else 1), "tokens": exp.train.max_length,
            "d": cfg.hidden_size, "f": cfg.intermediate_size, "L": cfg.num_hidden_layers, "V": cfg.vocab_size}


def per_gpu(s: dict, n: int, fsdp: bool, checkpointing: bool) -> float:
    """GiB per GPU with ``n`` processes (see the module docstring for the terms)."""
    tokens = s["rows"] / n * s["tokens"]
    weights = 2 * (s["base"] / n + 2 * s["layer"] if fsdp else s["base"])
    trained = 16 * s["trained"]
    one_layer = tokens * (8 * s["d"] + 4 * s["f"]) * 2
    kept = tokens * s["d"] * 2 * s["L"] + one_layer if checkpointing else one_layer * s["L"]
    logits = tokens * s["V"] * 10
    return (weights + trained + kept + logits) / GIB


def table(paths: list[Path], gpus: list[int]) -> list[str]:
    from reftx.config.schema import load_experiment

    head = ["experiment", "base (params)", "trained", "rows x tokens a step", "weights bf16",
            *(f"{n} GPU{'s' * (n > 1)} DDP" for n in gpus), f"{gpus[-1]} GPUs FSDP", "1 GPU, no checkpointing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path in paths:
        exp = load_experiment(path)
        s = shape(exp)
        cells = [path.name, f"{exp.model.name} ({s['base'] / 1e9:.2f}B)", f"{s['trained'] / 1e6:.2f}M",
                 f"{s['rows']} x {s['tokens']}", f"{2 * s['base'] / GIB:.1f} GiB",
                 *(f"{per_gpu(s, n, False, True):.1f} GiB" for n in gpus),
                 f"{per_gpu(s, gpus[-1], True, True):.1f} GiB", f"{per_gpu(s, 1, False, False):.1f} GiB"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiments", nargs="*", help="experiment files (default: every experiments/*/paper_*.yaml)")
    ap.add_argument("--gpus", default="1,4,8", help="process counts for the DDP columns; the last one also for FSDP")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.experiments] or sorted(REPO.glob("experiments/*/paper_*.yaml"))
    print("\n".join(table(paths, [int(x) for x in args.gpus.split(",")])))


if __name__ == "__main__":
    sys.exit(main())

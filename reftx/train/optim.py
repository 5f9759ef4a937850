"""The AdamW that reftx's training builds (``reftx run``: reftx.train.run; benchmarks/overhead.py's reftx).

torch's default AdamW on CPU is a Python loop over the parameter tensors, a handful of small ops per
tensor: 64 LoReFT interventions hold 192 tensors, and that loop was a third of what a training step
cost above a hand-written floor with 3 stacked tensors (issue 28, benchmarks/README.md). The
multi-tensor (``foreach``) implementation runs the same update over all tensors of a device and
dtype at once; it is torch's own default on CUDA already. On CPU it gives the loop's result bit for
bit (tests/unit/train/test_optim.py), and its state dict is the loop's, so a checkpoint written by
either resumes under the other. (``fused=True`` is faster still on CPU, but rounds differently from
the loop by about one ulp per step, so it stays opt-in: pass ``fused=True``.)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adamw(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, lr, **options)`` with ``foreach=True`` unless ``options`` choose
    (``foreach=False`` for the per-tensor loop, ``fused=True``). ``params``: tensors or groups
    (``ReftModel.param_groups(weight_decay)``)."""
    if "fused" not in options or not options["fused"]:
        options.setdefault("foreach", True)
    return torch.optim.AdamW(params, lr=lr, **options)


__all__ = ["adamw"]

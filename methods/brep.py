"""BREP (Liang et al., 2025; METHODS.md §3): bias-restrained prefix ReFT.

The primitive is scale-and-bias with the PID bound on by default; the rest of the method is a
schedule and a data option, e.g. (experiments/methods/brep.yaml)::

    interventions:
      - kind: brep
        component: mlp_up                       # output of the MLP up-projection (intermediate width)
        layers: all
        positions: {generated: 8, prompt: true}  # every prompt token + the first 8 generated ones
        tie: positions                          # the same a, c on both
    train:
      prefix_fraction: 0.9                      # 90% of examples supervised on their first k answer tokens
      prefix_tokens: 64

For n = 0 generated tokens use ``positions: all_prompt``; for "always" use ``{generated: -1, prompt: true}``.
"""
from dataclasses import dataclass

import torch

from reftx.core.intervention import Context
from reftx.parts import Delta, DeltaConfig, register_primitive, scale_bias


@dataclass(frozen=True)
class BREPConfig(DeltaConfig):
    """DeltaConfig with BREP's defaults: ``bound: pid`` with τ = ``bound_tau`` = 1.0, the value METHODS
    gives for Llama-3-8B (the PID set point is 0.8·τ on the mean ||c||₂ over layers; retune τ for
    other models). Every other modifier (project, hinge, none, dropout, input gate) is available."""

    bound: str = "pid"
    bound_tau: float = 1.0


def record_restraint(delta: Delta, ctx: Context) -> None:
    """In training, record ‖c‖₂ (``bias_norm``) and, under the PID bound, the loss weight w
    (``pid_weight``) of every site, so the restraint is visible in metrics.jsonl
    (``rec/<group>/bias_norm``) and records.png."""
    if delta.training:
        ctx.record("bias_norm", torch.linalg.vector_norm(delta.bias().detach().float()))
        for m in delta.modifiers():
            w = m.scale()
            if w is not None:
                ctx.record("pid_weight", w.detach().float())


def _brep(config: BREPConfig, dim: int) -> dict:
    return {**scale_bias(config, dim), "on_forward": record_restraint}


register_primitive("brep", BREPConfig, _brep,
                   "y' = a ⊙ y + c (a = 1, c = 0 at init) with c restrained by a bound (PID by default).")

"""GRUN (Ren et al. 2025): gated representation unlearning, METHODS.md §4.

A recipe over shared parts: a LoReFT edit Δ(h) = Rᵀ(W h + b − R h) scaled by an input gate
that reads the same hidden state, ``h' = h + σ(g(h)) · Δ(h)`` (reftx/parts/input_gates.py), with the
gate trained by λ·BCE toward each example's ``gate_label`` (1 forget, 0 retain) so the edit fires
on the forget set only. The edit itself is trained by an unlearning objective (``train.objective``:
gd, idk, npo or rmu in reftx/train/objectives/common.py).

The schedule belongs in the experiment, as the paper's placement expressed as depth fractions:

    - kind: grun
      layers: [0.625, 0.78, 0.97]     # layers 20, 25, 31 of 32
      positions: last_prompt
      tie: none
"""
from __future__ import annotations

from dataclasses import dataclass

from reftx.core.errors import ConfigError
from reftx.parts import SubspaceConfig, register_primitive, subspace


@dataclass(frozen=True)
class GrunConfig(SubspaceConfig):
    """LoReFT's options with GRUN's defaults: rank 4, a linear gate (or mlp), gate loss λ = 10
    (the paper's TOFU value; it needs ``example_info["gate_label"]``, absent it adds nothing)."""

    rank: int = 4
    input_gate: str = "linear"
    gate_loss_weight: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        if self.input_gate == "none":
            raise ConfigError("input_gate", "GRUN needs an input gate (linear or mlp); without one it is loreft")


register_primitive("grun", GrunConfig, subspace(orthogonal=True, source="linear", subtract=True),
                   "h' = h + σ(g(h)) · Rᵀ(W h + b − R h); trains R, W, b and the gate g.")

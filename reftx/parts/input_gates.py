"""Input gates: one scalar σ(g(h)) per row that scales an edit (GRUN, METHODS.md §4).

``reftx.parts.compose.Delta`` builds one as ``INPUT_GATES.get(config.input_gate)(dim, config)`` and
computes ``h' = h + σ(g(h)) · Δ(h)``: the gate reads the same hidden state h (n, d) that the edit
changes and returns the multiplier (n, 1).

| name     | g(h)                                              |
|----------|---------------------------------------------------|
| `linear` | w·h + b (``nn.Linear(d, 1)``)                     |
| `mlp`    | d → 256 → 64 → 1 with ReLU between the layers     |

Initialisation: the last layer (the only one of ``linear``) starts at zero, so a fresh gate
outputs σ(0) = 0.5 for every input: a fresh GRUN is its edit at half strength, and the gate is
not saturated (σ' = 0.25), so it learns from the first step. The MLP's hidden layers keep torch's
default init (zeroing them would leave ReLU units with no gradient). The output bias is kept out
of weight decay (decay would drag every gate toward 0.5).

Logging and loss, per call (one call per site, i.e. per layer the intervention runs at):
* ``gate``: σ(g(h)) of every row; with ``example_info["gate_label"]`` also ``gate_forget`` and
  ``gate_retain`` (rows whose example has label 1 / 0), the mean gate per set.
* ``gate_bce`` (only when ``config.gate_loss_weight`` λ > 0 and the batch carries ``gate_label``):
  λ · mean over the site's rows of BCE(σ(g(h_i)), y_i), y_i = the label of row i's example
  (``ctx.batch_index``). The model sums the calls, so the loss is summed over sites (layers) and
  each site weighs its rows equally. Without ``gate_label`` (e.g. at generation) no loss is added.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from reftx.core.intervention import Context
from reftx.parts.compose import INPUT_GATES

GATE_LABEL = "gate_label"  # example_info key: 1 = forget example, 0 = retain example
MLP_WIDTHS = (256, 64)  # hidden widths of the `mlp` gate (GRUN's)


class InputGate(nn.Module):
    """σ(g(h)) with g = ``out(hidden(h))``; subclasses set ``hidden`` and ``out``."""

    no_decay = ("out.bias",)

    def __init__(self, hidden: nn.Module, out: nn.Linear, config: object):
        super().__init__()
        self.hidden = hidden
        self.out = out
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.loss_weight = float(getattr(config, "gate_loss_weight", 0.0))

    def logits(self, h: Tensor) -> Tensor:
        """g(h), shape (n, 1)."""
        return self.out(self.hidden(h))

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        """h (n, d) -> σ(g(h)) (n, 1); records the gate and adds the BCE gate loss."""
        z = self.logits(h)
        gate = z.sigmoid()
        ctx.record("gate", gate)
        labels = ctx.example_info.get(GATE_LABEL)
        if labels is not None:
            y = labels.to(device=z.device, dtype=z.dtype)[ctx.batch_index].unsqueeze(-1)  # (n, 1)
            forget = y > 0.5
            if forget.any():
                ctx.record("gate_forget", gate[forget])
            if (~forget).any():
                ctx.record("gate_retain", gate[~forget])
            if self.loss_weight > 0:
                bce = F.binary_cross_entropy_with_logits(z.float(), y.float())  # mean over rows
                ctx.add_loss("gate_bce", self.loss_weight * bce)
        return gate


@INPUT_GATES.register("linear")
class LinearGate(InputGate):
    """g(h) = w·h + b."""

    def __init__(self, dim: int, config: object):
        super().__init__(nn.Identity(), nn.Linear(dim, 1), config)


@INPUT_GATES.register("mlp")
class MLPGate(InputGate):
    """g(h) = W3 relu(W2 relu(W1 h + b1) + b2) + b3, widths d → 256 → 64 → 1."""

    def __init__(self, dim: int, config: object):
        a, b = MLP_WIDTHS
        hidden = nn.Sequential(nn.Linear(dim, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU())
        super().__init__(hidden, nn.Linear(b, 1), config)


__all__ = ["GATE_LABEL", "InputGate", "LinearGate", "MLPGate"]

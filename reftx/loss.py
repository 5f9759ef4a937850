"""The one composition of a training loss, and the modifiers' per-step work.

``ReftModel.forward``, every objective (reftx.objectives) and the knowledge-editing loop
(reftx.editing) build their loss with :func:`compose_loss` from the primitives' auxiliary and
parameter losses and loss scale (:func:`parameter_terms`), and run :func:`after_step` after each
optimizer step, so a modifier (a norm bound, BREP's PID weight) acts the same under every command.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .intervention import Intervention


def compose_loss(task: Tensor, aux: dict[str, Tensor], scale: Tensor | None) -> Tensor:
    """The one composition of a training loss: ``(task + Σ aux) · scale``.

    task: the objective's core term; aux: the primitives' auxiliary losses (already weighted:
    gate BCE, balance, locality) and parameter losses (hinge bounds); scale: the primitives' loss
    scale (BREP's PID weight) or None. ``ReftModel.forward``, every objective and the knowledge-
    editing loop all build their loss here."""
    total = task + sum(aux.values()) if aux else task
    return total * scale if scale is not None else total


def parameter_terms(mods: list[Intervention]) -> tuple[dict[str, Tensor], Tensor | None]:
    """The parameter losses (summed per key, e.g. ``bound_hinge``) and the loss scale (mean of the
    modules' scales, e.g. BREP's PID weight; None when no module scales) of ``mods``: what every
    training loop adds to, and multiplies into, its task loss."""
    losses: dict[str, list[Tensor]] = defaultdict(list)
    scales = []
    for mod in mods:
        for k, v in mod.parameter_losses().items():
            losses[k].append(v)
        s = mod.loss_scale()
        if s is not None:
            scales.append(s)
    scale = torch.stack(scales).mean() if scales else None
    return {k: torch.stack(v).sum() for k, v in losses.items()}, scale


def after_step(mods: list[Intervention]) -> None:
    """After an optimizer step: each module's own work (e.g. a norm projection), then group-level
    updates of shared modifiers (a bound class with ``after_step_all`` sees every (bound, bias)
    pair of ``mods`` at once, e.g. the PID controller)."""
    shared: dict[type, list] = defaultdict(list)
    for mod in mods:
        mod.after_optimizer_step()
        bound = getattr(mod, "bound", None)
        if bound is not None and hasattr(type(bound), "after_step_all"):
            shared[type(bound)].append((bound, mod.bias()))
    for cls, pairs in shared.items():
        cls.after_step_all(pairs)


__all__ = ["after_step", "compose_loss", "parameter_terms"]

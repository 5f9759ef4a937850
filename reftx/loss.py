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
    scales, e.g. BREP's PID weight; None when nothing scales) of ``mods``: each primitive's own
    ``parameter_losses``/``loss_scale`` and its modifiers' ``loss``/``scale`` (the modifier
    protocol of reftx.parts.Modifier); what every training loop adds to, and multiplies into,
    its task loss."""
    losses: dict[str, list[Tensor]] = defaultdict(list)
    scales = []
    for mod in mods:
        terms = [(mod.parameter_losses(), mod.loss_scale())] + [(m.loss(), m.scale()) for m in mod.modifiers()]
        for found, s in terms:
            for k, v in found.items():
                losses[k].append(v)
            if s is not None:
                scales.append(s)
    scale = torch.stack(scales).mean() if scales else None
    return {k: torch.stack(v).sum() for k, v in losses.items()}, scale


def after_step(mods: list[Intervention]) -> None:
    """After an optimizer step: each primitive's own work and its modifiers' ``after_step`` (e.g. a
    norm projection), then group-level updates: a modifier whose ``group`` class has
    ``after_step_all`` is updated with every other modifier of that class in ``mods`` at once
    (BREP's PID controller, which follows the mean bias norm over the sites)."""
    shared: dict[type, list] = defaultdict(list)
    for mod in mods:
        mod.after_optimizer_step()
        for m in mod.modifiers():
            m.after_step()
            if m.group is not None:
                shared[m.group].append((m.module, m.bias))
    for cls, pairs in shared.items():
        cls.after_step_all(pairs)


__all__ = ["after_step", "compose_loss", "parameter_terms"]

"""The one composition of a training loss.

An objective returns its core term; ``ReftModel.forward`` reports the primitives' auxiliary losses
(``out["aux_losses"]``: gate BCE, balance, locality, summed over sites) and composes nothing; the
primitives' modifiers (reftx.core.intervention.Modifier) carry the parameter losses (a hinge bound)
and the loss scale (BREP's PID weight). :func:`compose` adds them up, once, for the three drivers
that train: the run loop (reftx.train.run), the edit recipe (reftx.recipes.edit.engine, per slot)
and the TRL adapter (reftx.integrations.trl)::

    loss = (core + Σ aux + Σ parameter losses) · scale
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from reftx.core.intervention import Intervention


def parameter_terms(mods: Iterable[Intervention]) -> tuple[dict[str, Tensor], Tensor | None]:
    """The modifiers' parameter losses (summed per key, e.g. ``bound_hinge``) and their loss scale
    (the mean of the scales, e.g. BREP's PID weight; None when nothing scales) over ``mods``."""
    losses: dict[str, list[Tensor]] = defaultdict(list)
    scales = []
    for mod in mods:
        for m in mod.modifiers():
            for k, v in m.loss().items():
                losses[k].append(v)
            s = m.scale()
            if s is not None:
                scales.append(s)
    scale = torch.stack(scales).mean() if scales else None
    return {k: torch.stack(v).sum() for k, v in losses.items()}, scale


def compose(core: Tensor, aux: dict[str, Tensor] | None, mods: Iterable[Intervention]) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss ``(core + Σ aux + Σ parameter losses of mods' modifiers) · their scale``
    and the added terms by name (aux first, then the parameter losses; a parameter loss replaces an
    aux loss of the same name). core: the objective's term (a scalar); aux: what the forward
    reported (``out.get("aux_losses")``); mods: the interventions the loss trains."""
    params, scale = parameter_terms(mods)
    terms = dict(aux or {})
    terms.update(params)
    total = core + sum(terms.values()) if terms else core
    return (total * scale if scale is not None else total), terms


__all__ = ["compose", "parameter_terms"]

"""The KL reference of the RL objectives (``grpo``, ``carft``, ``ppo``): the policy where RL starts.

    train: {objective: ppo, objective_options: {kl_reference: start}}    # the default; or: base

``kl_reference: start`` (the default): the trained parameters as they are when the run starts
(after a ``sequential`` SFT warm-up, ``train.init_from``'s interventions: the SFT policy), frozen.
Luong et al. anchor PPO to the SFT checkpoint (github.com/lqtrung1998/mwp_ReFT, commit bdc844e,
``train_rl_reft.py`` lines 780-783 load ``ref_model_name_or_path``, which
``exps/paper_exps/ReFT/gsm8k.sh`` sets to the SFT checkpoint that ``model_name_or_path`` also
names), as DeepSeekMath anchors GRPO to its SFT model. The copy holds only the trained parameters
(the interventions, and any ``model.train_modules``), kept with the model as an extra
(``ReftModel.add_extra``): it is saved with every checkpoint and the run's ``intervention/`` folder
(``extras.safetensors``) and restored by ``--resume``, so a resumed run keeps the anchor it started
with. The reference pass runs the one model with those values in place of the live ones (each
parameter's ``.data`` pointed at its copy for that forward and back after it: no copy of any
weight, no version-counter bump that would upset a backward through an earlier forward, and a
primitive that reads its parameters by name, ``get_parameter``, sees them as parameters, which
``torch.func.functional_call`` does not give it): no second copy of the base.

``kl_reference: base``: the model with every intervention switched off (``ReftModel.disabled()``),
reftx's reference before issue 26; after a warm-up that is the pre-SFT base, so the KL pulls the
policy back past its own warm-up.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from reftx.core.errors import ConfigError
from reftx.engine.model import unwrap
from reftx.train.objectives.common import FIELD

ANCHOR = "kl_anchor"  # the extra (ReftModel.add_extra) holding the frozen copy


def _escaped(name: str) -> str:
    return name.replace(".", ":")  # a buffer name cannot hold dots


class Anchor(nn.Module):
    """Frozen copies of a model's policy parameters, as buffers named by each parameter's dotted
    name (dots written ``:``); ``tensors()`` gives them back by that name."""

    def __init__(self, params: dict[str, Tensor]):
        super().__init__()
        for name, p in params.items():
            self.register_buffer(_escaped(name), p.detach().clone())

    def tensors(self) -> dict[str, Tensor]:
        return {name.replace(":", "."): t for name, t in self.named_buffers()}


def policy_parameters(reft: Any) -> dict[str, Tensor]:
    """The parameters that define the policy: every trainable one except the extras' (a value head
    does not change what the model generates)."""
    return {n: p for n, p in reft.named_parameters() if p.requires_grad and not n.startswith("extras.")}


def prepare_anchor(model: Any, kind: str) -> Anchor | None:
    """The model's anchor (``kind`` start), captured from its parameters now when it has none yet;
    None for ``kind`` base. The runner calls it before the first step (and before ``--resume`` loads
    the saved one); a direct call of an objective captures it on its first call."""
    if kind == "base":
        return None
    reft = unwrap(model)
    if not hasattr(reft, "add_extra"):
        raise ConfigError(f"{FIELD}.kl_reference", f"start keeps a frozen copy of the trained parameters with the "
                                                   f"run's checkpoints, which {type(reft).__name__} (a lora: section) "
                                                   "cannot carry: set kl_reference: base")
    if ANCHOR not in reft.extras:
        reft.add_extra(ANCHOR, Anchor(policy_parameters(reft)))
    return reft.extras[ANCHOR]


@contextmanager
def using(reft: Any, tensors: dict[str, Tensor]) -> Iterator[None]:
    """Within the block, ``reft``'s parameters named in ``tensors`` hold those values (no gradient
    may flow through them there); the live values are back when it ends, also after an error."""
    params = dict(reft.named_parameters())
    live: dict[str, Tensor] = {}
    try:
        for name, t in tensors.items():
            live[name] = params[name].data
            params[name].data = t
        yield
    finally:
        for name, data in live.items():
            params[name].data = data


def reference(model: Any, kind: str) -> Callable[..., Any]:
    """A callable with the model's forward signature (keyword arguments) that runs the reference
    policy without gradient: the anchor's parameters in place of the live ones (start), or the model
    with its interventions off (base)."""
    reft = unwrap(model)
    if kind == "base":
        def run_base(**inputs: Any) -> Any:
            with torch.no_grad(), reft.disabled():
                return reft(**inputs)

        return run_base
    params = prepare_anchor(reft, kind).tensors()

    def run_anchor(**inputs: Any) -> Any:
        with torch.no_grad(), using(reft, params):
            return reft(**inputs)

    return run_anchor


__all__ = ["ANCHOR", "Anchor", "policy_parameters", "prepare_anchor", "reference", "using"]

"""Magnitude bounds on an edit's bias c: modifiers any ``Delta`` primitive accepts (``bound:``).

Every edit that exposes a ``bias()`` (scale-and-bias: the shift c; the LoReFT family: the
source bias b) can be restrained, selected by ``DeltaConfig.bound`` with ``bound_tau`` = τ and
``bound_lambda`` = λ:

| bound     | what it does                                                             | acts through       |
|-----------|--------------------------------------------------------------------------|--------------------|
| `project` | after each optimizer step, ``c ← c · min(1, τ / ||c||)``                  | ``after_step``     |
| `hinge`   | adds the parameter loss ``λ · max(0, ||c|| − τ)²`` (key ``bound_hinge``) | ``loss``           |
| `pid`     | multiplies the whole loss by a weight w that a PID controller adjusts    | ``loss_scale``     |

``||·||`` is the Euclidean norm of the whole bias vector of one intervention module.

The PID controller is the one of BREP's reference code (METHODS.md §3); its state is shared by
every PID-bounded module of a model (see ``PIDBound``). AdamW is nearly invariant to the scale
of the loss, so the PID weight mostly acts through Adam's ε, gradient clipping and the balance
with decoupled weight decay; ``project`` and ``hinge`` are the hard alternatives.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reftx.parts.compose import BOUNDS


def _norm(bias: Tensor) -> Tensor:
    """||c||₂ in float32 (a scalar tensor)."""
    return torch.linalg.vector_norm(bias.float())


class ProjectBound(nn.Module):
    """Norm projection: after each optimizer step ``c ← c · min(1, τ / ||c||)`` (in place)."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = float(tau)


    def loss(self, bias: Tensor) -> dict[str, Tensor]:
        return {}

    def loss_scale(self) -> Tensor | None:
        return None

    @torch.no_grad()
    def after_step(self, bias: Tensor) -> None:
        norm = float(_norm(bias))
        if norm > self.tau:
            bias.mul_(self.tau / norm)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class HingeBound(nn.Module):
    """Hinge penalty ``λ · max(0, ||c|| − τ)²``, returned as the parameter loss ``bound_hinge``
    (reftx.train.loss.compose adds it to the training loss once per step, summed over modules)."""

    def __init__(self, tau: float, lam: float):
        super().__init__()
        self.tau, self.lam = float(tau), float(lam)


    def loss(self, bias: Tensor) -> dict[str, Tensor]:
        return {"bound_hinge": self.lam * torch.relu(_norm(bias) - self.tau) ** 2}

    def loss_scale(self) -> Tensor | None:
        return None

    def after_step(self, bias: Tensor) -> None:
        pass

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lam={self.lam}"


@dataclass(frozen=True)
class PIDConstants:
    """The constants of BREP's reference PID controller (not YAML options: the paper's values)."""

    every: int = 4  # update the weight every this many optimizer steps
    target: float = 0.8  # set point = target · τ
    kp: float = 0.1  # proportional gain
    ki: float = 1e-4  # integral gain
    kd: float = 0.01  # derivative gain
    gain: float = 5.0  # w ← w · (1 + gain · adj)
    w0: float = 0.1  # initial weight
    w_min: float = 1e-5  # clip range of w
    w_max: float = 0.1


PID_DEFAULTS = PIDConstants()


class PIDBound(nn.Module):
    """BREP's loss multiplier: ``loss ← w · loss``, w adjusted by a PID controller on ||c||.

    The update runs in ``after_step_all`` (called by ``ReftModel.after_optimizer_step`` once per
    optimizer step with every PID bound of the model, so the state is shared across layers;
    bounds with different τ form separate controllers). With ``K = constants``:

    * every call counts one optimizer step: ``steps ← steps + 1``;
    * only when ``steps % K.every == 0`` (steps 4, 8, 12, ...) the controller updates:
        ``e      = K.target · τ − mean over the modules of ||c||₂`` (norms after the step)
        ``Σe    ← Σe + e``            (the integral accumulates only at these update steps,
                                        and includes the current e)
        ``adj    = K.kp · e + K.ki · Σe + K.kd · (e − e_prev)``
        ``w     ← clip(w · (1 + K.gain · adj), K.w_min, K.w_max)``
        ``e_prev ← e``
      where e_prev is the error of the previous update, and 0 at the first update (so the first
      derivative term is K.kd · e).
    * ``loss_scale()`` is w (w₀ = K.w0) in training mode and None in eval mode, so evaluation
      losses are not rescaled.

    The state (steps, w, Σe, e_prev) lives in buffers, saved with the intervention weights in
    safetensors, so a checkpointed run resumes the controller exactly. The buffers stay float32
    even when the intervention is cast to bf16/fp16 (``_apply`` keeps their dtype), so small
    adjustments of w are not rounded away. Every module holds the same copy of the state.
    """

    def __init__(self, tau: float, constants: PIDConstants = PID_DEFAULTS):
        super().__init__()
        self.tau = float(tau)
        self.constants = constants
        self.register_buffer("pid_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("pid_weight", torch.tensor(constants.w0, dtype=torch.float32))
        self.register_buffer("pid_integral", torch.zeros((), dtype=torch.float32))
        self.register_buffer("pid_prev_error", torch.zeros((), dtype=torch.float32))

    def _apply(self, fn: Any, recurse: bool = True) -> PIDBound:
        """Follow device moves but keep the controller state in its own dtype."""
        saved = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in saved.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def loss(self, bias: Tensor) -> dict[str, Tensor]:
        return {}

    def loss_scale(self) -> Tensor | None:
        return self.pid_weight if self.training else None

    def after_step(self, bias: Tensor) -> None:
        pass  # the shared update is in after_step_all

    @classmethod
    @torch.no_grad()
    def after_step_all(cls, pairs: list[tuple[PIDBound, Tensor]]) -> None:
        """One optimizer step for every (bound, bias) pair of a model; see the class docstring."""
        controllers: dict[tuple, list[tuple[PIDBound, Tensor]]] = defaultdict(list)
        for bound, bias in pairs:
            controllers[(bound.tau, bound.constants)].append((bound, bias))
        for (tau, k), group in controllers.items():
            lead = group[0][0]
            steps = int(lead.pid_steps) + 1
            state = {"pid_steps": steps}
            if steps % k.every == 0:
                norm = sum(float(_norm(bias)) for _, bias in group) / len(group)
                e = k.target * tau - norm
                integral = float(lead.pid_integral) + e
                adj = k.kp * e + k.ki * integral + k.kd * (e - float(lead.pid_prev_error))
                w = min(max(float(lead.pid_weight) * (1.0 + k.gain * adj), k.w_min), k.w_max)
                state.update(pid_weight=w, pid_integral=integral, pid_prev_error=e)
            for bound, _ in group:
                for name, value in state.items():
                    getattr(bound, name).fill_(value)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, weight={float(self.pid_weight):.3g}"


# BOUNDS factories: the edit's config -> a bound module
@BOUNDS.register("project")
def _project(config: Any) -> ProjectBound:
    return ProjectBound(config.bound_tau)


@BOUNDS.register("hinge")
def _hinge(config: Any) -> HingeBound:
    return HingeBound(config.bound_tau, config.bound_lambda)


@BOUNDS.register("pid")
def _pid(config: Any) -> PIDBound:
    return PIDBound(config.bound_tau)


__all__ = ["HingeBound", "PIDBound", "PIDConstants", "PID_DEFAULTS", "ProjectBound"]

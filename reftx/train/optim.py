"""The AdamW that reftx's training builds (``reftx run``: reftx.train.run; benchmarks/overhead.py's reftx).

torch's default AdamW on CPU is a Python loop over the parameter tensors, a handful of small ops per
tensor: 64 LoReFT interventions hold 192 tensors, and that loop was a third of what a training step
cost above a hand-written floor with 3 stacked tensors (issue 28, benchmarks/README.md). torch's
multi-tensor (``foreach``) update still runs every op once per tensor on CPU (and reads each
tensor's step count back), and ``fused=True`` rounds differently from the loop (about one ulp a
step). So reftx's AdamW keeps each parameter group's moments in **one flat tensor** (each
parameter's ``exp_avg`` / ``exp_avg_sq`` / ``step`` in its state is a view into it) and runs torch's
own per-tensor update (``torch.optim.adam.adam``, as ``AdamW.step`` calls it) once on the whole
group: the gradients concatenated, and the parameters updated in place in one flat tensor, which
their data are views of from the group's first step on (a parameter subclass, such as FSDP's
``FlatParameter``, keeps its own data: its group is concatenated, updated and copied back). Elementwise ops give
each element what they give it in a tensor of its own, so the result is the loop's bit for bit
(tests/unit/train/test_optim.py), and the state dict is the loop's, so a checkpoint written by
either resumes under the other.

A group takes the flat path when every parameter has a dense gradient, all share a dtype and
device and are contiguous, and the options are the plain ones (no amsgrad, capturable,
differentiable, fused or tensor lr); otherwise, and whenever its step counts differ (a step where
some gradients were missing), that group runs torch's own step (foreach), on the same state.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.optimizer import _get_scalar_dtype

flatten, unflatten = torch._C._nn.flatten_dense_tensors, torch._C._nn.unflatten_dense_tensors  # views, in C++


class _Flat:
    """One parameter group's moments as flat tensors; each parameter's state holds views into them."""

    def __init__(self, group: dict, state: dict, step: float, m: Tensor, v: Tensor):
        self.group_params, self.state = group["params"], state
        self.params = list(group["params"])
        self.sizes = [p.numel() for p in self.params]
        # Plain parameters move into one flat tensor (each parameter's data a view of it), so the update
        # runs on them in place; a subclass (FSDP's FlatParameter) may re-point its own data, so its
        # group is concatenated and copied back each step instead.
        self.owned = all(type(p) is torch.nn.Parameter for p in self.params)
        if self.owned:
            self.flat = flatten([p.detach() for p in self.params])
            with torch.no_grad():
                for p, view in zip(self.params, unflatten(self.flat, self.params)):
                    p.data = view
        self.views = [p.view(-1) for p in self.params]
        self.ptrs = [p.data_ptr() for p in self.params]  # the views hold while these do
        self.m, self.v = m, v
        self.step = torch.tensor(step, dtype=_get_scalar_dtype())
        self.steps = torch.full((len(self.params),), step, dtype=_get_scalar_dtype())
        for i, (p, mi, vi) in enumerate(zip(self.params, unflatten(m, self.params), unflatten(v, self.params))):
            state[p] = {"step": self.steps[i], "exp_avg": mi, "exp_avg_sq": vi}

    def run(self, group: dict, state: dict, opt: torch.optim.Optimizer) -> bool:
        """torch's per-tensor AdamW update, once, on the whole group; False (nothing done) when this
        record no longer describes the group: a parameter without gradient, the parameters replaced,
        moved or cast, the state replaced (``load_state_dict``)."""
        if (state is not self.state or group["params"] is not self.group_params
                or len(self.group_params) != len(self.params) or not _plain(group, opt)):
            return False
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads) or [p.data_ptr() for p in self.params] != self.ptrs:
            return False
        flat_p, flat_g = self.flat if self.owned else torch.cat(self.views), flatten(grads)
        if flat_p.dtype != self.m.dtype or flat_p.device != self.m.device or flat_g.dtype != flat_p.dtype:
            return False
        beta1, beta2 = group["betas"]
        adam([flat_p], [flat_g], [self.m], [self.v], [], [self.step], foreach=False, amsgrad=False,
             has_complex=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
             eps=group["eps"], maximize=group["maximize"], capturable=False, differentiable=False, fused=None,
             decoupled_weight_decay=group["decoupled_weight_decay"])
        if not self.owned:
            torch._foreach_copy_(self.views, list(flat_p.split(self.sizes)))
        self.steps.fill_(self.step)
        return True


class FlatAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (``foreach`` by default) whose update of a parameter group runs on the
    group as one flat tensor where it can (see the module docstring): the loop's result, bit for bit."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **options: Any):
        options.setdefault("foreach", None if options.get("fused") else True)
        super().__init__(params, lr=lr, **options)
        self._flat: dict[int, _Flat] = {}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            flat = self._flat.get(i)
            if flat is None or not flat.run(group, self.state, self):
                flat = self._flat[i] = _build(group, self.state, self)
                if flat is None or not flat.run(group, self.state, self):
                    self._flat.pop(i, None)
                    _torch_step(self, group)
        return loss


def _plain(group: dict, opt: torch.optim.Optimizer) -> bool:
    return not (group["amsgrad"] or group["capturable"] or group["differentiable"] or group["fused"]
                or torch.is_tensor(group["lr"]) or getattr(opt, "grad_scale", None) is not None
                or getattr(opt, "found_inf", None) is not None)


def _build(group: dict, state: dict, opt: torch.optim.Optimizer) -> _Flat | None:
    """A flat record for ``group``, its current state (fresh, or any with one step count) moved into
    flat tensors; None when the group cannot take the flat path this step."""
    params = group["params"]
    if not params or not _plain(group, opt):
        return None
    p0 = params[0]
    for p in params:
        if (p.grad is None or p.grad.is_sparse or torch.is_complex(p) or not p.is_contiguous()
                or type(p.data) is not Tensor or p.dtype != p0.dtype or p.device != p0.device):
            return None
    old = [state.get(p) for p in params]
    zeros = lambda: torch.zeros(sum(p.numel() for p in params), dtype=p0.dtype, device=p0.device)  # noqa: E731
    if not any(old):
        return _Flat(group, state, 0.0, zeros(), zeros())
    if not all(s and {"step", "exp_avg", "exp_avg_sq"} == set(s) for s in old):
        return None
    steps = {float(s["step"]) for s in old}
    if len(steps) != 1 or any(s["step"].device.type != "cpu" for s in old):
        return None
    m = flatten([s["exp_avg"].to(p0) for s in old])
    v = flatten([s["exp_avg_sq"].to(p0) for s in old])
    return _Flat(group, state, steps.pop(), m, v)


def _torch_step(opt: torch.optim.AdamW, group: dict) -> None:
    """One group's step exactly as ``torch.optim.AdamW.step`` runs it."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
    has_complex = opt._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    beta1, beta2 = group["betas"]
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad=group["amsgrad"],
         has_complex=has_complex, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
         eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"], capturable=group["capturable"],
         differentiable=group["differentiable"], fused=group["fused"], grad_scale=getattr(opt, "grad_scale", None),
         found_inf=getattr(opt, "found_inf", None), decoupled_weight_decay=group["decoupled_weight_decay"])


def adamw(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.AdamW:
    """reftx's AdamW: :class:`FlatAdamW` (``foreach=True`` for groups off the flat path) unless
    ``options`` choose another implementation (``fused=True``: torch's fused AdamW; ``foreach=False``:
    the per-tensor loop as the fallback). ``params``: tensors or groups
    (``ReftModel.param_groups(weight_decay)``)."""
    if options.get("fused"):
        return torch.optim.AdamW(params, lr=lr, **options)
    return FlatAdamW(params, lr=lr, **options)


__all__ = ["FlatAdamW", "adamw"]

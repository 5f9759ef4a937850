"""The reward policy of every trainer that samples and scores: reftx's ``grpo`` and ``carft``
objectives (the task's ``Task.reward``) and TRL's ``GRPOTrainer`` through reftx.integrations.trl
(its reward functions).

A reward function gives one reward per completion, in the order given. Each reward is a real
number (int, float, bool, a numpy or one-element torch scalar) and finite. Anything else stops
training with :class:`BadReward` before the step it belongs to is applied, so nothing from it is
saved; the message names the step, the reward function (the task, or the function's ``__name__``),
the completion (its index, and a short repr of its prompt and text) and the fix. Why: a NaN reward
makes the group's advantages NaN, which TRL then zeroes (``nan_to_num``), so a run that only ever
sees NaN rewards ends with exit 0, loss 0 and the weights it started with.

None: TRL lets a reward function return None for a completion it does not apply to (trl 1.16
``GRPOTrainer._calculate_rewards`` turns it into NaN, and the weighted sum over reward functions
skips it), so a TRL reward function may return None; a completion that *no* reward function
scores stops training (TRL only warns and gives it advantage 0). A task's reward may not be None.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from torch import Tensor

from reftx.train.loop import NonFiniteLoss


class BadReward(NonFiniteLoss):
    """A reward was not one finite number per completion (NaN, inf, a wrong type, a wrong count);
    training stopped before the step it belongs to was applied."""


STOPPED = "stopped before applying it"


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for error messages)."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _number(v: Any) -> float | None:
    """``v`` as a float when it is one real number, else None."""
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, Tensor) and v.numel() == 1 and not v.is_complex():
        return float(v)
    return None


def checked_rewards(values: Any, n: int, who: str, sample: Callable[[int], str], *, none_ok: bool = False,
                    step: int | None = None) -> list[float | None]:
    """``values`` (what ``who`` returned for ``n`` completions: a list, tuple or 1-D tensor/array)
    as ``n`` floats (None kept where ``none_ok``), or :class:`BadReward` naming the step (when
    given), ``who``, the completion (``sample(i)``: a short description of completion i) and the fix."""
    at = f"step {step}: " if step is not None else ""
    fix = "return one finite number per completion, in the order given" + (
        " (None where the function does not apply)" if none_ok else "")
    if hasattr(values, "tolist") and getattr(values, "ndim", 1) == 1:
        values = values.tolist()  # a 1-D tensor or array: its numbers
    if not isinstance(values, (list, tuple)):
        raise BadReward(f"{at}{who} returned {short(values)} ({type(values).__name__}) for {n} completions, not "
                        f"a list; {fix}; {STOPPED}.")
    if len(values) != n:
        raise BadReward(f"{at}{who} returned {len(values)} rewards for {n} completions; {fix}; {STOPPED}.")
    out: list[float | None] = []
    for i, v in enumerate(values):
        x = None if v is None and none_ok else _number(v)
        if x is None and not (v is None and none_ok):
            raise BadReward(f"{at}{who} returned {short(v)} ({type(v).__name__}) for completion {i} of {n} "
                            f"({sample(i)}), not a number; {fix}; {STOPPED}.")
        if x is not None and not math.isfinite(x):
            raise BadReward(f"{at}{who} returned {x} for completion {i} of {n} ({sample(i)}); {fix}; {STOPPED}.")
        out.append(x)
    return out


__all__ = ["BadReward", "checked_rewards", "short"]

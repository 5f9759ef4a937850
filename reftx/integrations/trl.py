"""Train reftx interventions with TRL's trainers (or any ``transformers.Trainer``).

    from trl import SFTConfig
    from reftx.integrations.trl import ReftSFTTrainer           # also ReftDPOTrainer, ReftGRPOTrainer
    reft = reftx.attach(base, [{"kind": "loreft", "rank": 4, "layers": [3],
                                "positions": {"first": 2, "last": 2}}])
    trainer = ReftSFTTrainer(reft, args=SFTConfig(...), train_dataset=ds, processing_class=tok)
    trainer.train()
    reft.save_pretrained("my-edit")

``reft_trainer(cls)`` makes the same adapter for any other trainer class. What it does, piece by
piece (read against trl 1.16: ``trainer/sft_trainer.py`` ``compute_loss``, ``dpo_trainer.py``
``_compute_loss``, ``grpo_trainer.py`` ``_get_per_token_logps_and_entropies``):

* The trainer gets the base model, carrying the interventions (``ReftModel.carry``): only their
  parameters train (the base is frozen; a test checks it bit for bit), with reftx's optimizer groups
  (orthonormal bases skip weight decay) and the trainer's optimizer class and learning rate.
* Prompt positions sit on TRL's prompt. TRL scores every sequence through its fused LM head with
  labels that are -100 on the prompt (SFT's prompt-completion data with ``completion_only_loss``,
  DPO's prompt + chosen / rejected, GRPO's prompt + sampled completion), and reftx ends the prompt
  at the first label (``reftx.engine.positions.spans``). A batch without such labels (plain ``text``
  data) is refused by the hooks for prompt positions. Packing and padding-free batches put several
  sequences in one row and are refused.
* GRPO samples through ``ReftModel.generate`` (exact, KV-cached), so the policy that is scored is the
  policy that is trained.
* The primitives' auxiliary and parameter losses are added to the trainer's loss
  (``reftx.train.loss.compose``) and the modifiers' ``after_step`` runs after every optimizer step,
  as in reftx's own loop.
* The reference model is this model with the interventions switched off: every forward while the
  trainer is built runs with them off (DPO's ``precompute_ref_log_probs``, switched on here when no
  ``ref_model`` is given, so no second copy of the base is loaded), and a GRPO-style config with
  ``beta > 0`` gets a reference that switches them off per call.
* Gradient checkpointing (``args.gradient_checkpointing``, on by default in TRL's configs) stays on:
  a recomputed layer edits exactly as its forward did (reftx.engine.checkpointing), reentrant or not.
* Checkpoints hold the interventions only (``reft_config.json``, ``interventions.safetensors``);
  ``train(resume_from_checkpoint=...)`` loads them back.
* The datasets are checked when the trainer is built: SFT needs ``text`` (``args.dataset_text_field``),
  ``messages`` or ``prompt`` and ``completion`` (or tokenized ``input_ids``); DPO ``chosen`` and
  ``rejected`` (and ``prompt``, which TRL otherwise extracts from them); GRPO ``prompt``. A missing
  column is a one-line ``DataError`` naming it, the trainer and the columns there are.
* Rewards are checked before TRL reads them (reftx.train.objectives.rewards has the policy): every
  reward function must return one finite number per completion, or None where it does not apply
  (TRL's meaning of None); a reward model's NaN, a completion no function scores, NaN, inf, a string
  or a wrong count stop training with ``BadReward`` (a ``NonFiniteLoss``) naming the step, the
  function and the completion, before the step is applied or anything is saved.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from reftx.core.errors import ConfigError, DataError, ReftError
from reftx.train.loss import compose
from reftx.train.objectives.rewards import STOPPED, BadReward, checked_rewards, short
from reftx.engine.model import ReftModel

__all__ = ["reft_trainer", "ReftTrainerMixin"]  # and, built on first use: ReftSFTTrainer, ReftDPOTrainer, ReftGRPOTrainer


class _Reference(nn.Module):
    """The reference policy: the same base with every intervention switched off."""

    def __init__(self, reft: ReftModel):
        super().__init__()
        self._reft = (reft,)  # a tuple, so the base is not registered twice as a submodule

    @property
    def config(self) -> Any:
        return self._reft[0].config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        reft = self._reft[0]
        with reft.disabled():
            return reft.base(*args, **kwargs)


class _AfterStep(TrainerCallback):
    """The modifiers' work after every optimizer step (norm projection, PID updates)."""

    def __init__(self, reft: ReftModel):
        self.reft = reft

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reft.after_optimizer_step()


def _check_args(args: Any) -> float:
    """Refuse what reftx cannot place; returns a GRPO-style ``beta`` whose reference this adapter
    supplies (0.0 when there is none)."""
    if args is None:
        raise ConfigError("args", "pass the trainer's config (e.g. SFTConfig(...)) as args=")
    for name in ("packing", "padding_free"):
        if getattr(args, name, False):
            raise ConfigError(f"args.{name}", "puts several sequences in one row, so no row has one prompt for "
                                              "reftx's prompt positions; set it to False")
    beta = float(getattr(args, "beta", 0.0) or 0.0)
    if hasattr(args, "num_generations") and beta != 0.0:
        args.beta = 0.0  # the trainer would load a second copy of the base by its hub id
        return beta
    return 0.0


# What each TRL trainer reads from a row (trl 1.16), as alternatives: (the columns, how to say it).
def _needs(trainer: type, kwargs: dict[str, Any]) -> tuple[list[tuple[str, ...]], str] | None:
    names = {c.__name__ for c in trainer.__mro__}
    args = kwargs.get("args")
    if "SFTTrainer" in names:
        if kwargs.get("formatting_func") is not None or (getattr(args, "dataset_kwargs", None) or {}).get(
                "skip_prepare_dataset"):
            return None  # the user's function makes the rows
        text = getattr(args, "dataset_text_field", "text")
        return ([(text,), ("messages",), ("prompt", "completion"), ("conversations",), ("input_ids",)],
                f"SFT needs {text!r} (args.dataset_text_field), 'messages', or 'prompt' and 'completion'")
    if "DPOTrainer" in names:
        return [("prompt", "chosen", "rejected"), ("chosen", "rejected")], "DPO needs 'prompt', 'chosen' and 'rejected'"
    if "GRPOTrainer" in names:
        return [("prompt",)], "GRPO needs 'prompt'"
    return None


def _columns(dataset: Any) -> list[str] | None:
    """A datasets.Dataset's (or IterableDataset's) column names; None when it has none to read."""
    names = getattr(dataset, "column_names", None)
    if names is None and hasattr(dataset, "take"):  # an IterableDataset of unknown features: its first row
        first = next(iter(dataset), None)
        names = list(first) if isinstance(first, dict) else None
    return list(names) if isinstance(names, (list, tuple)) else None


def _check_columns(trainer: type, kwargs: dict[str, Any]) -> None:
    """A one-line DataError when a dataset lacks the columns ``trainer`` reads (TRL's own error is
    a KeyError deep in its preprocessing)."""
    need = _needs(trainer, kwargs)
    if need is None:
        return
    alternatives, says = need
    evals = kwargs.get("eval_dataset")
    sets = [("train_dataset", kwargs.get("train_dataset"))]
    sets += [(f"eval_dataset[{k!r}]", d) for k, d in evals.items()] if isinstance(evals, dict) else [("eval_dataset", evals)]
    for where, dataset in sets:
        cols = _columns(dataset) if dataset is not None else None
        if cols is None or any(set(a) <= set(cols) for a in alternatives):
            continue
        best = max(alternatives, key=lambda a: len(set(a) & set(cols)))  # the first of the closest
        missing = [c for c in best if c not in cols]
        raise DataError(f"{trainer.__name__}: {where} has no column {', '.join(map(repr, missing))} (its columns: "
                        f"{', '.join(cols) or 'none'}); {says}: add it, or rename yours with "
                        f"dataset.rename_column('yours', {missing[0]!r})")


class _CheckedReward:
    """A TRL reward function whose rewards are checked before TRL reads them (module docstring)."""

    def __init__(self, trainer: Any, fn: Any, name: str):
        self.trainer, self.fn, self.__name__ = trainer, fn, name

    def __call__(self, *, prompts: list, completions: list, **kwargs: Any) -> list:
        return self.check(self.fn(prompts=prompts, completions=completions, **kwargs), prompts, completions)

    def check(self, values: Any, prompts: list, completions: list) -> list:
        def sample(i: int) -> str:
            return f"prompt {short(prompts[i])}, completion {short(completions[i])}"

        return checked_rewards(values, len(completions), f"reward function {self.__name__!r}", sample, none_ok=True,
                               step=self.trainer.state.global_step + 1)


class _CheckedAsyncReward(_CheckedReward):
    async def __call__(self, *, prompts: list, completions: list, **kwargs: Any) -> list:  # type: ignore[override]
        return self.check(await self.fn(prompts=prompts, completions=completions, **kwargs), prompts, completions)


def _is_async(fn: Any) -> bool:
    while isinstance(fn, functools.partial):  # as TRL's is_async_callable reads it
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _check_reward_table(trainer: Any, rewards: Tensor, prompts: list, completions: list) -> None:
    """After TRL has gathered the rewards (completions × reward functions): a reward model's
    non-finite output, or a completion that no reward function scored (every one returned None)."""
    step, offset = trainer.state.global_step + 1, trainer.accelerator.process_index * len(prompts)

    def sample(i: int) -> str:
        j = i - offset
        return f"prompt {short(prompts[j])}, completion {short(completions[j])}" if 0 <= j < len(prompts) \
            else "on another process"

    bad = ~torch.isfinite(rewards)
    for k, fn in enumerate(trainer.reward_funcs):
        if isinstance(fn, nn.Module) and bool(bad[:, k].any()):
            i = int(bad[:, k].nonzero()[0, 0])
            raise BadReward(f"step {step}: reward model {trainer.reward_func_names[k]!r} returned "
                            f"{float(rewards[i, k])} for completion {i} of {len(rewards)} ({sample(i)}); check the "
                            f"reward model (its weights and dtype); {STOPPED}.")
    unscored = bad.all(1)
    if bool(unscored.any()):
        i = int(unscored.nonzero()[0, 0])
        raise BadReward(f"step {step}: no reward function scored completion {i} of {len(rewards)} ({sample(i)}): "
                        f"{', '.join(trainer.reward_func_names)} each returned None; return a number from at least "
                        f"one reward function for every completion; {STOPPED}.")


class ReftTrainerMixin:
    """Put before a trainer class (``reft_trainer`` does): its first argument is a ``ReftModel``."""

    def __init__(self, model: ReftModel, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, ReftModel):
            raise ReftError(f"{type(self).__name__} trains a reftx.ReftModel (reftx.attach(base, [...])), "
                            f"not a {type(model).__name__}")
        if args:
            raise TypeError(f"{type(self).__name__}: pass everything after the model by keyword (args=..., "
                            "train_dataset=..., ...)")
        beta = _check_args(kwargs.get("args"))
        _check_columns(type(self), kwargs)
        if hasattr(kwargs["args"], "precompute_ref_log_probs") and kwargs.get("ref_model") is None:
            kwargs["args"].precompute_ref_log_probs = True  # DPO: reference log-probs once, interventions off
        self.reft = model
        with model.disabled():  # forwards while the trainer is built are reference forwards
            super().__init__(model=model.carry(), **kwargs)
        if beta:
            self.beta = self.args.beta = beta
            self.ref_model = _Reference(model)
        self.add_callback(_AfterStep(model))
        funcs = getattr(self, "reward_funcs", None) or []
        for k, fn in enumerate(funcs):  # TRL's reward functions, also an environment's get_reward
            if not isinstance(fn, nn.Module):
                wrap = _CheckedAsyncReward if _is_async(fn) else _CheckedReward
                funcs[k] = wrap(self, fn, self.reward_func_names[k])

    def _calculate_rewards(self, inputs: Any, prompts: list, completions: list, *args: Any, **kwargs: Any) -> Tensor:
        """GRPO-style trainers (trl 1.16): TRL's rewards, then the checks its conversion cannot do."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, *args, **kwargs)  # type: ignore[misc]
        _check_reward_table(self, rewards, prompts, completions)
        return rewards

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            cls, options = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = cls(self.reft.param_groups(self.args.weight_decay), **options)
        return self.optimizer

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        with self.reft.collecting_aux_losses() as aux:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        loss, _ = compose(out[0] if return_outputs else out, aux, (m for _, m in self.reft.named_interventions()))
        return (loss, out[1]) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints and ``save_model`` write the interventions (and the tokenizer), not the base."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        self.reft.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self.reft.load_trained(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.reft.load_trained(os.fspath(self.state.best_model_checkpoint))


def reft_trainer(trainer_cls: type) -> type:
    """A subclass of ``trainer_cls`` (a ``transformers.Trainer``, e.g. one of TRL's) that trains a
    ``ReftModel``'s interventions: ``reft_trainer(KTOTrainer)(reft, args=..., ...)``."""
    return type(f"Reft{trainer_cls.__name__}", (ReftTrainerMixin, trainer_cls), {"__module__": __name__})


_TRL = {"ReftSFTTrainer": "SFTTrainer", "ReftDPOTrainer": "DPOTrainer", "ReftGRPOTrainer": "GRPOTrainer"}
_MADE: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """``ReftSFTTrainer`` etc., built on first use (TRL is an optional dependency: ``reftx[trl]``)."""
    if name not in _TRL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _MADE:
        try:
            import trl
        except ImportError:
            raise ImportError(f"{name} needs TRL: pip install 'reftx[trl]'") from None
        _MADE[name] = reft_trainer(getattr(trl, _TRL[name]))
    return _MADE[name]

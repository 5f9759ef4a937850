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
* Gradient checkpointing is switched off (recomputed layers would run without the edits).
* Checkpoints hold the interventions only (``reft_config.json``, ``interventions.safetensors``);
  ``train(resume_from_checkpoint=...)`` loads them back.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from reftx.core.errors import ConfigError, ReftError
from reftx.train.loss import compose
from reftx.engine.model import ReftModel, gradient_checkpointing

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
    """Refuse what reftx cannot place, switch off what would silently break it; returns a GRPO-style
    ``beta`` whose reference this adapter supplies (0.0 when there is none)."""
    if args is None:
        raise ConfigError("args", "pass the trainer's config (e.g. SFTConfig(...)) as args=")
    for name in ("packing", "padding_free"):
        if getattr(args, name, False):
            raise ConfigError(f"args.{name}", "puts several sequences in one row, so no row has one prompt for "
                                              "reftx's prompt positions; set it to False")
    names = [n for n in ("activation_checkpointing", "gradient_checkpointing") if getattr(args, n, False)]
    if names:  # transformers 5.2x renamed it; the old name is an alias
        warnings.warn(f"reftx switched {names[0]} off: recomputed layers would run without the interventions' "
                      "edits", stacklevel=3)
        for n in names:
            setattr(args, n, False)
    beta = float(getattr(args, "beta", 0.0) or 0.0)
    if hasattr(args, "num_generations") and beta != 0.0:
        args.beta = 0.0  # the trainer would load a second copy of the base by its hub id
        return beta
    return 0.0


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
        if hasattr(kwargs["args"], "precompute_ref_log_probs") and kwargs.get("ref_model") is None:
            kwargs["args"].precompute_ref_log_probs = True  # DPO: reference log-probs once, interventions off
        self.reft = model
        with model.disabled():  # forwards while the trainer is built are reference forwards
            super().__init__(model=model.carry(), **kwargs)
        if gradient_checkpointing(model.base):
            raise ReftError("the trainer switched gradient checkpointing on; reftx cannot train through it")
        if beta:
            self.beta = self.args.beta = beta
            self.ref_model = _Reference(model)
        self.add_callback(_AfterStep(model))

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

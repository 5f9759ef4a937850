"""LoRA (through peft) before, with or instead of reftx interventions: HEFT's stages (METHODS.md §5).

    lora: {mode: sequential, r: 8, alpha: 16, target_modules: [q_proj, v_proj], merge: true, epochs: 1, lr: 2.0e-4}

| mode         | stages                                                                                  |
|--------------|-----------------------------------------------------------------------------------------|
| `sequential` | 1. LoRA alone (lora.epochs, lora.lr); then merged into the weights (`merge: true`,       |
|              | peft's merge_and_unload) or kept as a frozen adapter; 2. interventions on top (train.*) |
| `joint`      | LoRA and the interventions together, one stage of train.epochs (the ablation)           |
| `only`       | LoRA alone (the LoRA baseline; no interventions)                                        |

peft injects LoRA into the base model in place, so interventions attach to the same HF model and
hook the same modules. Each stage runs reftx's train loop unchanged: ``LoraReft`` gives a model
with a LoRA adapter (and, in joint mode, interventions) the loop's surface.

Run dir: ``lora/`` holds the adapter (peft ``save_pretrained``), ``intervention/`` the
interventions (absent in mode only); the last stage trains in the run dir itself (metrics.jsonl,
checkpoints/), a sequential LoRA stage in ``stage1/``. ``model.train_modules`` (e.g. a classifier
head) become peft's ``modules_to_save``: trained with LoRA (in sequential mode, in the LoRA stage)
and saved in its adapter. results.json's ``train.stages`` lists each
stage with its trainable parameters.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import peft
import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict
from rich.console import Console
from torch import nn

from reftx.core import processes
from reftx.core.errors import ConfigError, ReftError, unknown
from reftx.config.schema import Experiment, LoraConfig
from reftx.engine.model import ReftModel, attach
from reftx.engine.schedule import plan
from reftx.train.run import latest_checkpoint, load_weights, seed_everything, train

STAGE1 = "stage1"  # the sequential LoRA stage's training folder inside the run dir
ADAPTER = "lora"
INTERVENTION_DIR = "intervention"
_REFT_ONLY = ("prompt_lengths", "intervention_positions", "example_info")  # forward kwargs only hooks read

console = Console(stderr=True)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft 0.21 reads transformers' deprecated is_gradient_checkpointing when it wraps a model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def peft_config(cfg: LoraConfig, modules_to_save: list[str] | None = None) -> peft.LoraConfig:
    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=cfg.target_modules, modules_to_save=modules_to_save or None)


def _check_targets(cfg: LoraConfig, model: nn.Module) -> None:
    """Every listed target must name (the end of) a module path; say which names exist."""
    if not isinstance(cfg.target_modules, list):
        return
    names = [n for n, _ in model.named_modules()]
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if getattr(m, "weight", None) is not None
              and getattr(m.weight, "ndim", 0) == 2}
    for i, t in enumerate(cfg.target_modules):
        if not any(n == t or n.endswith("." + t) for n in names):
            raise unknown(f"lora.target_modules.{i}", t, leaves, "module name")


def inject(base: nn.Module, cfg: LoraConfig, modules_to_save: list[str] | None = None) -> peft.PeftModel:
    """Add a fresh LoRA adapter to ``base`` (in place; only its LoRA parameters train, and full copies
    of ``modules_to_save``, e.g. a classification head: model.train_modules)."""
    _check_targets(cfg, base)
    hidden = getattr(getattr(base, "config", None), "hidden_size", None)
    if isinstance(hidden, int) and cfg.r > hidden:  # a far too large r also overflows torch's size arithmetic
        raise ConfigError("lora.r", f"must be <= the model's hidden size {hidden} (a rank above a layer's width "
                                    f"adds nothing), got {cfg.r}")
    try:
        with _quiet_peft():
            return peft.get_peft_model(base, peft_config(cfg, modules_to_save))
    except ValueError as e:  # e.g. no default target modules for this model type
        raise ConfigError("lora.target_modules", str(e)) from None


class LoraReft(nn.Module):
    """A base model with a LoRA adapter and, optionally, interventions; trains the adapter (and them).

    It has ReftModel's training surface (forward, param_groups, after_optimizer_step,
    save_pretrained, load_trained, disabled, named_interventions), so reftx.train trains it as is.
    LoRA parameters train at ``lr`` (their own optimizer group); interventions at train.lr.
    """

    def __init__(self, adapter: peft.PeftModel, lr: float, interventions: list[dict[str, Any]] | None = None):
        super().__init__()
        lora = [p for p in adapter.parameters() if p.requires_grad]
        self.adapter = adapter
        self.lr = lr
        self.reft: ReftModel | None = attach(adapter.get_base_model(), interventions) if interventions else None
        for p in lora:  # attach froze the whole base, LoRA included
            p.requires_grad_(True)
        self._lora = lora

    @property
    def config(self) -> Any:
        return self.adapter.get_base_model().config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def named_interventions(self) -> Iterator[tuple[str, Any]]:
        return self.reft.named_interventions() if self.reft is not None else iter(())

    def count_parameters(self) -> int:
        """Trainable parameters: LoRA's and the interventions'."""
        return sum(p.numel() for p in self._lora) + (self.reft.count_parameters() if self.reft is not None else 0)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = self.reft.param_groups(weight_decay) if self.reft is not None else []
        lora = [{"params": self._lora, "weight_decay": weight_decay, "lr": self.lr}] if self._lora else []
        return groups + lora

    def after_optimizer_step(self) -> None:
        if self.reft is not None:
            self.reft.after_optimizer_step()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.reft is not None:
            return self.reft(*args, **kwargs)
        for k in _REFT_ONLY:
            kwargs.pop(k, None)
        return self.adapter.get_base_model()(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.reft is not None:
            return self.reft.generate(*args, **kwargs)
        kwargs.pop("prompt_lengths", None)
        return self.adapter.get_base_model().generate(*args, **kwargs)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model alone: LoRA and every intervention switched off (a reference model)."""
        with self.adapter.disable_adapter(), (self.reft.disabled() if self.reft is not None else nullcontext()):
            yield

    def save_pretrained(self, directory: str | Path) -> Path:
        """The adapter (peft files) and the interventions (reftx files), side by side in ``directory``."""
        directory = Path(directory)
        self.adapter.save_pretrained(str(directory))
        if self.reft is not None:
            self.reft.save_pretrained(directory)
        return directory

    def load_trained(self, directory: str | Path) -> None:
        """Restore weights written by ``save_pretrained`` (a checkpoint) into this model."""
        weights = load_peft_weights(str(directory), device=str(self.device))
        result = set_peft_model_state_dict(self.adapter, weights)
        if result.unexpected_keys:
            raise ReftError(f"{directory}: unexpected LoRA weights {sorted(result.unexpected_keys)[:4]}")
        if self.reft is not None:
            load_weights(self.reft, Path(directory))


def _frozen(hf: nn.Module) -> nn.Module:
    """A kept adapter is a fixed function in stage 2, as a merged one would be: no LoRA dropout."""
    for name, mod in hf.named_modules():
        if ".lora_dropout." in name and isinstance(mod, nn.Dropout):
            mod.p = 0.0
    return hf


def prepare(base: nn.Module, exp: Experiment) -> LoraReft:
    """The first stage's model: ``base`` with a fresh LoRA adapter (and, joint, the interventions)."""
    assert exp.lora is not None
    seed_everything(exp.seed)  # the same initialisation whether or not the run resumes
    adapter = inject(base, exp.lora, exp.model.train_modules)
    return LoraReft(adapter, exp.lora.lr, exp.interventions if exp.lora.mode == "joint" else None)


def train_stages(model: LoraReft, exp: Experiment, data: list, run_dir: str | Path, *, resume: bool = False,
                 **train_kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Train every stage of ``exp.lora.mode`` from ``prepare``'s model; save ``lora/`` and ``intervention/``.

    Returns the final model (to evaluate) and a summary with one entry per stage.
    """
    cfg, run_dir = exp.lora, Path(run_dir)
    assert cfg is not None
    stages: list[dict[str, Any]] = []

    def stage(name: str, m: Any, train_cfg: Any, folder: Path) -> None:
        if not resume and folder != run_dir and latest_checkpoint(folder) is not None:
            raise ReftError(f"{folder} already holds checkpoints: pass --resume to continue, or choose a new name")
        n = m.count_parameters()
        console.print(f"[bold]stage {len(stages) + 1}: {name}[/] ({n:,} trainable parameters)")
        summary = train(m, data, train_cfg, folder, resume=resume, **train_kw)
        stages.append({"stage": name, "trainable_parameters": n, **summary})

    lora_train = dataclasses.replace(exp.train, epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr)
    if cfg.mode == "joint":
        stage("lora+interventions", model, exp.train, run_dir)
        final: nn.Module = model
    elif cfg.mode == "only":
        stage("lora", model, lora_train, run_dir)
        final = model
    else:
        stage("lora", model, lora_train, run_dir / STAGE1)
        if processes.is_main():  # one writer of the run folder (reftx.runs.shared)
            model.adapter.save_pretrained(str(run_dir / ADAPTER))
        with torch.no_grad():
            hf = model.adapter.merge_and_unload() if cfg.merge else _frozen(model.adapter.get_base_model())
        seed_everything(exp.seed)
        final = attach(hf, exp.interventions)
        stage("interventions", final, exp.train, run_dir)
    if cfg.mode != "sequential" and processes.is_main():
        model.adapter.save_pretrained(str(run_dir / ADAPTER))
    reft = final if isinstance(final, ReftModel) else model.reft
    if reft is not None and processes.is_main():
        reft.save_pretrained(run_dir / INTERVENTION_DIR)
    summary = {"mode": cfg.mode, "stages": stages, "steps": sum(s["steps"] for s in stages),
               "trainable_parameters": sum(s["trainable_parameters"] for s in stages)}
    if all("train_seconds" in s for s in stages):
        summary["train_seconds"] = sum(s["train_seconds"] for s in stages)
    return final, summary


def load_run(base: nn.Module, run_dir: str | Path, cfg: LoraConfig) -> nn.Module:
    """Rebuild a finished run's model on ``base``: its LoRA adapter (merged as in training) and interventions."""
    run_dir = Path(run_dir)
    with _quiet_peft():
        adapter = peft.PeftModel.from_pretrained(base, str(run_dir / ADAPTER))
    if cfg.mode == "only":
        return LoraReft(adapter, cfg.lr)
    with torch.no_grad():
        hf = adapter.merge_and_unload() if cfg.mode == "sequential" and cfg.merge else adapter.get_base_model()
    return ReftModel.from_pretrained(hf, run_dir / INTERVENTION_DIR)


@dataclasses.dataclass(frozen=True)
class LoraRow:
    """The LoRA adapter as a row of the plan table (the fields ``runner.plan_table`` reads)."""

    params: int
    component: str
    kind: str
    key: str = "lora"
    layers: tuple[int, ...] = (-1,)
    parts: tuple[str, ...] = ("all",)


def planned(exp: Experiment, model_config: Any) -> list[Any]:
    """The LoRA row (its size from the model built on the meta device: no weights) and the
    intervention groups, for ``reftx plan`` and ``validate``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    assert exp.lora is not None
    auto = AutoModelForCausalLM if exp.model.task == "causal-lm" else AutoModelForSequenceClassification
    with torch.device("meta"):  # the adapter too: a 7B model's LoRA is counted, not allocated and initialised
        meta = auto.from_config(model_config)
        adapter = inject(meta, exp.lora, exp.model.train_modules)
    params = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    targets = sorted(adapter.peft_config["default"].target_modules)
    row = LoraRow(params, ",".join(targets), "lora", key=f"lora ({exp.lora.mode}, r={exp.lora.r})")
    return [row, *(plan(exp.interventions, model_config)[1] if exp.interventions else [])]


__all__ = ["LoraReft", "inject", "load_run", "planned", "prepare", "train_stages"]

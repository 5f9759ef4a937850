"""TOFU stage 1 (Maini et al. 2024): finetune the base model on the fictitious authors, then write
an ordinary Hugging Face checkpoint that unlearning experiments load as ``model.name``.

    reftx tofu-finetune experiments/unlearning/tofu_finetune.yaml [key=value ...]

The experiment (task ``tofu_qa``, tasks/tofu_finetune.py) trains a LoRA adapter alone
(``lora: {mode: only}``) with ``reftx run``'s driver; the adapter is then merged into the weights
and the merged model and its tokenizer are saved (``save_pretrained``) to ``{run_dir}/model``.
The same command with ``tofu_finetune_retain01.yaml`` writes the retain-only model, the reference
of Forget Quality. (``python -m reftx.tasks tofu-finetune ...``, the command's old spelling, says
that it moved and runs this.)
"""
from __future__ import annotations

from pathlib import Path

from reftx.core.errors import ConfigError
from reftx.config.schema import Experiment

MODEL_DIR = "model"  # the merged checkpoint inside the run dir


def export_merged(run_dir: str | Path, exp: Experiment) -> Path:
    """Merge a finished ``lora: {mode: only}`` run's adapter into its base model and save the result
    (weights + tokenizer) as an ordinary HF checkpoint in ``{run_dir}/model``; returns that folder."""
    from reftx.integrations.peft import load_run
    from reftx.recipes.train import load_base

    base, tok = load_base(exp)
    model = load_run(base, run_dir, exp.lora)
    merged = model.adapter.merge_and_unload()
    out = Path(run_dir) / MODEL_DIR
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def finetune(exp: Experiment, show_progress: bool = True) -> Path:
    """Train ``exp`` (it must be ``lora: {mode: only}``, else a ConfigError naming ``lora.mode``)
    with ``reftx run``'s driver, then export the merged model; returns the checkpoint folder."""
    from reftx.recipes.train import run

    if exp.lora is None or exp.lora.mode != "only":
        raise ConfigError("lora.mode", "tofu_finetune exports a merged LoRA adapter: set lora: {mode: only}")
    folder = run(exp, show_progress=show_progress)["run_dir"]  # {name}, or {name}-2 when {name} holds a run
    return export_merged(folder, exp)

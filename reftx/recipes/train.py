"""One experiment from YAML to results: the glue behind ``reftx run`` and ``reftx eval``.

Run dir ({output_dir}/{name}):
  config.yaml       the resolved experiment (what actually ran)
  metrics.jsonl     one line per logged step: step, epoch, loss, lr, tokens_per_s, grad_norm, aux/*, rec/*;
                    with train.eval_every, dev rows: step, epoch, dev/loss, dev/<metric> (reftx.train.validation)
  checkpoints/      step-N/ folders (intervention weights, optimizer, scheduler, RNG, data position)
  intervention/     the final interventions (ReftModel.save_pretrained)
  lora/, stage1/    with a `lora:` section: the LoRA adapter, and a sequential LoRA stage's training (reftx.integrations.peft)
  results.json      eval metrics, before and after, with the config hash, versions and wall times
  samples.jsonl     prompts with the answers before and after training
  loss.png          the training curve
  records.png       values primitives log per step (gate and basis weights), when there are any
  objective.png     the objective's logged terms per step (obj/*: reward, kl, token weights, ...), when any
"""
from __future__ import annotations

import json
from functools import partial
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from reftx.core.version import __version__
from reftx.config.defaults import changed
from reftx.config.hashing import config_hash
from reftx.core.convert import dump_yaml
from reftx.data import checks
from reftx.data.encoding import pad_id, use_chat
from reftx.core.errors import ConfigError, ReftError
from reftx.eval.generate import evaluate, generate
from reftx.config.schema import Experiment
from reftx.engine.model import ReftModel, attach
from reftx.engine.plan_table import plan_table  # noqa: F401  (runner.plan_table: what cli and recipes print)
from reftx.recipes.summary import baseline_metrics, report, write_samples  # noqa: F401  (runner.report: adopt, edit)
from reftx.train.objectives.common import OBJECTIVES, needs_guidance
from reftx.runs.plots import plot_loss  # noqa: F401  (runner.plot_loss: what the run writes)
from reftx.train.objectives.grpo import sampling_env
from reftx.core import processes
from reftx.runs import shared
from reftx.runs.folder import RunFolder, locked, run_folder, run_folder_at, versions  # noqa: F401  (versions: the pre-0.2 name)
from reftx.engine.schedule import plan
from reftx.eval.task import Task, get_task
from reftx.train.run import latest_checkpoint, seed_everything, train
from reftx.recipes.init_from import check_init_from
from reftx.recipes import dev as dev_split

console = Console(stderr=True)
_plain = partial(console.print, markup=False, highlight=False, soft_wrap=True)  # paths, config: "[x]" is text
_say = partial(_plain, style="yellow")  # a notice (truncated data, a finished run), also plain text


def load_task(exp: Experiment) -> Task:
    """The experiment's task, with its dev split held out of the training split (task.dev_size)."""
    task = get_task(exp.task.name, exp.task.options, exp.task.data_dir)
    if exp.task.dev_size:
        task.hold_out_dev(exp.task.train_split or task.default_splits()[0], exp.task.dev_size)
    return task


def splits(exp: Experiment, task: Task) -> tuple[str, str]:
    train_split = exp.task.train_split or task.default_splits()[0]
    eval_split = exp.task.eval_split or task.default_splits()[1]
    for field, s in (("task.train_split", train_split), ("task.eval_split", eval_split)):
        if s == "dev" and s not in task.splits:
            raise ConfigError(field, f"task {task.name!r} holds out no dev split: set task.dev_size (e.g. 64), "
                              "the examples held out of its training split")
        if s not in task.splits:
            from reftx.core.errors import unknown

            raise unknown(field, s, task.splits, f"split of task {task.name!r}")
    return train_split, eval_split


def eval_examples(exp: Experiment, task: Task) -> list:
    """The evaluated examples: the eval split's ``task.n_eval`` subset picked by ``task.eval_seed``,
    never by the training seed, so every seed of a sweep is scored on the identical examples (paired)."""
    return task.examples(splits(exp, task)[1], exp.task.n_eval, exp.task.eval_seed)


def load_base(exp: Experiment) -> tuple[Any, Any]:
    from reftx.models.loading import load_model

    kwargs = {"num_labels": exp.model.num_labels} if exp.model.num_labels else {}
    model, tok = load_model(exp.model.name, dtype=exp.model.dtype, task=exp.model.task, device=processes.device(),
                            quantization=exp.model.quantization, train_modules=exp.model.train_modules,
                            **kwargs)  # this process's GPU (else the CPU): nothing generates on the CPU first
    if exp.model.pooling != "model":
        from reftx.eval.classify import set_pooling

        set_pooling(model, exp.model.pooling)
    return model, tok


def reference_loaders(task: Task) -> dict[str, Any]:
    """``Task.evaluate``'s ``references``: for each model the task compares against
    (``task.reference_models()``, e.g. TOFU's ``retain_model``), a loader that calls
    ``reftx.models.loading.load_model(path)`` (default dtype) and returns (model, tokenizer). The task calls
    it only when it needs the model, so a cached comparison loads nothing; tasks never load models."""
    from functools import partial

    from reftx.models.loading import load_model

    return {name: partial(load_model, path) for name, path in task.reference_models().items()}


def model_config_of(exp: Experiment, notices: list[str] | None = None) -> Any:
    """The model's config without its weights: from a local folder or the Hugging Face cache; offline,
    a published paper-size model's architecture (``hub.PUBLISHED``, said in ``notices``); else a
    ConfigError naming ``model.name``."""
    from transformers import AutoConfig

    from reftx.models.loading import (
        DEFAULT_MODEL,
        default_cache_dir,
        default_model_path,
        published_config,
        resolve_name,
    )

    name = str(default_cache_dir()) if exp.model.name == DEFAULT_MODEL else resolve_name(exp.model.name)
    if exp.model.name == DEFAULT_MODEL and not (Path(name) / "config.json").is_file():
        name = str(default_model_path())
    try:
        return AutoConfig.from_pretrained(name, local_files_only=published_config(name) is not None)
    except (OSError, ValueError) as e:  # ValueError: a folder whose config.json names no model_type, a bad id
        published = published_config(name)
        if published is None:
            raise ConfigError("model.name", f"cannot read the config of {exp.model.name!r}: {e}") from None
        if notices is not None:
            notices.append(f"{name} is not cached: checked against its published architecture (hub.PUBLISHED)")
        return published


def validate(exp: Experiment, model_config: Any = None, notices: list[str] | None = None) -> list:
    """Check everything that can be checked without weights: task, splits, data files, schedule.
    Offline facts that are not errors (a published architecture used) are appended to ``notices``."""
    from reftx.train.objectives.common import objective_options

    objective_options(exp.train.objective, exp.train.objective_options)  # typos fail here, with the path
    task = load_task(exp)
    train_split, eval_split = splits(exp, task)
    train_ex = task.examples(train_split, exp.task.n_train, exp.seed)
    if needs_guidance(exp.train.objective) and not all(ex.guidance.strip() for ex in train_ex):
        raise ConfigError("train.objective", f"objective {exp.train.objective!r} needs natural-language guidance "
                          f"(Example.guidance) on every training example; task {task.name!r} gives none")
    if OBJECTIVES.get(exp.train.objective).needs_env and type(task).reward is Task.reward:
        raise ConfigError("train.objective", f"objective {exp.train.objective!r} samples and scores completions; "
                          f"task {task.name!r} defines no reward (Task.reward; the math task has one)")
    eval_examples(exp, task)
    dev_split.check(exp, task)  # train.eval_every: a dev split to score, a dev metric it has
    if model_config is None:
        model_config = model_config_of(exp, notices)
    if exp.lora is not None:  # a LoRA adapter (reftx.integrations.peft): its row, then the interventions' groups
        from reftx.integrations import peft as lora

        check_init_from(exp, model_config, [], [])  # not with a lora: section
        return lora.planned(exp, model_config)
    specs, groups = plan(exp.interventions, model_config)
    check_init_from(exp, model_config, specs, groups)  # what `reftx run` would load into these groups
    return groups


def run(exp: Experiment, resume: bool | str | Path = False, show_progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one experiment; returns results.json's content (which it writes) plus
    ``run_dir``, the folder it wrote.

    The run folder is ``{output_dir}/{name}``; when that already holds a run (and this is not
    ``--resume``), the next free ``{name}-2``, ``{name}-3``, ... (said on the console), so running
    the same experiment twice never fails and never touches the first run. The folder is locked
    while this process writes it (reftx.runs.folder.run_folder, the one run-folder writer).
    ``resume``: True continues the newest unfinished run of the experiment, a path that folder
    (reftx.recipes.resume); Ctrl-C's KeyboardInterrupt carries ``run_dir``, the folder to resume."""
    from reftx.recipes.resume import finished_results, resume_target
    from reftx.train.trackers import check_available

    check_available(exp.train.log_with)  # a tracker that cannot start fails before the run folder exists
    folder = processes.main_decides(lambda: resume_target(exp, resume)) if resume else exp.run_dir  # one for all
    done = finished_results(folder, exp.to_dict()) if resume else None
    if done is not None:  # nothing to do, and nothing written
        _say(f"--resume: {folder} is already finished ({folder / 'results.json'}); nothing to do")
        return {**done, "run_dir": str(folder)}
    with shared.run_folder(folder, f"reftx run {exp.name}", reuse=bool(resume), say=_plain) as out:
        try:
            return {**_run(exp, out, bool(resume), show_progress), "run_dir": str(out.path)}  # not in results.json
        except KeyboardInterrupt as e:
            e.run_dir = out.path  # type: ignore[attr-defined]  (the folder to resume: the CLI prints the command)
            raise


def _check_resume(run_dir: Path, resume: bool, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """What the folder allows: None to (re)start training, or a finished run's results to return.
    The saved config must hash as ``resolved`` does: a moved folder (another output_dir) or another
    logging or checkpoint cadence resumes; a change to what determines the result is named."""
    cfg_file = run_dir / "config.yaml"
    if not resume:
        if latest_checkpoint(run_dir) is not None or (run_dir / "results.json").is_file():
            raise ReftError(f"{run_dir} already holds a run: pass --resume to continue it, or choose a new "
                            "name (name=...) or output_dir")
        return None
    if not cfg_file.is_file():
        raise ReftError(f"--resume: {run_dir} holds no run to resume (no config.yaml); run without --resume")
    from reftx.config.hashing import hash_differences
    from reftx.core.convert import load_yaml

    saved = load_yaml(cfg_file)
    if config_hash(saved) != config_hash(resolved):
        changed = ", ".join(hash_differences(saved, resolved)) or "the type of a value"
        raise ReftError(f"--resume: {cfg_file} differs from the current config in {changed}; resume "
                        "with the same config (and overrides), or pick another name")
    results = run_dir / "results.json"
    if results.is_file():
        _say(f"--resume: {run_dir} is already finished ({results}); nothing to do")
        return json.loads(results.read_text())
    if latest_checkpoint(run_dir) is None:
        _say(f"--resume: {run_dir} has no checkpoint yet; training starts from step 0")
    return None


def _build(exp: Experiment, base: Any) -> Any:
    """The trained model: interventions attached to ``base``, or reftx.integrations.peft's LoRA adapter
    before/with/instead of them (``lora:``); its plan table is printed."""
    if exp.lora is None:
        model = attach(base, exp.interventions, exp.model.train_modules)
        console.print(plan_table(model.plan(show=False)))
        if exp.train.init_from:  # trained weights instead of a fresh init (checked: shapes, finite values)
            model.load_trained(exp.train.init_from)
            _plain(f"interventions initialised from {exp.train.init_from}")
        return model
    if exp.train.init_from:
        raise ConfigError("train.init_from", "starts interventions from a saved run; with a lora: section it is not supported")
    from reftx.integrations import peft as lora

    console.print(plan_table(lora.planned(exp, base.config)))
    return lora.prepare(base, exp)


def _encode(exp: Experiment, tok: Any, examples: list, chat: bool, model_config: Any = None) -> tuple[list, list]:
    """The training examples kept and their encodings, checked before anything is built or saved
    (reftx.data.checks.encode_train). learns: the objective learns the response (not a classifier's
    label, nor a sampling objective that scores its own completions)."""
    learns = exp.model.task == "causal-lm" and exp.train.objective != "classify" and not OBJECTIVES.get(
        exp.train.objective).needs_env
    return checks.encode_train(exp, tok, examples, chat, model_config, needs_guidance(exp.train.objective), learns, _say)


def _fit_eval(exp: Experiment, task: Task, tok: Any, model: Any, examples: list, chat: bool) -> tuple[list, Any]:
    """The eval examples and EvalConfig under task.overlong (reftx.data.checks.fit_eval)."""
    return checks.fit_eval(tok, examples, chat, getattr(model, "config", None), exp.eval,
                           task.generate and exp.model.task == "causal-lm", exp.task.overlong, _say)


def _fit(exp: Experiment, model: Any, encoded: list, tok: Any, run_dir: Path, resume: bool,
         show_progress: bool, env: Any = None, dev: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train (one job of the one loop, or reftx.integrations.peft's stages) and save the trained weights.
    ``dev``: the dev split's scorer (reftx.recipes.dev; train.eval_every)."""
    train_kw = {"pad_id": pad_id(tok), "seed": exp.seed, "resume": resume, "show_progress": show_progress,
                "name": exp.name, "config": exp.to_dict(), "env": env, "dev": dev}  # config: what trackers record
    if exp.lora is None:
        summary = train(model, encoded, exp.train, run_dir, **train_kw)
        if processes.is_main():  # one writer of the run folder (reftx.runs.shared)
            model.save_pretrained(run_dir / "intervention")
    else:
        from reftx.integrations import peft as lora

        model, summary = lora.train_stages(model, exp, encoded, run_dir, **train_kw)
    if processes.is_main():
        plot_loss(run_dir)
    return model, summary


def _run(exp: Experiment, out: RunFolder, resume: bool, show_progress: bool) -> dict[str, Any]:
    t_start, run_dir = time.perf_counter(), out.path
    resolved = exp.to_dict()
    chash = config_hash(resolved)
    finished = _check_resume(run_dir, resume, resolved)
    if finished is not None:
        return finished
    seed_everything(exp.seed)
    task = load_task(exp)
    train_split, eval_split = splits(exp, task)
    train_ex = task.examples(train_split, exp.task.n_train, exp.seed)
    eval_ex = eval_examples(exp, task)
    base, tok = load_base(exp)
    chat = use_chat(tok, exp.model.chat_template)
    train_ex, encoded = _encode(exp, tok, train_ex, chat, base.config)  # bad data fails here: nothing saved
    eval_ex, eval_cfg = _fit_eval(exp, task, tok, base, eval_ex, chat)
    model = _build(exp, base)  # a bad intervention spec fails here: no config.yaml, no config dump
    out.text("config.yaml", dump_yaml(resolved))
    console.rule(f"[bold]reftx run {escape(str(exp.name))}  (config {chash})")
    _plain(f"config, the fields set away from their defaults (all of it: {out.path / 'config.yaml'}):")
    _plain(dump_yaml(changed(exp)))
    before, shown = None, eval_ex[: exp.eval.show_examples]
    if task.generate and exp.model.task == "causal-lm" and shown:  # also when resuming: samples keep "before"
        with model.disabled():
            before = generate(model, tok, shown, eval_cfg, chat, "before", show_progress)
    encoded, env = sampling_env(exp, task, train_ex, tok, encoded)
    dev = dev_split.build(exp, task, tok, chat, base.config, reference_loaders(task), _say)
    model, summary = _fit(exp, model, encoded, tok, run_dir, resume, show_progress, env, dev)

    t_eval = time.perf_counter()
    metrics, preds = evaluate(model, tok, task, eval_ex, eval_cfg, chat, show_progress, reference_loaders(task))
    results = {"name": exp.name, "config_hash": chash, "task": task.name, "eval_split": eval_split,
               "n_train": len(train_ex), "n_eval": len(eval_ex), "metrics": metrics,
               "trainable_parameters": summary.get("trainable_parameters", model.count_parameters()), "train": summary,
               "eval_seconds": time.perf_counter() - t_eval}
    results = out.results(results, started=t_start)
    write_samples(out, eval_ex, preds, before)
    report(results, shown, before, preds[: len(shown)], baseline_metrics(run_dir, chash))
    return results


EVAL_OVERRIDES = ("eval.", "task.n_eval", "task.eval_seed", "task.eval_split", "task.overlong")


def evaluate_run(run_dir: str | Path, show_progress: bool = True, overrides: list[str] | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run from its config.yaml and intervention/ into a new eval.json (eval-2.json, ...
    once taken: never replacing one, nor results.json); a path that is not a run folder creates nothing.
    ``overrides``: eval-only dotted overrides (``eval.*``, ``task.n_eval``, ``task.eval_seed``,
    ``task.eval_split``, ``task.overlong``), recorded in the file; any other key is refused by name."""
    overrides = list(overrides or [])
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(EVAL_OVERRIDES) or key.endswith("."):
            raise ConfigError(key, "reftx eval takes eval-only overrides (eval.*, task.n_eval, task.eval_seed, "
                              "task.eval_split, task.overlong); this one changes the trained run: retrain with reftx run")
    run_dir = run_folder_at(run_dir)
    with locked(run_dir, "reftx eval"):  # never while a run still writes the folder
        results, path = _evaluate_run(run_dir, show_progress, overrides)
    _plain(f"wrote {path}")
    return results


def trained_model(exp: Experiment, run_dir: Path) -> tuple[Any, Any]:
    """A finished run's trained model (its interventions, or reftx.integrations.peft's adapter and interventions)
    on the experiment's base model, and the tokenizer."""
    base, tok = load_base(exp)
    if exp.lora is not None:
        from reftx.integrations.peft import load_run

        return load_run(base, run_dir, exp.lora), tok
    return ReftModel.from_pretrained(base, run_dir / "intervention"), tok


def _evaluate_run(run_dir: Path, show_progress: bool, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    from reftx.config.schema import load_experiment

    exp = load_experiment(run_dir / "config.yaml", overrides)
    task = load_task(exp)
    eval_ex = eval_examples(exp, task)
    model, tok = trained_model(exp, run_dir)
    chat = use_chat(tok, exp.model.chat_template)
    eval_ex, cfg = _fit_eval(exp, task, tok, model, eval_ex, chat)
    metrics, _ = evaluate(model, tok, task, eval_ex, cfg, chat, show_progress, reference_loaders(task))
    out = RunFolder(run_dir)
    name = out.free_name("eval.json")  # a new file each time, never one written before
    return out.results({"name": exp.name, "config_hash": config_hash(exp.to_dict()), "overrides": overrides,
                        "n_eval": len(eval_ex), "metrics": metrics}, name=name, replace=False), run_dir / name


def baseline_dir(exp: Experiment) -> Path:
    """Where ``reftx baseline`` writes: its own subfolder of the run folder, never the run's files."""
    return exp.run_dir / "baseline"


def evaluate_base(exp: Experiment, show_progress: bool = True) -> dict[str, Any]:
    """The experiment's model as it is (no interventions, no training) on its eval split, with the
    task's metrics: the zero-shot baseline of a run, or a saved checkpoint such as TOFU's stage 1.
    Writes ``{run_dir}/baseline/``: ``config.yaml`` (the resolved config), ``results.json`` (same
    config hash as ``reftx run`` of this experiment) and ``samples.jsonl``; the interventions, lora
    and train sections are not used. A ``reftx run`` of the same experiment is never touched."""
    with run_folder(baseline_dir(exp), f"reftx baseline {exp.name}", say=_plain) as out:
        return _evaluate_base(exp, out, show_progress)


def _evaluate_base(exp: Experiment, out: RunFolder, show_progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    resolved = exp.to_dict()
    out.text("config.yaml", dump_yaml(resolved))
    task = load_task(exp)
    _, eval_split = splits(exp, task)
    examples = eval_examples(exp, task)
    model, tok = load_base(exp)
    chat = use_chat(tok, exp.model.chat_template)
    examples, cfg = _fit_eval(exp, task, tok, model, examples, chat)
    metrics, preds = evaluate(model, tok, task, examples, cfg, chat, show_progress, reference_loaders(task))
    results = {"name": exp.name, "config_hash": config_hash(resolved), "model": exp.model.name,
               "task": task.name, "eval_split": eval_split, "n_eval": len(examples), "metrics": metrics,
               "trainable_parameters": 0}
    results = out.results(results, started=t0)
    write_samples(out, examples, preds)
    report(results, [], None, [])
    return results


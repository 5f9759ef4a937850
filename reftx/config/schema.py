"""The experiment schema: what an experiment YAML file may contain.

Each field's trailing comment is its reference documentation (the README's table of YAML keys
is generated from them). Types are checked by :func:`reftx.core.convert.from_dict`; value ranges by
the ``__post_init__`` methods below.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reftx.core.convert import apply_overrides, from_dict, load_yaml, require, to_dict
from reftx.core.errors import unknown

SCHEMA_VERSION = 1
# model.quantization's schemes and the package each needs (reftx.models.quantization builds their configs)
QUANTIZATION_PACKAGES = {"bnb-int8": "bitsandbytes", "bnb-nf4": "bitsandbytes"}
NAME_BYTES = 200  # longest run name: a folder name (255 bytes on common filesystems) with room for suffixes


def _at_least(obj: object, minimum: int, *names: str) -> None:
    """Require ``obj.<name> >= minimum`` for each name whose value is not None."""
    for name in names:
        value = getattr(obj, name)
        require(value is None or value >= minimum, name, f"must be >= {minimum}, got {value}")


@dataclass
class ModelConfig:
    """The frozen base model the interventions are trained on."""

    name: str = "default"  # "default" (embedded SmolLM2-135M-Instruct), an HF model id or a local path
    dtype: Literal["float32", "bfloat16", "float16", "auto", "fp32", "bf16", "fp16"] = "float32"  # dtype of the base model's (frozen) weights: float32, bfloat16, float16 (or fp32, bf16, fp16: the same, resolved to the long name) or auto (the checkpoint's); the interventions keep their own dtype (interventions.N.dtype, float32 by default: fp32 masters on a bf16 or fp16 base, run in fp32 and returned in the base's dtype)
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"  # model head
    num_labels: int | None = None  # number of classes for sequence-classification (null: the task decides)
    chat_template: bool | None = None  # wrap prompts in the tokenizer's chat template; null: when it has one
    pooling: Literal["model", "mean"] = "model"  # what a sequence-classification head reads (reftx.eval.classify): model = the architecture's own (decoders: last non-padding token; BERT: [CLS] via its pooler), mean = masked mean of the final hidden states
    train_modules: list[str] = field(default_factory=list)  # base-model modules trained and saved with the interventions, e.g. [score] (a decoder's classification head) or [classifier] (BERT's); with lora: peft's modules_to_save
    quantization: Literal["bnb-int8", "bnb-nf4"] | None = None  # QReFT: load the frozen base quantized by bitsandbytes through transformers (reftx.models.quantization; pip install 'reftx[quant]'; CUDA or CPU): bnb-int8 (LLM.int8: int8 weights, a scale per row) or bnb-nf4 (4-bit NormalFloat, computed in model.dtype); the output head, the embeddings and train_modules stay in float, the interventions keep their dtype and train as on a float base, and the saved interventions load onto the quantized or the float base alike; null: not quantized

    def __post_init__(self) -> None:
        require(self.name != "", "name", "must not be empty")
        self.dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(self.dtype, self.dtype)
        _at_least(self, 1, "num_labels")
        ok = self.pooling == "model" or self.task == "sequence-classification"
        require(ok, "pooling", f"{self.pooling!r} needs task: sequence-classification")


@dataclass
class TaskConfig:
    """Which registered task supplies the data, prompts and metrics."""

    name: str  # registered task name (required)
    data_dir: str | None = None  # data folder; null: $REFTX_DATA, else ../shared/data by the repo if present
    n_train: int | None = None  # train examples: a deterministic subset (given the training seed); null = all
    n_eval: int | None = None  # eval examples: a deterministic subset (given eval_seed, never the training seed); null = all
    eval_seed: int = 0  # picks the n_eval subset, so every training seed of a sweep evaluates the identical examples (paired)
    train_split: str | None = None  # split trained on; null: the task's first split
    eval_split: str | None = None  # split evaluated on; null: the task's last split
    dev_size: int = 0  # examples held out of the training split as a dev split named "dev" (task.eval_split: dev; what train.eval_every evaluates): picked by a fixed seed, never the training seed or eval_seed, so every run of a sweep holds out the same examples; disjoint from training, and from evaluation when a task evaluates on its training split; 0 = none
    overlong: Literal["error", "truncate", "drop"] = "error"  # examples too long for the model: a training example's prompt + response tokens above train.max_length or the model's context length, an eval prompt's tokens + eval.max_new_tokens above the context. error: refuse before training, naming the first (file:line); truncate: cut them (training: the response's end, then the prompt's start; eval: the prompt's start) and say how many; drop: leave them out and say how many
    options: dict[str, Any] = field(default_factory=dict)  # task-specific keys, validated by the task itself

    def __post_init__(self) -> None:
        require(self.name != "", "name", "must not be empty")
        _at_least(self, 1, "n_train", "n_eval")
        _at_least(self, 0, "dev_size")


@dataclass
class TrainConfig:
    """Optimisation of the intervention parameters (the base model stays frozen)."""

    epochs: int = 1  # passes over the training set
    max_steps: int | None = None  # total optimiser steps; overrides epochs when set
    batch_size: int = 8  # examples per forward pass: the global batch, of which each of N processes takes batch_size / N (a multiple of N; reftx run --num-processes)
    grad_accum: int = 1  # forward passes per optimiser step (effective batch = batch_size * grad_accum)
    lr: float = 1.0e-3  # peak learning rate (> 0)
    weight_decay: float = 0.0  # AdamW weight decay (>= 0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"  # learning-rate schedule after warmup
    warmup: float = 0.0  # warmup length as a fraction of total steps (0 <= warmup < 1)
    max_grad_norm: float | None = 1.0  # gradient-norm clipping threshold (> 0); null disables clipping
    divergence_factor: float | None = 1.0e4  # stop (before saving) when a trained parameter's norm grows beyond this factor of max(its initial norm, 1), or a positive loss beyond this factor of max(its running minimum, 1); null disables (non-finite values always stop)
    precision: Literal["fp32", "bf16"] = "fp32"  # fp32, or bf16 autocast (accelerate's mixed_precision) where the device supports it: matmuls run in bf16, the trained parameters and the optimizer state keep their dtype (float32 by default), and so do the saved weights
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass instead of keeping them (transformers' non-reentrant activation checkpointing): less memory for a longer step, the same gradients (an edit inside a recomputed layer is replayed exactly: reftx.engine.checkpointing)
    max_length: int = 512  # tokens per example after truncation
    checkpoint_every: int = 100  # save a checkpoint every this many steps; 0 = only at the end
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk (older ones are deleted)
    log_every: int = 10  # log training metrics every this many steps
    objective: str = "nll"  # training objective (reftx.train.objectives.common): nll, or e.g. an unlearning objective
    objective_options: dict[str, Any] = field(default_factory=dict)  # options of the objective
    prefix_fraction: float = 0.0  # share of examples supervised only on their first prefix_tokens answer tokens (BREP); 0 = off
    prefix_tokens: int = 64  # k: answer tokens kept in the labels of prefix-truncated examples (>= 1)
    log_with: list[str] = field(default_factory=list)  # experiment trackers through accelerate, e.g. [tensorboard] or [wandb, mlflow] (accelerate's LoggerType: all, aim, clearml, comet_ml, dvclive, mlflow, swanlab, tensorboard, trackio, wandb): the metrics.jsonl scalars at their steps plus the resolved config, written under {run_dir}/trackers/; [] = none
    eval_every: int = 0  # every this many optimizer steps, and at the last, score the dev split (task.dev_size): dev/loss (the response NLL per token, teacher-forced) and, with eval_task_metrics, the task's metrics as dev/<metric>, into metrics.jsonl and the trackers; the RNG is set aside meanwhile, so training is the same with or without it; 0 = never
    eval_task_metrics: bool = True  # with eval_every: also the task's metrics on the dev split (generates answers, slower); false: dev/loss alone
    eval_metric: str = "loss"  # the dev metric that picks the best checkpoint and drives early_stopping: loss (lower is better) or one of the task's metrics (higher is better)
    early_stopping: int = 0  # stop once this many evaluations in a row have not improved eval_metric on the best so far (patience); 0 = never
    load_best: bool = False  # with eval_every: the best checkpoint by eval_metric becomes the run's intervention/ and is what the final evaluation scores (else the last step's, with the best reported beside it)
    init_from: str | None = None  # start from trained interventions (a run's intervention/ folder) instead of a fresh init, e.g. the previous stage of the sequential recipe; reftx validate checks it was trained for this model with the same kinds, ranks and groups; null: fresh

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "max_steps", "batch_size", "grad_accum", "max_length")
        _at_least(self, 1, "keep_checkpoints", "log_every")
        _at_least(self, 0, "checkpoint_every", "eval_every", "early_stopping")
        require(self.eval_metric.strip() != "", "eval_metric", "must name a dev metric: loss, or one of the task's metrics")
        for key in ("early_stopping", "load_best"):
            require(not getattr(self, key) or self.eval_every > 0, key,
                    "needs evaluations on the dev split: set train.eval_every (and task.dev_size)")
        ok = self.eval_task_metrics or self.eval_metric == "loss"
        require(ok, "eval_metric", f"{self.eval_metric!r} is a task metric, but train.eval_task_metrics is false: "
                "set it true, or eval_metric: loss")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.warmup < 1, "warmup", f"must satisfy 0 <= warmup < 1, got {self.warmup}")
        ok = 0 <= self.prefix_fraction <= 1
        require(ok, "prefix_fraction", f"must satisfy 0 <= prefix_fraction <= 1, got {self.prefix_fraction}")
        _at_least(self, 1, "prefix_tokens")
        ok = self.max_grad_norm is None or self.max_grad_norm > 0
        require(ok, "max_grad_norm", f"must be > 0 (or null to disable), got {self.max_grad_norm}")
        ok = self.divergence_factor is None or self.divergence_factor > 1
        require(ok, "divergence_factor", f"must be > 1 (or null to disable), got {self.divergence_factor}")
        if self.log_with:  # names only: whether the package is installed is checked when training starts
            from accelerate.utils import LoggerType

            for i, name in enumerate(self.log_with):
                if name not in LoggerType.list():
                    raise unknown(f"log_with.{i}", name, LoggerType.list(), "tracker", " (accelerate's LoggerType)")


@dataclass
class EvalConfig:
    """Evaluation and generation settings."""

    batch_size: int = 16  # examples per evaluation batch (N processes generate every N-th batch each, then share the predictions)
    max_new_tokens: int = 64  # generation length limit for causal-lm tasks
    do_sample: bool = False  # sample instead of greedy/beam decoding
    num_beams: int = 1  # beam-search width (1 = no beam search)
    repetition_penalty: float = 1.0  # > 1 divides the logit of every token already in the prompt or answer by this (CTRL, Keskar et al. 2019; transformers' repetition_penalty); 1 = off
    show_examples: int = 5  # greedy answers printed before/after training (0 = none)
    max_length: int = 512  # tokens per example when evaluation scores instead of generating (e.g. classification); longer inputs lose their start, as in training

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "max_new_tokens", "num_beams", "max_length")
        _at_least(self, 0, "show_examples")
        require(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")


@dataclass
class LoraConfig:
    """A LoRA adapter (peft) trained before, with or instead of the interventions (reftx.integrations.peft; HEFT)."""

    mode: Literal["sequential", "joint", "only"] = "sequential"  # sequential: LoRA, then interventions (HEFT) | joint | only: LoRA alone
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator: the weight update is (alpha / r) * B A
    dropout: float = 0.05  # dropout on the input of the LoRA branch (0 <= dropout < 1)
    target_modules: list[str] | str | None = None  # module names given LoRA, or "all-linear"; null: peft's default (llama: q_proj, v_proj)
    merge: bool = True  # sequential: merge LoRA into the weights before stage 2; false: keep it as a frozen adapter
    epochs: int = 1  # length of the LoRA stage (modes sequential and only; joint trains for train.epochs)
    max_steps: int | None = None  # optimiser steps of the LoRA stage; overrides lora.epochs when set
    lr: float = 2.0e-4  # learning rate of the LoRA parameters, in every mode (the rest of train.* is shared)

    def __post_init__(self) -> None:
        _at_least(self, 1, "r", "epochs", "max_steps")
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, "dropout", f"must satisfy 0 <= dropout < 1, got {self.dropout}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        targets = self.target_modules
        ok = targets is None or targets == "all-linear" or (isinstance(targets, list) and len(targets) > 0)
        require(ok, "target_modules", f'must be a non-empty list of names, "all-linear" or null, got {targets!r}')


@dataclass(kw_only=True)
class Experiment:
    """One experiment: a model, a task, interventions and how to train and evaluate them."""

    schema: int  # config schema version (required); only 1 is valid
    name: str | None = None  # run name; default: the config file's stem
    seed: int = 0  # seed for data subsets, initialisation and training order
    output_dir: str = "runs"  # parent folder of run folders; the run folder is {output_dir}/{name}; must not be empty ("." writes into the current directory on purpose)
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    task: TaskConfig  # the task (task.name is required)
    interventions: list[dict[str, Any]] = field(default_factory=list)  # intervention specs, checked by the engine
    train: TrainConfig = field(default_factory=TrainConfig)  # training settings
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation settings
    lora: LoraConfig | None = None  # a LoRA adapter trained before/with/instead of the interventions; null: none
    recipe: dict[str, Any] = field(default_factory=dict)  # how the one loop runs this experiment: {name: train (default) | edit | tofu_stage1, ...that recipe's options} (reftx/recipes); checked by reftx validate
    imports: list[str] = field(default_factory=list)  # modules imported before anything is built, for their registrations (your own primitives, tasks, objectives): dotted names on sys.path or .py files; installed plugins (entry points, group reftx.plugins) need no entry

    def __post_init__(self) -> None:
        from reftx.core.plugins import import_modules

        import_modules(self.imports, "imports")
        require(
            self.schema == SCHEMA_VERSION,
            "schema",
            f"unsupported schema version {self.schema}; this reftx reads schema {SCHEMA_VERSION}",
        )
        if self.name is not None:
            ok = self.name not in ("", ".", "..") and not any(c in self.name for c in "/\\\0")
            require(ok, "name", f"must be a plain folder name, got {self.name!r}")
            ok = len(self.name.encode("utf-8", "surrogatepass")) <= NAME_BYTES
            require(ok, "name", f"must be at most {NAME_BYTES} bytes (a folder name, with room for -2, -s1), "
                                f"got {len(self.name.encode('utf-8', 'surrogatepass'))}")
        require(self.output_dir.strip() != "", "output_dir", f"must not be empty ({self.output_dir!r} writes the run "
                "folder into the current directory); set a folder, e.g. output_dir: runs (or '.' on purpose)")
        require("\0" not in self.output_dir, "output_dir", f"must not contain a NUL character, got {self.output_dir!r}")
        if self.lora is not None and (self.lora.mode == "only") == bool(self.interventions):
            need = "trains LoRA alone: remove the interventions" if self.interventions else "needs interventions"
            require(False, "lora.mode", f"{self.lora.mode!r} {need} (only: LoRA alone; sequential, joint: with them)")

    @property
    def run_dir(self) -> Path:
        """The run folder, ``{output_dir}/{name}``."""
        return Path(self.output_dir) / (self.name or "run")

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a plain, YAML-safe dict (keys in schema order)."""
        return to_dict(self)


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Load an experiment YAML (with ``extends:``), apply ``key.path=value`` overrides, validate."""
    data = migrate(apply_overrides(load_yaml(path), list(overrides)), str(path))
    if data.get("name") is None:
        data["name"] = Path(path).stem
    return from_dict(Experiment, data)


def migrate(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Schema-1 spellings that moved: ``method:`` (knowledge editing's options) is now
    ``recipe: {name: edit, ...}``; said once on stderr when it carries options (an empty
    ``method: {}``, as every older resolved config.yaml holds, is dropped silently). Its options win
    over the file's ``recipe:``: ``method.mode=batch`` on the command line, as older docs spell it,
    must not be overridden by the shipped file's ``recipe: {mode: single}``."""
    if isinstance(data, dict) and "method" in data:
        data = dict(data)
        method = data.pop("method") or {}
        if method:
            import sys

            recipe = data.get("recipe") or {}
            data["recipe"] = {"name": "edit", **recipe, **method}
            print(f"note: {where or 'the config'}: `method:` is now `recipe: {{name: edit, ...}}` (read as such)",
                  file=sys.stderr)
    return data

"""The task interface shared by every task in the zoo (``reftx.tasks``).

A task is one file in ``tasks/`` with a class registered by ``@register_task("name")``:

    @register_task("persona")
    class Persona(Task):
        @dataclass(frozen=True)
        class Options:            # task-specific YAML keys under task.options
            file: str = "persona.jsonl"
        splits = ("train", "eval")
        metrics = ("persona_open", "persona_close")   # registered metrics (reftx.eval.metrics)

        def load(self, split): ...           # -> list[Example]

``score`` is provided: it computes the metrics the task names (``reftx.eval.metrics.score_metrics``);
a task overrides it only to add per-group variants, or ``evaluate`` to score without generating.

The task never sees hooks, never loads a model and never imports the run driver: it turns data
into ``Example``s and predictions into metrics. A model it compares against (TOFU's retain-only
model) is named by ``reference_models()`` and loaded by the runner, which hands it to
``evaluate`` (``references=``). Tokenisation, padding and label masking are done once, for every
task, by ``reftx.data``.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from reftx.data.checks import check_prompts
from reftx.data.examples import Example
from reftx.core.errors import ConfigError, DataError, unknown, utf8_error
from reftx.eval.metrics import get_metric, score_metrics
from reftx.core.registry import Registry

TASKS: Registry[type[Task]] = Registry("task")
REPO_ROOT = Path(__file__).resolve().parents[2]


def register_task(name: str, replace: bool = False) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a ``Task`` subclass under ``name`` (``replace``: see ``Registry``)."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name, replace)(cls)

    return wrap


def available_tasks() -> list[str]:
    return TASKS.names()


def default_data_dir() -> Path | None:
    """``$REFTX_DATA``, else ``../shared/data`` next to the repository when it exists."""
    env = os.environ.get("REFTX_DATA")
    if env:
        return Path(env)
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


Loader = Callable[[], tuple[Any, Any]]  # loads a reference model: () -> (model, tokenizer)


class Task:
    """Base class of tasks. Subclasses define ``Options``, ``splits``, ``load`` and ``metrics``."""

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "eval")
    generate: ClassVar[bool] = True  # evaluation generates text (False: e.g. log-likelihood scoring)
    metrics: ClassVar[tuple[str, ...]] = ()  # the registered metrics it reports (reftx.eval.metrics; reftx ls metrics)

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None, data_dir: str | Path | None = None):
        self.options = options if options is not None else self.Options()
        self._data_dir = Path(data_dir) if data_dir else None
        self._dev: tuple[str, int] | None = None  # (split it is carved from, size): see hold_out_dev

    def hold_out_dev(self, source: str, size: int) -> None:
        """Carve a ``dev`` split of ``size`` examples out of ``source`` (the training split; task.dev_size).

        The held-out examples are the first ``size`` of one fixed permutation of ``source`` (seeded by
        the string "reftx-dev", never by the training seed or eval_seed), so every run holds out the same
        ones, and a larger size holds out a superset. From then on ``source`` no longer yields them, in
        training and in evaluation alike (a task that evaluates on its training split), so dev is disjoint
        from both by construction. A task with a ``dev`` split of its own keeps it (size must be 0)."""
        if "dev" in type(self).splits:
            raise ConfigError("task.dev_size", f"task {self.name!r} has a dev split of its own; leave task.dev_size at 0")
        if source not in type(self).splits:
            raise unknown("task.train_split", source, type(self).splits, f"split of task {self.name!r}")
        self._dev = (source, size)
        self.splits = (*type(self).splits, "dev")  # this instance only

    def default_splits(self) -> tuple[str, str]:
        """The (train, eval) splits when the experiment names none: the task's first and last."""
        return type(self).splits[0], type(self).splits[-1]

    @property
    def data_dir(self) -> Path:
        d = self._data_dir or default_data_dir()
        if d is None:
            raise ConfigError("task.data_dir", "no data directory: set task.data_dir or $REFTX_DATA")
        if not d.is_dir():
            raise ConfigError("task.data_dir", f"{d} is not a directory")
        return d

    # -- to implement ----------------------------------------------------------------------
    def load(self, split: str) -> list[Example]:
        raise NotImplementedError

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """The metrics named in ``metrics``, each aggregated over the examples it applies to
        (``reftx.eval.metrics.score_metrics``)."""
        if not self.metrics:
            raise NotImplementedError(f"task {self.name!r} names no metrics: set {type(self).__name__}.metrics "
                                      "(registered metrics, reftx ls metrics) or override score")
        return score_metrics(self.metrics, predictions, examples, field=f"task {self.name!r}: metrics")

    def reward(self, prediction: str, example: Example, partial: float) -> float:
        """The reward of a sampled ``prediction`` for ``example``, for objectives that sample
        (reftx.train.objectives.grpo): by default the task has none (say so; the math task defines one)."""
        raise DataError(f"task {self.name!r} defines no reward, so objectives that sample and score completions "
                        f"(train.objective: grpo) cannot train on it; the math task has one")

    def reference_models(self) -> dict[str, str]:
        """The models the evaluation compares against, ``{name: path or hub id}`` (default: none),
        e.g. ``{"retain_model": ...}`` for TOFU's Forget Quality. The task never loads a model:
        the runner makes a loader of each (``reftx.models.loading.load_model``) and passes them to
        ``evaluate`` as ``references={name: loader}``; a loader, called with no argument, returns
        ``(model, tokenizer)``, so a task calls it only when it needs the model (not when a cache
        of its numbers already answers)."""
        return {}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                 show_progress: bool = True, references: dict[str, Loader] | None = None,
                 ) -> tuple[dict[str, float], list[str]]:
        """Metrics on ``examples`` and one prediction string per example. The default generates
        (``cfg``: the experiment's EvalConfig) and calls ``score``; a task that scores without
        generating (log-likelihood of options, a classifier head, teacher-forced edit metrics)
        overrides this, building on ``reftx.eval.scoring``. ``references``: loaders of the models
        named by ``reference_models()`` (given by the runner; see there)."""
        from reftx.eval.generate import generate

        preds = generate(model, tokenizer, examples, cfg, chat, "eval", show_progress)
        return self.score(preds, examples), preds

    # -- provided --------------------------------------------------------------------------
    def _load_split(self, split: str) -> list[Example]:
        """A split's examples, checked, with the dev split carved out of its source."""
        carved = self._dev is not None and split in ("dev", self._dev[0])  # the dev split or the one it is cut from
        source = self._dev[0] if carved else split
        data = self.load(source)
        if not data:
            raise DataError(f"task {self.name!r}: split {source!r} is empty")
        check_prompts(data, source)
        if not carved:  # any other split (the test split) is the same with or without a dev split
            return data
        size = self._dev[1]
        if size >= len(data):
            raise ConfigError("task.dev_size", f"holds out {size} of the {len(data)} examples of split {source!r} "
                              f"of task {self.name!r}, which leaves none to train on; choose fewer")
        order = list(range(len(data)))
        random.Random("reftx-dev").shuffle(order)
        held = set(order[:size])
        return [ex for i, ex in enumerate(data) if (i in held) == (split == "dev")]

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The split's examples; ``n`` picks a subset that depends only on ``seed``. An empty
        prompt anywhere in the split is a DataError naming it (reftx.data.checks). With a dev split
        held out (``hold_out_dev``), ``dev`` is that part of its source split and the source the rest."""
        if split not in self.splits:
            raise unknown("split", split, self.splits, f"split of task {self.name!r}")
        data = self._load_split(split)
        if n is not None and n < len(data):
            idx = sorted(random.Random(f"{seed}:{split}").sample(range(len(data)), n))
            data = [data[i] for i in idx]
        return data


def read_text(path: Path) -> str:
    """A data file as text: a missing, non-UTF-8 or empty file raises DataError naming it (and the line)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(utf8_error(path, data, e)) from None
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    return text


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-empty line; a bad line raises DataError naming file:line;
    a file with no record at all is an error naming it."""
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield lineno, rec


def require_keys(rec: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not isinstance(rec.get(k), str)]
    if missing:
        raise DataError(f"{where}: missing or non-string field(s) {', '.join(missing)}")


def get_task(name: str, options: dict[str, Any] | None = None, data_dir: str | Path | None = None) -> Task:
    """Build a registered task; ``options`` are checked strictly against its ``Options``."""
    from reftx.core.convert import from_dict  # local: config imports nothing from here

    cls = TASKS.get(name, "task.name")
    for metric in cls.metrics:  # a typo in a task's list fails when the task is built, not after training
        get_metric(metric, f"task {name!r}: metrics")
    opts = from_dict(cls.Options, options or {}, "task.options")
    return cls(opts, data_dir)

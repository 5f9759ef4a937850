"""lm-evaluation-harness on a reftx model: ``ReftLM`` is lm-eval's ``HFLM`` with the requests'
prompt edits placed on each request's context.

    import lm_eval
    from reftx.integrations.lm_eval import ReftLM
    lm = ReftLM(model, tokenizer, batch_size=8)      # a ReftModel (or reftx.integrations.peft's model)
    lm = reftx.recipes.lm_eval.from_run("runs/quickstart", batch_size=8)  # a finished run's trained model
    out = lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])

``reftx lm-eval RUN_DIR --tasks ...`` is ``reftx.recipes.lm_eval.evaluate_run``. lm_eval is optional: importing this
module does not import it; using ``ReftLM`` without it says ``pip install 'reftx[lm-eval]'``.

How it plugs into lm-eval 0.4.13 (``lm_eval/models/huggingface.py``, class ``HFLM``):
- ``HFLM.__init__`` takes a model instance as ``pretrained`` and calls ``.eval()`` and
  ``.tie_weights()`` on it and reads ``.device`` and ``.config``: it is given the transformers
  model under the wrapper (``ReftModel.base``); ``ReftLM.model`` then returns the wrapper, so every
  later ``self.model`` call of HFLM runs the interventions.
- ``generate_until`` -> ``HFLM._model_generate`` calls ``self.model.generate(input_ids=context,
  attention_mask=mask, ...)`` on left-padded contexts, i.e. ``ReftModel.generate``: prompt positions
  on each row's context, ``{generated: n}`` groups on generated tokens. Used as it is.
- ``loglikelihood`` -> ``HFLM._loglikelihood_tokens`` calls ``self.model(context + continuation)``
  (``HFLM._model_call``: no mask, no labels), where a ReftModel would read the whole row as the
  prompt and put ``last`` positions on the continuation. ``ReftLM._loglikelihood_tokens`` scores
  each (context tokens, continuation tokens) request with ``reftx.eval.scoring.score_encoded`` instead,
  the prompt ending where the context does, and returns what HFLM's does: (summed
  log-probability, whether every continuation token is the argmax).

Differences from HFLM's loop: no one-token logits cache (each request runs, so requests whose
tokens coincide but whose contexts end at different places stay exact) and no progress bar for
log-likelihood requests; a request longer than ``max_length`` keeps its last ``max_length``
tokens (HFLM keeps one more, its unused last input); ``batch_size`` is a number (no ``"auto"``).
"""
from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from reftx.data.encoding import Encoded
from reftx.core.errors import ReftError
from reftx.engine.positions import IGNORE
from reftx.eval.scoring import score_encoded

INSTALL_HINT = "pip install 'reftx[lm-eval]'"
OUTPUT_DIR = "lm_eval"  # reftx lm-eval writes {run_dir}/lm_eval/{task}+{task}.json, then ...-2.json, ...


def hflm() -> type:
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ReftError(f"lm-evaluation-harness is not installed ({e}): {INSTALL_HINT}") from None
    return HFLM


def request_rows(requests: list[tuple[Any, list[int], list[int]]], max_length: int) -> list[Encoded]:
    """lm-eval's (key, context tokens, continuation tokens) as reftx rows whose prompt is the context
    (kept from the left: the last ``max_length`` tokens)."""
    rows = []
    for _, context, continuation in requests:
        ids = [*context, *continuation][-max_length:]
        prompt_len = len(ids) - len(continuation)
        if prompt_len < 1:
            raise ReftError(f"a continuation of {len(continuation)} tokens leaves no context token "
                            f"within max_length={max_length}")
        rows.append(Encoded(ids, [IGNORE] * prompt_len + list(continuation), prompt_len,
                            truncated=len(ids) < len(context) + len(continuation)))
    return rows


def score_requests(lm: Any, requests: list[tuple[Any, list[int], list[int]]], batch_size: int
                   ) -> list[tuple[float, bool]]:
    """(log p(continuation | context), greedy) per request, in order; keyed requests are added to
    lm-eval's cache hook as HFLM does (rolling windows carry no key)."""
    scores = score_encoded(lm.model, lm.tokenizer, request_rows(requests, lm.max_length), batch_size)
    out = []
    for (key, _, _), s in zip(requests, scores):
        answer = (s.logprob, s.argmax == s.targets)
        if key is not None:
            lm.cache_hook.add_partial("loglikelihood", key, answer)
        out.append(answer)
    return out


def _transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model under a reftx wrapper (ReftModel.base, reftx.integrations.peft's adapter)."""
    for name in ("base", "adapter"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return model


@functools.cache
def reft_lm_class() -> type:
    HFLM = hflm()

    class ReftLM(HFLM):
        """lm-eval's HFLM over a reftx model (a ReftModel, reftx.integrations.peft's model or a plain causal LM):
        ``ReftLM(model, tokenizer, batch_size=1, max_length=None, show_progress=True, **hflm_kwargs)``."""

        def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int = 1, max_length: int | None = None,
                     show_progress: bool = True, **kwargs: Any):
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ReftError(f"ReftLM: batch_size must be a positive integer, got {batch_size!r}")
            self._reft: nn.Module | None = None
            super().__init__(pretrained=_transformers_model(model), tokenizer=tokenizer, backend="causal",
                             batch_size=batch_size, max_length=max_length, **kwargs)
            self._reft = model.eval()
            self.show_progress = show_progress

        @property
        def model(self) -> nn.Module:
            # HFLM.__init__ sets up the transformers model; every later call goes through the wrapper
            return super().model if self._reft is None else self._reft

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            return score_requests(self, requests, override_bs or self.batch_size)

        # lm-eval's evaluator calls these three without disable_tqdm: show_progress=False silences them
        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return super().loglikelihood(requests, disable_tqdm or not self.show_progress)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            return super().loglikelihood_rolling(requests, disable_tqdm or not self.show_progress)

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            return super().generate_until(requests, disable_tqdm or not self.show_progress)

    ReftLM.__module__, ReftLM.__qualname__ = __name__, "ReftLM"
    return ReftLM


def __getattr__(name: str) -> Any:
    if name == "ReftLM":  # built on first use, so that importing this module does not import lm_eval
        return reft_lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_manager(names: list[str], include_path: str | None) -> Any:
    """lm-eval's TaskManager (with ``include_path``), after checking that every task exists."""
    manager = task_manager_class()(include_path=include_path)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing or not names:
        near = {n: difflib.get_close_matches(n, manager.all_tasks, 3) for n in missing}
        hints = "; ".join(f"{n}: did you mean {', '.join(c)}?" for n, c in near.items() if c)
        raise ReftError(f"lm-eval has no task {', '.join(missing) or '(none given)'}"
                        f"{' (' + hints + ')' if hints else ''}; local task YAMLs load with --include-path DIR")
    return manager


@functools.cache
def task_manager_class() -> type:
    """lm-eval's TaskManager, except that a task whose dataset is neither in the local datasets cache
    nor reachable (offline, no network, an unreachable HF_ENDPOINT) is one ReftError naming the task
    and the fix, not datasets' ConnectionError traceback. It wraps ``_load_spec`` (lm-eval 0.4.13,
    lm_eval/tasks/manager.py), which builds one requested task or group and downloads its data."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from lm_eval.tasks import TaskManager

    from reftx.models.hub import network_errors

    class ReftTaskManager(TaskManager):
        def _load_spec(self, spec: Any) -> Any:
            try:
                return super()._load_spec(spec)
            except (*network_errors(), LocalEntryNotFoundError) as e:
                raise ReftError(not_cached(spec, e)) from None

    ReftTaskManager.__module__, ReftTaskManager.__qualname__ = __name__, "ReftTaskManager"
    return ReftTaskManager


def not_cached(spec: Any, error: BaseException) -> str:
    """The one-line error for a task whose dataset could not be fetched (``spec``: a name or a config)."""
    import datasets

    name = spec.get("task") or spec.get("group") or spec if isinstance(spec, dict) else spec
    cause = (str(error).strip().splitlines() or [""])[0]
    if datasets.config.HF_HUB_OFFLINE:  # HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1
        why, fix = "offline mode is on (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE)", "unset them and run it once online"
    else:
        why, fix = "the Hub cannot be reached", "run it once with network access (check HF_ENDPOINT)"
    return (f"lm-eval task {name}: its dataset is not in the local datasets cache and {why} ({type(error).__name__}: "
            f"{cause}); {fix} to cache it, or give a local task YAML with --include-path DIR")


@contextmanager
def dataset_bars(show: bool) -> Iterator[None]:
    """datasets' progress bars off within the block unless ``show`` (lm-eval loads tasks through it)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    if not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


__all__ = ["INSTALL_HINT", "ReftLM", "request_rows", "reft_lm_class", "score_requests", "task_manager",
           "task_manager_class", "dataset_bars"]  # noqa: F822 (ReftLM: module __getattr__)

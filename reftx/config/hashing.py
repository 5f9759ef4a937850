"""The config hash: what determines a result, not where or how often it is written.

Every published result carries the hash of its resolved config; ``--resume`` compares hashes and
names the fields that differ (``hash_differences``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from reftx.core.convert import _join, to_dict


# Fields that cannot change a result, left out of the config hash so that a published hash
# matches a rerun in any folder, at any logging cadence. Dotted paths into the resolved config; one
# that a config lacks (an older config.yaml, a key not added yet) is simply not there to drop.
NOT_HASHED = {
    "imports": "where code is found, not what it computes",
    "name": "names the run folder only (nothing is seeded from it)",
    "output_dir": "the parent folder of the run folder",
    "train.log_every": "how often metrics.jsonl gets a line; training is the same",
    "train.checkpoint_every": "how often a checkpoint is written; resuming from one gives the same weights",
    "train.keep_checkpoints": "how many old checkpoints stay on disk",
    "train.log_with": "where training metrics are sent (a tracker), not what they are",
    "train.gradient_checkpointing": "recomputes activations in the backward pass; the gradients are the same "
                                    "(tests/contract/test_checkpointing.py)",
    "eval.show_examples": "how many before/after answers are printed; every answer is generated and scored anyway",
}
# keys added after results were published: hashed only when set away from their default, so every
# published config hash stays valid
HASHED_UNLESS_DEFAULT = {("train", "divergence_factor"): 1.0e4, ("train", "init_from"): None,
                         ("eval", "repetition_penalty"): 1.0, ("task", "eval_seed"): 0,
                         ("task", "dev_size"): 0, ("train", "eval_every"): 0, ("train", "eval_task_metrics"): True,
                         ("train", "eval_metric"): "loss", ("train", "early_stopping"): 0, ("train", "load_best"): False}
# values that compute what leaving the key out computes: task.overlong error only refuses the examples
# that truncate cuts (what every run did before the key existed), so a run under either is the same run
SAME_AS_ABSENT = {("task", "overlong"): ("error", "truncate")}


def hashed_view(d: Any) -> Any:
    """What :func:`config_hash` hashes: the config without ``NOT_HASHED`` fields, without
    ``HASHED_UNLESS_DEFAULT`` keys at their default, and with ``recipe:`` spelled as schema 1 did."""
    d = to_dict(d)
    if not isinstance(d, dict):
        return d
    d = copy.deepcopy(d)
    for dotted in NOT_HASHED:
        *parents, last = dotted.split(".")
        node = d
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    if "recipe" in d:  # hashed as schema 1 spelled it (``method:``), so published hashes stay valid
        recipe = dict(d.pop("recipe") or {})
        name = recipe.pop("name", "train")
        d["method"] = recipe if name == "edit" else {}
        if name not in ("train", "edit", "tofu_stage1", "baseline"):  # tofu_stage1 = train + a deterministic merge
            d["recipe"] = {"name": name, **recipe}
    absent = {k: (v,) for k, v in HASHED_UNLESS_DEFAULT.items()} | SAME_AS_ABSENT
    for (section, key), values in absent.items():
        sec = d.get(section)
        if isinstance(sec, dict) and key in sec and sec[key] in values:
            del sec[key]
    return d


def config_hash(d: Any) -> str:
    """First 12 hex chars of the sha256 of the canonical (sorted-key) JSON of a config's
    :func:`hashed_view`: what determines the result, not where or how often it is written."""
    text = json.dumps(hashed_view(d), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def hash_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between the hashed views of two configs (why hashes differ)."""
    a, b = (hashed_view(a), hashed_view(b)) if not prefix else (a, b)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        a, b = dict(enumerate(a)), dict(enumerate(b))
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "(the whole config)"]
    keys = sorted(set(a) | set(b), key=str)
    return [k for key in keys for k in hash_differences(a.get(key), b.get(key), _join(prefix, key))]


__all__ = ["HASHED_UNLESS_DEFAULT", "NOT_HASHED", "SAME_AS_ABSENT", "config_hash", "hash_differences", "hashed_view"]

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
                         ("train", "eval_metric"): "loss", ("train", "early_stopping"): 0, ("train", "load_best"): False,
                         ("model", "quantization"): None}
# values that compute what leaving the key out computes: task.overlong error only refuses the examples
# that truncate cuts (what every run did before the key existed), so a run under either is the same run
SAME_AS_ABSENT = {("task", "overlong"): ("error", "truncate")}
# objective options whose default changed after results were published (issue 26), per objective:
# (option path, the former default, the default now). The former default is hashed as absent, as it
# was then, and an absent option is hashed as the default now, so a run under today's default never
# shares a hash with a published run under the former one (the KL anchor only where the KL is on).
CHANGED_DEFAULTS = {
    "grpo": [("kl_reference", "base", "start")],
    "carft": [("kl_reference", "base", "start"), ("contrastive.representation", "pooled", "projection")],
}
_OPTIONS = "train.objective_options."


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
    _changed_defaults(d)
    absent = {k: (v,) for k, v in HASHED_UNLESS_DEFAULT.items()} | SAME_AS_ABSENT
    for (section, key), values in absent.items():
        sec = d.get(section)
        if isinstance(sec, dict) and key in sec and sec[key] in values:
            del sec[key]
    return d


def _changed_defaults(d: dict) -> None:
    """Spell ``CHANGED_DEFAULTS`` in ``d`` in place: in ``train.objective_options`` and in each
    ``sequential`` stage's override list (``train.objective_options.OPTION=VALUE``)."""
    train = d.get("train")
    if isinstance(train, dict) and isinstance(train.get("objective_options") or {}, dict) \
            and str(train.get("objective")) in CHANGED_DEFAULTS:
        opts = {k[len(_OPTIONS):]: v for k, v in _flatten(train.get("objective_options") or {}, _OPTIONS) if k != _OPTIONS[:-1]}
        kept = _respell(str(train.get("objective")), opts)
        train["objective_options"] = _unflatten(kept)
    stages = (d.get("recipe") or {}).get("stages") if isinstance(d.get("recipe"), dict) else None
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not (isinstance(stage, list) and all(isinstance(o, str) and "=" in o for o in stage)):
            continue
        pairs = [o.split("=", 1) for o in stage]
        objective = next((v.strip() for k, v in pairs if k.strip() == "train.objective"), "")
        opts = {k.strip()[len(_OPTIONS):]: v.strip() for k, v in pairs if k.strip().startswith(_OPTIONS)}
        if objective not in CHANGED_DEFAULTS:
            continue
        kept = _respell(objective, opts)
        rest = [o for o, (k, _) in zip(stage, pairs) if not k.strip().startswith(_OPTIONS)]
        stages[i] = rest + [f"{_OPTIONS}{k}={v}" for k, v in kept.items()]


def _respell(objective: str, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` (dotted option paths) with ``objective``'s former defaults dropped and its new ones added."""
    kl_on = str(opts.get("beta", "")).strip() not in ("0", "0.0", "0.", "0e0")
    for path, former, now in CHANGED_DEFAULTS.get(objective, []):
        if path == "kl_reference" and not kl_on:
            continue
        if str(opts.get(path, now)) == former:
            del opts[path]
        else:
            opts.setdefault(path, now)
    return opts


def _flatten(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        return [kv for k, v in node.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix[:-1], node)]


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


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


__all__ = ["CHANGED_DEFAULTS", "HASHED_UNLESS_DEFAULT", "NOT_HASHED", "SAME_AS_ABSENT", "config_hash", "hash_differences", "hashed_view"]

"""Training objectives: how a batch becomes a loss. The loop calls one by name (``train.objective``).

An objective is ``fn(model, batch, options) -> (loss, logs, out)`` registered with
``@register_objective("name")``: ``model`` is the (possibly DDP-wrapped) ReftModel,
``batch`` the collated dict (input_ids, attention_mask, labels, example_info),
``options`` the dict ``train.objective_options``; ``logs`` are floats for metrics.jsonl.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sites
from .errors import ConfigError, DataError, did_you_mean
from .positions import IGNORE
from .registry import Registry
from .schedule import resolve_layers

Objective = Callable[[Any, dict[str, Any], dict[str, Any]], tuple[Tensor, dict[str, float], Any]]
OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(name: str) -> Callable[[Objective], Objective]:
    return OBJECTIVES.register(name)


@register_objective("nll")
def nll(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> tuple[Tensor, dict[str, float], Any]:
    """Causal-LM negative log-likelihood of the response tokens (plus the primitives' auxiliary losses)."""
    out = model(**batch)
    return out.loss, {}, out


@register_objective("classify")
def classify(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> tuple[Tensor, dict[str, float], Any]:
    """Cross-entropy of a sequence-classification model's logits (``model.task:
    sequence-classification``) against ``example_info["label"]`` (a class index per example, as
    reftx.classify describes), plus the primitives' auxiliary losses. No options."""
    from .classify import LABEL

    _options("classify", options, {})
    info = batch.get("example_info") or {}
    if LABEL not in info:
        raise DataError(f"objective 'classify' needs example_info[{LABEL!r}] (a class index) on every example; "
                        f"this batch has {sorted(info)}")
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    target = info[LABEL].to(out.logits.device).long()
    core = F.cross_entropy(out.logits.float(), target)
    logs = {"accuracy": float((out.logits.argmax(-1) == target).float().mean())}
    return _finish(model, out, core, logs)


# -- unlearning objectives (GRUN, METHODS.md §4) ---------------------------------------------------
# Every example carries ``example_info["gate_label"]``: 1 = forget set F, 0 = retain set R (the
# key GRUN's gate loss reads too). NLL_i is the mean token NLL of example i's response (labels
# shifted by one, -100 ignored); a set's term is the mean over that set's examples in the batch,
# and 0 when the batch holds none of them. The primitives' auxiliary losses (e.g. GRUN's gate BCE)
# are added, and the whole loss is scaled by the primitives' loss scale, as ``ReftModel`` does.
FIELD = "train.objective_options"
GATE_LABEL = "gate_label"
Result = tuple[Tensor, dict[str, float], Any]


def sequence_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token NLL of each example's response. logits (B, T, V), labels (B, T) -> (B,).

    Position t predicts token t + 1; positions whose next label is -100 are ignored. An example
    without response tokens gets 0.
    """
    target = labels[:, 1:]
    tok = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    count = (target != IGNORE).sum(1)
    return tok.sum(1) / count.clamp(min=1)


def rmu_direction(dim: int, seed: int) -> Tensor:
    """RMU's fixed random unit vector u (float32, CPU): uniform in [0, 1)^d, normalised."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def _options(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    for key in options:
        if key not in defaults:
            raise ConfigError(f"{FIELD}.{key}", f"unknown option {key!r} for objective {name!r}"
                                                f"{did_you_mean(key, defaults)}; valid: {', '.join(defaults)}")
    out = {**defaults, **options}
    for key, default in defaults.items():
        value = out[key]
        if isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (key in ("beta", "c") and value == 0):
                raise ConfigError(f"{FIELD}.{key}", f"must be a number {'>' if key in ('beta', 'c') else '>='} 0, "
                                                    f"got {value!r}")
        elif isinstance(default, int) and key == "seed" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{FIELD}.{key}", f"must be an integer, got {value!r}")
    return out


def _forget_rows(batch: dict[str, Any], name: str) -> Tensor:
    """(B,) bool: which examples belong to the forget set."""
    info = batch.get("example_info") or {}
    label = info.get(GATE_LABEL)
    if label is None:
        raise DataError(f"objective {name!r} needs example_info[{GATE_LABEL!r}] on every example (1 forget, "
                        f"0 retain), e.g. from task tofu_unlearn; this batch has {sorted(info)}")
    return label.to(batch["input_ids"].device) > 0.5


def _set_mean(x: Tensor, rows: Tensor) -> Tensor:
    """Mean of x (B,) over the rows in ``rows`` (B,) bool; 0 (in the graph) when there are none."""
    w = rows.to(x.dtype)
    return (x * w).sum() / w.sum().clamp(min=1)


def _rows(batch: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The batch restricted to some examples (positions depend only on each row's own mask and labels)."""
    out = {k: v[rows] for k, v in batch.items() if isinstance(v, Tensor)}
    if "example_info" in batch:
        out["example_info"] = {k: v[rows] for k, v in batch["example_info"].items()}
    return out


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the ReftModel in .module


def _reference(model: Any, batch: dict[str, Any], **kwargs: Any) -> Any:
    """The same model with every intervention switched off (no gradients): the reference model."""
    base = _unwrap(model)
    with torch.no_grad(), base.disabled():
        return base(**batch, **kwargs)


def _set_logs(values: Tensor, forget: Tensor, what: str) -> dict[str, float]:
    logs = {}
    for tag, rows in (("forget", forget), ("retain", ~forget)):
        if rows.any():
            logs[f"{what}_{tag}"] = float(values.detach()[rows].mean())
    return logs


def _finish(model: Any, out: Any, core: Tensor, logs: dict[str, float]) -> Result:
    """core + the primitives' auxiliary losses, times their loss scale (the composition of ``ReftModel``)."""
    aux = out.get("aux_losses") or {}
    loss = core + sum(aux.values()) if aux else core
    scales = [s for _, m in _unwrap(model).named_interventions() if (s := m.loss_scale()) is not None]
    if scales:
        loss = loss * torch.stack(scales).mean()
    logs["objective"] = float(core.detach())
    return loss, logs, out


@register_objective("gd")
def gradient_difference(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> Result:
    """Gradient difference: ``−NLL_F + w_r·NLL_R``. Options: retain_weight w_r (1.0).

    Unbounded below (ascent on F): stop it by steps, or let GRUN's gate confine the damage.
    """
    o = _options("gd", options, {"retain_weight": 1.0})
    forget = _forget_rows(batch, "gd")
    out = model(**batch)
    nll = sequence_nll(out.logits, batch["labels"])
    core = -_set_mean(nll, forget) + o["retain_weight"] * _set_mean(nll, ~forget)
    return _finish(model, out, core, _set_logs(nll, forget, "nll"))


@register_objective("idk")
def i_dont_know(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> Result:
    """``NLL_F + w_r·NLL_R``, where the task has replaced the forget targets by "I don't know"-style
    answers (tofu_unlearn with ``idk: true``): a weighted NLL by set. Options: retain_weight (1.0)."""
    o = _options("idk", options, {"retain_weight": 1.0})
    forget = _forget_rows(batch, "idk")
    out = model(**batch)
    nll = sequence_nll(out.logits, batch["labels"])
    core = _set_mean(nll, forget) + o["retain_weight"] * _set_mean(nll, ~forget)
    return _finish(model, out, core, _set_logs(nll, forget, "nll"))


@register_objective("npo")
def negative_preference(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> Result:
    """NPO: ``−(2/β)·mean_F log σ(β(NLL_θ − NLL_ref)) + w_r·NLL_R``.

    NLL_ref comes from the same model with its interventions switched off (``model.disabled()``,
    no gradients), run on the forget rows only. The forget term is (2/β)·log 2 at the start
    (NLL_θ = NLL_ref) and falls toward 0 as NLL_θ rises above NLL_ref; unlike GD it is bounded.
    Options: beta β (0.1), retain_weight w_r (1.0).
    """
    o = _options("npo", options, {"beta": 0.1, "retain_weight": 1.0})
    forget = _forget_rows(batch, "npo")
    out = model(**batch)
    nll = sequence_nll(out.logits, batch["labels"])
    beta = o["beta"]
    logs = _set_logs(nll, forget, "nll")
    if forget.any():
        ref = sequence_nll(_reference(model, _rows(batch, forget)).logits, batch["labels"][forget])
        npo = -(2.0 / beta) * F.logsigmoid(beta * (nll[forget] - ref)).mean()
        logs["nll_ref_forget"] = float(ref.mean())
    else:
        npo = nll.sum() * 0.0
    core = npo + o["retain_weight"] * _set_mean(nll, ~forget)
    return _finish(model, out, core, logs)


@register_objective("rmu")
def representation_misdirection(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> Result:
    """RMU: at one layer, push F's hidden states toward c·u and keep R's where the unedited model has them.

    ``mean_{F tokens} mean_d (h − c·u)² + α · mean_{R tokens} mean_d (h − h_ref)²``, with u the
    fixed random unit vector ``rmu_direction(d, seed)`` and h_ref the hidden state with every
    intervention switched off (no gradients; retain rows only). h is ``hidden_states[layer + 1]``
    of ``output_hidden_states=True``, the output of block ``layer`` (for the last block of most
    HF decoders that entry is taken after the final norm). The layer must be at or after an
    edited one, or the loss has no gradient.
    Options: layer (block index, negative from the end, or a depth fraction; -1),
    c (6.5, RMU's steering coefficient for 7B models: scale it to the model's hidden-state norms),
    alpha (1.0), seed (0), tokens: ``response`` (positions predicting a response token, i.e. the
    last prompt token and the response) or ``all`` (every non-padding token).
    """
    o = _options("rmu", options, {"layer": -1, "c": 6.5, "alpha": 1.0, "seed": 0, "tokens": "response"})
    if o["tokens"] not in ("response", "all"):
        raise ConfigError(f"{FIELD}.tokens", f"must be 'response' or 'all', got {o['tokens']!r}")
    forget = _forget_rows(batch, "rmu")
    n_layers = sites.num_layers(_unwrap(model).config)
    layer = resolve_layers(o["layer"], n_layers, f"{FIELD}.layer")[0]
    out = model(**batch, output_hidden_states=True)
    h = out.hidden_states[layer + 1]
    if o["tokens"] == "all":
        tokens = batch["attention_mask"].bool()
    else:
        tokens = torch.zeros_like(batch["labels"], dtype=torch.bool)
        tokens[:, :-1] = batch["labels"][:, 1:] != IGNORE
    u = rmu_direction(h.shape[-1], o["seed"]).to(h.device)
    mse = ((h.float() - o["c"] * u) ** 2).mean(-1)  # (B, T)
    w = (tokens & forget[:, None]).float()
    forget_term = (mse * w).sum() / w.sum().clamp(min=1)
    retain = ~forget
    if retain.any():
        ref = _reference(model, _rows(batch, retain), output_hidden_states=True).hidden_states[layer + 1]
        w = tokens[retain].float()
        retain_term = (((h[retain].float() - ref.float()) ** 2).mean(-1) * w).sum() / w.sum().clamp(min=1)
    else:
        retain_term = h.sum() * 0.0
    core = forget_term + o["alpha"] * retain_term
    logs = {"rmu_forget": float(forget_term.detach()), "rmu_retain": float(retain_term.detach())}
    return _finish(model, out, core, logs)

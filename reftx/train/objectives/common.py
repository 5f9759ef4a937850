"""Training objectives: how a batch becomes a loss. The loop calls one by name (``train.objective``).

An objective is ``fn(model, batch, options) -> (loss, logs, out)`` registered with
``@register_objective("name", options=Options)``: ``model`` is the (possibly DDP-wrapped)
ReftModel, ``batch`` the collated dict (input_ids, attention_mask, labels, example_info),
``options`` an instance of the objective's frozen ``Options`` dataclass, built from
``train.objective_options`` by the same strict converter as every other section (unknown keys get
a did-you-mean with the dotted path; ``reftx validate`` and ``plan`` check them before anything
runs); ``logs`` are floats for metrics.jsonl. An objective without options rejects any key.
An objective that samples and scores (reftx.train.objectives.grpo's ``grpo``) also takes ``env=`` (a
``reftx.train.objectives.grpo.Env``: the tokenizer and the task's reward), which the runner supplies.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from reftx.engine import sites
from reftx.core.convert import NoOptions, from_dict, require
from reftx.core.errors import DataError
from reftx.engine.model import unwrap
from reftx.engine.positions import IGNORE
from reftx.core.registry import Registry
from reftx.engine.schedule import resolve_layers

Objective = Callable[[Any, dict[str, Any], dict[str, Any]], tuple[Tensor, dict[str, float], Any]]
OBJECTIVES: Registry[Objective] = Registry("objective")


FIELD = "train.objective_options"


def register_objective(name: str, options: type | None = None, needs_guidance: bool = False,
                       replace: bool = False, pairs_by: str | None = None) -> Callable[[Objective], Objective]:
    """Register ``fn`` under ``name``; ``options``: its frozen options dataclass (None: no options);
    ``needs_guidance``: its batches carry the guided copy of each example (reftx.data: the
    ``guided_*`` keys, built from ``Example.guidance``), as reftx.train.objectives.nlft's objective needs;
    ``replace``: see ``reftx.core.registry.Registry``; ``pairs_by``: an ``example_info`` key that
    makes the run pair its batches (reftx.data.pairing): each of the B examples with key 1 (forget)
    with one drawn at random among those with 0 (retain), an epoch being one pass over the first."""

    cls = options or NoOptions

    def add(fn: Objective) -> Objective:
        @functools.wraps(fn)
        def call(model: Any, batch: dict[str, Any], opts: Any = None, **env: Any) -> Any:
            if not isinstance(opts, cls):  # a plain dict (tests, direct calls): convert it strictly
                opts = from_dict(cls, dict(opts or {}), FIELD)
            return fn(model, batch, opts, **env)

        call.Options = cls  # type: ignore[attr-defined]
        call.needs_env = "env" in inspect.signature(fn).parameters  # type: ignore[attr-defined]
        call.needs_guidance = needs_guidance  # type: ignore[attr-defined]
        call.pairs_by = pairs_by  # type: ignore[attr-defined]
        return OBJECTIVES.register(name, replace)(call)

    return add


def objective_options(name: str, raw: dict[str, Any] | None) -> Any:
    """``train.objective_options`` as the typed options of objective ``name`` (strictly checked)."""
    fn = OBJECTIVES.get(name, "train.objective")
    return from_dict(fn.Options, dict(raw or {}), FIELD)


def needs_guidance(name: str) -> bool:
    """Whether objective ``name``'s batches carry the guided copy of each example (reftx.train.objectives.nlft)."""
    return bool(getattr(OBJECTIVES.get(name, "train.objective"), "needs_guidance", False))


def _finite_at_least(obj: object, minimum: float, *names: str, strict: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        ok = math.isfinite(v) and (v > minimum if strict else v >= minimum)
        require(ok, name, f"must be a finite number {'>' if strict else '>='} {minimum}, got {v!r}")


@register_objective("nll")
def nll(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> tuple[Tensor, dict[str, float], Any]:
    """Causal-LM negative log-likelihood of the response tokens. A batch with none would give 0/0 = NaN:
    the runner refuses such examples by name before training (reftx.data.checks), and the loop stops
    on a non-finite loss, so the train step carries no extra check (no extra device sync)."""
    out = model(**batch)
    return out.loss, {}, out


@register_objective("classify")
def classify(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> tuple[Tensor, dict[str, float], Any]:
    """Cross-entropy of a sequence-classification model's logits (``model.task:
    sequence-classification``) against ``example_info["label"]`` (a class index per example, as
    reftx.eval.classify describes), plus the primitives' auxiliary losses. No options."""
    from reftx.eval.classify import LABEL

    info = batch.get("example_info") or {}
    if LABEL not in info:
        raise DataError(f"objective 'classify' needs example_info[{LABEL!r}] (a class index) on every example; "
                        f"this batch has {sorted(info)}")
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    target = info[LABEL].to(out.logits.device).long()
    core = F.cross_entropy(out.logits.float(), target)
    logs = {"accuracy": float((out.logits.argmax(-1) == target).float().mean())}
    return result(out, core, logs)


# -- unlearning objectives (GRUN, METHODS.md §4) ---------------------------------------------------
# Every example carries ``example_info["gate_label"]``: 1 = forget set F, 0 = retain set R (the
# key GRUN's gate loss reads too). A run pairs their batches (``pairs_by``, reftx.data.pairing, as
# open-unlearning's ForgetRetainDataset): B forget rows, then B retain rows drawn at random.
# gd / idk / npo reduce each half as open-unlearning's trainers do (d3d7cf9,
# src/trainer/unlearn/grad_diff.py:41-60, npo.py:12-31): an NLL term of a half is HF's
# ``outputs.loss`` on that half alone, the mean over *all* its answer tokens pooled (long answers
# weigh more), and NPO's forget term is the mean over the forget rows of a function of each row's
# summed NLL; a half the batch lacks (possible only when an objective is called directly)
# contributes 0. The primitives' auxiliary losses (e.g. GRUN's gate BCE) and the modifiers' terms are
# added by the driver (reftx.train.loss.compose).
GATE_LABEL = "gate_label"
Result = tuple[Tensor, dict[str, float], Any]


def sequence_nll(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """NLL of each example's response. logits (B, T, V), labels (B, T) -> (B,).

    reduction "mean": the mean token NLL; "sum": the sequence NLL (−log p(response | prompt), what
    NPO and TOFU compare). Position t predicts token t + 1; positions whose next label is -100 are
    ignored. An example without response tokens gets 0.
    """
    target = labels[:, 1:]
    tok = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    if reduction == "sum":
        return tok.sum(1)
    count = (target != IGNORE).sum(1)
    return tok.sum(1) / count.clamp(min=1)


def half_token_mean(logits: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
    """The mean token NLL over every answer token of the rows in ``rows`` (B,) bool, pooled: what a
    HF causal LM's ``outputs.loss`` is on a batch of just those rows (open-unlearning's GD, IDK and
    retain terms). 0 (in the graph) when the rows hold no answer token."""
    total = sequence_nll(logits, labels, "sum")
    count = (labels[:, 1:] != IGNORE).sum(1).to(total.dtype)
    w = rows.to(total.dtype)
    return (total * w).sum() / (count * w).sum().clamp(min=1)


def npo_forget_term(nll: Tensor, ref: Tensor, beta: float) -> Tensor:
    """``−(2/β)·mean log σ(β(NLL_θ − NLL_ref))`` over the forget rows (NLLs of shape (n,)).

    Its gradient with respect to row i's NLL_θ is ``−2σ(−βΔ_i)/n`` (Δ_i = NLL_θ − NLL_ref): the
    NPO weight, 1 at the start (Δ = 0) and falling toward 0 as the row is forgotten. Reference:
    open-unlearning ``src/trainer/utils.py`` (``compute_dpo_loss`` with no preferred answer,
    ``compute_batch_nll``: the NLL summed over the answer tokens)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref)).mean()


def rmu_direction(dim: int, seed: int) -> Tensor:
    """RMU's fixed random unit vector u (float32, CPU): uniform in [0, 1)^d, normalised."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def _forget_rows(batch: dict[str, Any], name: str) -> Tensor:
    """(B,) bool: which examples belong to the forget set."""
    info = batch.get("example_info") or {}
    label = info.get(GATE_LABEL)
    if label is None:
        raise DataError(f"objective {name!r} needs example_info[{GATE_LABEL!r}] on every example (1 forget, "
                        f"0 retain), e.g. from task tofu_unlearn; this batch has {sorted(info)}")
    return label.to(batch["input_ids"].device) > 0.5


def _rows(batch: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The batch restricted to some examples (positions depend only on each row's own mask and labels)."""
    out = {k: v[rows] for k, v in batch.items() if isinstance(v, Tensor)}
    if "example_info" in batch:
        out["example_info"] = {k: v[rows] for k, v in batch["example_info"].items()}
    return out


def _reference(model: Any, batch: dict[str, Any], **kwargs: Any) -> Any:
    """The same model with every intervention switched off (no gradients): the reference model."""
    base = unwrap(model)
    with torch.no_grad(), base.disabled():
        return base(**batch, **kwargs)


def _halves(out: Any, batch: dict[str, Any], forget: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The forget and retain halves' pooled token NLLs (``half_token_mean``) and their logs
    (``nll_forget`` / ``nll_retain``, for the halves the batch holds)."""
    halves = [half_token_mean(out.logits, batch["labels"], rows) for rows in (forget, ~forget)]
    logs = {f"nll_{tag}": float(v.detach()) for tag, v, rows in zip(("forget", "retain"), halves, (forget, ~forget))
            if rows.any()}
    return halves[0], halves[1], logs


def finish(model: Any, out: Any, core: Tensor, logs: dict[str, float]) -> Result:
    """Before 0.2 an objective composed its loss here; the driver composes it now, so this is
    :func:`result` (kept for one release, with a DeprecationWarning)."""
    import warnings

    warnings.warn("reftx finish(model, out, core, logs) is now result(out, core, logs): the training loss "
                  "is composed by the driver (reftx.train.loss.compose)", DeprecationWarning, stacklevel=2)
    return result(out, core, logs)


def result(out: Any, core: Tensor, logs: dict[str, float]) -> Result:
    """An objective's result: its core term (logged as ``objective``), its logs and the forward's
    output. The primitives' auxiliary losses and the modifiers' terms are added by the driver that
    trains (reftx.train.loss.compose), never here."""
    logs["objective"] = float(core.detach())
    return core, logs, out


@dataclass(frozen=True)
class RetainOptions:
    """Options of gd and idk."""

    retain_weight: float = 1.0  # w_r: weight of the retain-set NLL (>= 0); open-unlearning's alpha (its gamma, the forget weight, is 1)

    def __post_init__(self) -> None:
        _finite_at_least(self, 0.0, "retain_weight")


@register_objective("gd", RetainOptions, pairs_by=GATE_LABEL)
def gradient_difference(model: Any, batch: dict[str, Any], options: RetainOptions) -> Result:
    """Gradient difference: ``−NLL_F + w_r·NLL_R``, each NLL the pooled token mean of its half of
    the paired batch, as open-unlearning's GradDiff (``grad_diff.py:41-60``, γ = 1, α = w_r).
    Options: retain_weight w_r (1.0).

    Unbounded below (ascent on F): stop it by steps, or let GRUN's gate confine the damage.
    """
    forget = _forget_rows(batch, "gd")
    out = model(**batch)
    nll_f, nll_r, logs = _halves(out, batch, forget)
    return result(out, -nll_f + options.retain_weight * nll_r, logs)


@register_objective("idk", RetainOptions, pairs_by=GATE_LABEL)
def i_dont_know(model: Any, batch: dict[str, Any], options: RetainOptions) -> Result:
    """``NLL_F + w_r·NLL_R``, where the task has replaced the forget targets by "I don't know"-style
    answers (tofu_unlearn with ``idk: true``); each NLL the pooled token mean of its half, GradDiff's
    reduction with the forget sign flipped. Documented difference: TOFU's own ``idk`` loss
    (locuslab/tofu ``dataloader.py:134-145``) takes one token mean over both halves together.
    Options: retain_weight (1.0)."""
    forget = _forget_rows(batch, "idk")
    out = model(**batch)
    nll_f, nll_r, logs = _halves(out, batch, forget)
    return result(out, nll_f + options.retain_weight * nll_r, logs)


@dataclass(frozen=True)
class NpoOptions:
    """Options of npo."""

    beta: float = 0.1  # β: inverse temperature of the preference term (> 0)
    retain_weight: float = 1.0  # w_r: weight of the retain-set NLL (>= 0)
    nll: Literal["sum", "mean"] = "sum"  # NLL in the preference term: sum = the sequence NLL (NPO, open-unlearning); mean = mean token NLL (reftx before the fix: β effectively 20-40x smaller, NPO ≈ GD)

    def __post_init__(self) -> None:
        _finite_at_least(self, 0.0, "beta", strict=True)
        _finite_at_least(self, 0.0, "retain_weight")


@register_objective("npo", NpoOptions, pairs_by=GATE_LABEL)
def negative_preference(model: Any, batch: dict[str, Any], options: NpoOptions) -> Result:
    """NPO: ``−(2/β)·mean_F log σ(β(NLL_θ − NLL_ref)) + w_r·NLL_R`` (open-unlearning ``npo.py:12-31``).

    NLL_θ and NLL_ref are sequence NLLs (summed over the answer tokens, as NPO and open-unlearning
    compute them; ``nll: mean`` gives the mean token NLL instead); NLL_R is the pooled token mean of
    the retain half (HF's ``outputs.loss`` on it). NLL_ref comes from the same model with its
    interventions switched off (``model.disabled()``, no gradients), run on the forget rows only.
    The forget term is (2/β)·log 2 at the start (NLL_θ = NLL_ref) and falls toward 0 as NLL_θ rises
    above NLL_ref; unlike GD it is bounded. Options: beta β (0.1), retain_weight w_r (1.0), nll (sum).
    """
    o = options
    forget = _forget_rows(batch, "npo")
    out = model(**batch)
    _, nll_r, logs = _halves(out, batch, forget)
    if forget.any():
        labels = batch["labels"][forget]
        ref = sequence_nll(_reference(model, _rows(batch, forget)).logits, labels, o.nll)
        mine = sequence_nll(out.logits[forget], labels, o.nll)
        npo = npo_forget_term(mine, ref, o.beta)
        logs["nll_ref_forget"] = float(ref.mean())
        logs["npo_weight_forget"] = float((2 * torch.sigmoid(-o.beta * (mine - ref))).detach().mean())
    else:
        npo = out.logits.sum() * 0.0
    return result(out, npo + o.retain_weight * nll_r, logs)


@dataclass(frozen=True)
class RmuOptions:
    """Options of rmu."""

    layer: int | float = -1  # block whose output is steered: an index (negative from the end) or a depth fraction
    c: float = 6.5  # steering coefficient (> 0); RMU's value for 7B models: scale it to the hidden-state norms
    alpha: float = 1.0  # weight of the retain term (>= 0)
    seed: int = 0  # seed of the random direction u
    tokens: Literal["response", "all"] = "response"  # response: positions predicting a response token; all: every non-padding token

    def __post_init__(self) -> None:
        _finite_at_least(self, 0.0, "c", strict=True)
        _finite_at_least(self, 0.0, "alpha")


@register_objective("rmu", RmuOptions, pairs_by=GATE_LABEL)
def representation_misdirection(model: Any, batch: dict[str, Any], options: RmuOptions) -> Result:
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
    Batches are paired as gd's. Documented difference: open-unlearning's RMU (``rmu.py:108-117``)
    averages each row's tokens first, then the rows, over the answer tokens' own positions (line 158).
    """
    o = options
    forget = _forget_rows(batch, "rmu")
    n_layers = sites.num_layers(unwrap(model).config)
    layer = resolve_layers(o.layer, n_layers, f"{FIELD}.layer")[0]
    out = model(**batch, output_hidden_states=True)
    h = out.hidden_states[layer + 1]
    if o.tokens == "all":
        tokens = batch["attention_mask"].bool()
    else:
        tokens = torch.zeros_like(batch["labels"], dtype=torch.bool)
        tokens[:, :-1] = batch["labels"][:, 1:] != IGNORE
    u = rmu_direction(h.shape[-1], o.seed).to(h.device)
    mse = ((h.float() - o.c * u) ** 2).mean(-1)  # (B, T)
    w = (tokens & forget[:, None]).float()
    forget_term = (mse * w).sum() / w.sum().clamp(min=1)
    retain = ~forget
    if retain.any():
        ref = _reference(model, _rows(batch, retain), output_hidden_states=True).hidden_states[layer + 1]
        w = tokens[retain].float()
        retain_term = (((h[retain].float() - ref.float()) ** 2).mean(-1) * w).sum() / w.sum().clamp(min=1)
    else:
        retain_term = h.sum() * 0.0
    core = forget_term + o.alpha * retain_term
    logs = {"rmu_forget": float(forget_term.detach()), "rmu_retain": float(retain_term.detach())}
    return result(out, core, logs)

"""CARFT's contrastive signal (METHODS.md §8) as pure tensor functions, for a reinforced-finetuning
(GRPO) recipe that samples G chains of thought (CoTs) per question.

Zhu, Liu, Zhang, Wu, Zhang 2025, "CARFT: Boosting LLM Reasoning via Contrastive Learning with
Annotated Chain-of-Thought-based Reinforced Fine-Tuning" (arXiv 2508.15868, EMNLP 2025). Only the
abstract and third-party summaries of the paper could be read offline, so the exact form below is
taken from the authors' code, github.com/WNQzhu/CARFT (read, not copied): ``code/vae/scripts/
my_cl_trainer_v4.py`` (its README: "use cl_trainer_v4 to reproduce the results in the paper"),
``modeling_hidden_head_v2.py`` (the CoT embedding), ``my_cl_config.py`` (defaults) and
``my_cl_trainer_v11.py`` (the embedding-enhanced partial reward). Marked [code] below; [ours] marks
our choices.

Notation: question q = 1..Q with annotated CoT and G sampled CoTs (q, g); ``correct[q, g]`` is 1
when the sample reaches the gold answer (ReFT reward 1).

* Representation [code]. z = Σ_t w_t P(h_t) over the CoT's tokens t (prompt and padding
  excluded), h_t the last layer's hidden state (``layer``), P a learned Linear(d, 64): in the
  authors' code the first layer of their PPO value head (``modeling_hidden_head_v2.py``:45-47, 63,
  185: the 64-d ``proj_output`` before the ReLU), w = softmax_t(V_t) with V_t that head's per-token
  value (``my_cl_trainer_v4.py``:762-764, 779-783, ``masked_softmax`` 1241-1259). Here P is its own
  head (``CoTProjection``, ``representation: projection``, the default), trained by the run's
  optimizer through L_CL and saved, checkpointed and resumed with the interventions
  (``ReftModel.add_extra``). The weights w are the value head's under PPO (``cot_pair``'s
  ``value_fn`` / ``sample_values``: the hook a PPO objective passes its value head through); GRPO
  has no value head, so there w_t = 1/|CoT|. P is affine and Σ w_t = 1, so P is applied after
  pooling (the same z, one matrix product per CoT). ``representation: pooled`` [ours, reftx before
  issue 26] uses z = Σ_t w_t h_t itself: on real models those vectors share a dominant component
  and their cosines sit above κ (0.94-0.99 on the default model; 0.915-0.99 in the shipped run),
  where the clamped numerator is constant and the term only pushes every sample, correct ones
  included, away from the anchor.
* Input centring [ours]. The authors' P is ``nn.Linear`` at its init; a random linear map keeps
  that dominant component, so the projected cosines start above κ as well (0.95-0.98 on the
  default model) and the term does not pull a correct sample toward the anchor.
  ``projection_init: centred`` (the default) keeps that init and has P read the pooled states
  minus μ, their mean over the first batch (anchors and samples), a fixed buffer set once:
  z = W·(h − μ) + b, an affine map of h like the authors' (a data-dependent input centring, as one
  standardises features before a linear layer). Cosines then start spread around 0, below κ. A bias
  set to −W·μ instead (the same z at init) does not last: the optimizer's first steps on W change
  W·h by the dominant component (one AdamW step at lr 1e-3 brought both cosines back to 0.97 on
  the default model). ``random`` is the authors' init (μ = 0).
* Anchor [code]. a_q = z(annotated CoT of q) under the policy, computed without gradients in
  the authors' rollout: sg(a_q). Gradients reach only the sampled CoTs (``detach_anchor``).
* Positive signal [code]. With c_qg = cos(a_q, s_qg), ĉ = min(c, κ) (κ = 0.9: stop pulling once a
  sample is close, so it is not collapsed onto the annotated CoT) and temperature τ (0.2), each
  correct sample contributes

      ℓ_qg = −log( exp(ĉ_qg / τ) / Σ_{(q',g') ∈ D} exp(cos(a_q, s_q'g') / τ) ),

  D = every sampled CoT in the batch (``negatives="batch"``; the authors all-gather over devices,
  here: whatever the caller passes), its own unclamped term included. L_CL = mean of ℓ over the
  correct samples; 0 when there are none (questions without a correct sample contribute nothing).
  [ours] ``negatives="wrong"``: D = {(q, g)} ∪ the wrong samples of question q, the METHODS.md
  reading "push wrong ones away" within the group; a question without a wrong sample contributes
  nothing then.
* Objective [code]. L = L_RL + λ·L_CL, λ = ``weight`` (0.1; the authors sweep 0.001..1). The
  recipe adds it; these functions return L_CL unweighted.
* Embedding-enhanced partial reward [code, v11]. A sample whose reward is ReFT's partial reward
  0.1 (a number extracted, wrong) gets 0.1·cos(a_q, s_qg) + 0.2 instead (in [0.1, 0.3]).
* Not implemented: the authors' negative signal (``my_cl_trainer_v9.py``, not the version their
  README names for the paper's results) pools sub-sequences found by a token-level longest common
  subsequence between the annotated and a wrong CoT; it needs the token alignment, not just pooled
  representations, and its exact form in the paper could not be checked offline.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reftx.core.convert import require
from reftx.core.errors import ConfigError
from reftx.engine.model import unwrap

NEGATIVES = ("batch", "wrong")
PROJECTION = "carft_projection"  # the extra (ReftModel.add_extra) holding the learned projection


@dataclass(frozen=True)
class CARFTOptions:
    """CARFT's options, for embedding in a reinforced-finetuning recipe's options."""

    weight: float = 0.1  # λ: L = L_RL + λ·L_CL (>= 0; authors' default cl_coef 0.1, swept 0.001..1)
    temperature: float = 0.2  # τ of the InfoNCE term (> 0; authors' cl_tau)
    max_similarity: float | None = 0.9  # κ: the positive's cosine is clamped to <= κ (authors: 0.9); null: no clamp
    negatives: Literal["batch", "wrong"] = "batch"  # denominator: batch = every sampled CoT passed (authors); wrong = the positive and its question's wrong samples (ours)
    detach_anchor: bool = True  # no gradient through the annotated CoT's representation (authors compute it without gradients)
    representation: Literal["projection", "pooled"] = "projection"  # projection: a learned Linear(d, projection_dim) of the pooled states, trained and saved with the interventions (the authors'); pooled: the pooled hidden states (reftx before issue 26; their cosines sit above max_similarity on real models, which inverts the signal: docs/reasoning.md)
    projection_dim: int = 64  # width of the learned projection (authors: 64)
    projection_init: Literal["centred", "random"] = "centred"  # centred: nn.Linear's init, reading the pooled states minus their mean over the first batch (ours: at the authors' init the projected cosines sit above max_similarity too); random: nn.Linear's init on the states themselves (the authors')
    layer: int | float = -1  # block whose output is pooled (hidden_states[layer + 1], resolved by the recipe with schedule.resolve_layers, as rmu does): an index, negative from the end, or a depth fraction; -1 = hidden_states[-1], the authors' choice
    partial_reward: bool = False  # replace the partial reward by the embedding-enhanced one (authors' v11)
    partial_value: float = 0.1  # the reward that marks "a number extracted but wrong" (ReFT's partial reward)
    partial_scale: float = 0.1  # α in α·cos(a, s) + β (authors: 0.1)
    partial_offset: float = 0.2  # β in α·cos(a, s) + β (authors: 0.2)

    def __post_init__(self) -> None:
        w, t, k = self.weight, self.temperature, self.max_similarity
        require(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0, "weight",
                f"must be a finite number >= 0, got {w!r}")
        require(isinstance(t, (int, float)) and math.isfinite(t) and t > 0, "temperature",
                f"must be a finite number > 0, got {t!r}")
        require(k is None or (isinstance(k, (int, float)) and -1 < k <= 1), "max_similarity",
                f"must be a cosine in (-1, 1] or null, got {k!r}")
        require(self.negatives in NEGATIVES, "negatives", f"must be one of {', '.join(NEGATIVES)}, got {self.negatives!r}")
        require(self.representation in ("projection", "pooled"), "representation",
                f"must be projection or pooled, got {self.representation!r}")
        require(self.projection_init in ("centred", "random"), "projection_init",
                f"must be centred or random, got {self.projection_init!r}")
        require(isinstance(self.projection_dim, int) and not isinstance(self.projection_dim, bool)
                and self.projection_dim >= 1, "projection_dim", f"must be an integer >= 1, got {self.projection_dim!r}")
        layer = self.layer
        require(not isinstance(layer, bool) and isinstance(layer, (int, float))
                and (isinstance(layer, int) or 0.0 <= layer <= 1.0), "layer",
                f"must be a layer index or a depth fraction in [0, 1], got {layer!r}")
        for name in ("partial_value", "partial_scale", "partial_offset"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and math.isfinite(v), name, f"must be a finite number, got {v!r}")


def cot_representation(hidden: Tensor, mask: Tensor, scores: Tensor | None = None) -> Tensor:
    """One vector per CoT: hidden (B, T, d), mask (B, T) bool (True on the CoT's tokens) -> (B, d) float32.

    ``scores`` None: the masked mean Σ_{t∈M} h_t / |M| (our default). ``scores`` (B, T): the
    weights softmax over the masked tokens of ``scores`` (the authors pass their value head's
    per-token values). A row without any masked token (an empty completion, which sampling can
    produce) gets the zero vector, whose cosine with anything is 0 in ``contrastive_loss``.
    Computed in float32 (a bf16 sum over hundreds of tokens loses digits).
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"cot_representation: hidden must be (B, T, d) and mask (B, T); got "
                         f"{tuple(hidden.shape)} and {tuple(mask.shape)}")
    m = mask.bool()
    h = hidden.float()
    if scores is None:
        w = m.float() / m.sum(1, keepdim=True).clamp(min=1)
    else:
        if scores.shape != m.shape:
            raise ValueError(f"cot_representation: scores must be (B, T) like mask; got {tuple(scores.shape)}")
        # a finite fill, not -inf: a row with no token stays finite (uniform, then zeroed by the mask)
        logits = scores.float().masked_fill(~m, torch.finfo(torch.float32).min)
        w = torch.softmax(logits, dim=1) * m
    return torch.einsum("bt,btd->bd", w, h)


def group_similarity(annotated: Tensor, sampled: Tensor) -> Tensor:
    """cos(a_q, s_qg): annotated (Q, d), sampled (Q, G, d) -> (Q, G) float32 (0 for a zero vector)."""
    _check(annotated, sampled)
    a = F.normalize(annotated.float(), dim=-1)
    s = F.normalize(sampled.float(), dim=-1)
    return torch.einsum("qd,qgd->qg", a, s)


def contrastive_loss(annotated: Tensor, sampled: Tensor, correct: Tensor, temperature: float, *,
                     max_similarity: float | None = 0.9, negatives: str = "batch",
                     detach_anchor: bool = True) -> tuple[Tensor, dict[str, float]]:
    """CARFT's positive contrastive term L_CL (the module docstring has the formula).

    annotated (Q, d): a_q; sampled (Q, G, d): s_qg; correct (Q, G) bool. Returns the scalar
    float32 loss (unweighted; 0 in the graph when no sample contributes) and logs:
    ``carft_loss``, ``carft_positives`` (samples contributing), ``carft_questions`` (questions
    contributing), ``carft_sim_correct`` / ``carft_sim_wrong`` (mean cos(a_q, s_qg) over the
    correct / wrong samples, when there are any).
    """
    _check(annotated, sampled)
    if correct.shape != sampled.shape[:2]:
        raise ValueError(f"contrastive_loss: correct must be (Q, G) = {tuple(sampled.shape[:2])}, got {tuple(correct.shape)}")
    if not temperature > 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"contrastive_loss: negatives must be one of {NEGATIVES}, got {negatives!r}")
    ok = correct.bool()
    q, g, d = sampled.shape
    a = F.normalize((annotated.detach() if detach_anchor else annotated).float(), dim=-1)
    s = F.normalize(sampled.float(), dim=-1)
    own = torch.einsum("qd,qgd->qg", a, s)  # c_qg
    top = (own if max_similarity is None else own.clamp(max=max_similarity)) / temperature
    if negatives == "batch":
        every = a @ s.reshape(q * g, d).T / temperature  # (Q, Q·G): a_q against every sample
        log_denominator = torch.logsumexp(every, dim=1, keepdim=True).expand(q, g)
        use = ok
    else:
        # a finite fill, not -inf: a question without a wrong sample keeps finite gradients (it is not used)
        wrong_logits = (own / temperature).masked_fill(ok, torch.finfo(torch.float32).min)
        lse_wrong = torch.logsumexp(wrong_logits, dim=1, keepdim=True)
        log_denominator = torch.logaddexp(own / temperature, lse_wrong)
        use = ok & (~ok).any(1, keepdim=True)
    terms = torch.where(use, log_denominator - top, torch.zeros_like(top))
    loss = terms.sum() / use.sum().clamp(min=1)
    return loss, _logs(loss, own.detach(), ok, use)


def embedding_partial_reward(annotated: Tensor, sampled: Tensor, rewards: Tensor, *, partial: float = 0.1,
                             scale: float = 0.1, offset: float = 0.2) -> Tensor:
    """Rewards (Q, G) with each partial reward replaced by ``scale·cos(a_q, s_qg) + offset``.

    annotated (Q, d), sampled (Q, G, d), rewards (Q, G) -> new rewards (Q, G) in rewards' dtype,
    without gradients. A reward equal to ``partial`` (ReFT's 0.1: a number was extracted but it is
    wrong) becomes 0.1·cos + 0.2 ∈ [0.1, 0.3] with the defaults (authors' v11), so a wrong answer
    whose reasoning resembles the annotated CoT earns more; other rewards are unchanged.
    """
    if rewards.shape != sampled.shape[:2]:
        raise ValueError(f"embedding_partial_reward: rewards must be (Q, G) = {tuple(sampled.shape[:2])}, "
                         f"got {tuple(rewards.shape)}")
    with torch.no_grad():
        cos = group_similarity(annotated, sampled)
        hit = torch.isclose(rewards.float(), torch.tensor(float(partial), device=rewards.device))
        return torch.where(hit, scale * cos + offset, rewards.float()).to(rewards.dtype)


class CoTProjection(nn.Module):
    """CARFT's learned projection z = W·(h − μ) + b (float32): d -> ``dim`` (the authors' 64-d
    ``ValueHead.proj``, with μ = 0). Initialised as ``nn.Linear`` initialises (U(±1/√d) for W and b),
    from ``seed`` without drawing from the global RNG; ``centred``: μ is set by ``centre_`` on the
    first batch (buffers ``centre`` and ``ready``, saved with the head, so a resumed run keeps its μ)."""

    def __init__(self, d: int, dim: int = 64, seed: int = 0, centred: bool = True):
        super().__init__()
        self.linear = nn.utils.skip_init(nn.Linear, d, dim)
        g, bound = torch.Generator().manual_seed(seed), 1 / math.sqrt(d)
        with torch.no_grad():
            self.linear.weight.copy_(torch.rand(dim, d, generator=g) * 2 * bound - bound)
            self.linear.bias.copy_(torch.rand(dim, generator=g) * 2 * bound - bound)
        self.register_buffer("centre", torch.zeros(d))  # μ, subtracted from the input (0: none)
        self.register_buffer("ready", torch.tensor(0.0 if centred else 1.0))

    @torch.no_grad()
    def centre_(self, pooled: Tensor) -> None:
        """μ = the mean of the rows of ``pooled`` (n, d) (averaged over processes when distributed),
        fixed from then on: the projection reads h − μ; once."""
        mean = pooled.float().mean(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
        self.centre.copy_(mean)
        self.ready.fill_(1.0)

    def forward(self, pooled: Tensor) -> Tensor:
        """(..., d) -> (..., dim) float32: W·(h − μ) + b; a zero row (a CoT without tokens) stays
        zero (cosine 0)."""
        z = self.linear(pooled.float() - self.centre)
        return torch.where((pooled != 0).any(-1, keepdim=True), z, torch.zeros_like(z))


def prepare_projection(model: Any, c: CARFTOptions, first_use: bool = False) -> CoTProjection | None:
    """The model's learned projection (``representation: projection``), added as an extra before the
    optimizer is built (the runner calls the objective's ``prepare``), seeded by ``torch.initial_seed()``
    (the run's seed); the existing one when the model has it; None for ``representation: pooled``.
    ``first_use``: called by the objective itself (a direct call without ``prepare``), which warns:
    an optimizer built before that call does not train the new head."""
    if c.representation != "projection":
        return None
    reft = unwrap(model)
    if not hasattr(reft, "add_extra"):
        raise ConfigError("train.objective_options.contrastive.representation",
                          f"projection trains a head kept with the interventions, which {type(reft).__name__} "
                          "(a lora: section) cannot carry: set representation: pooled")
    if PROJECTION not in reft.extras:
        d = reft.config.hidden_size
        reft.add_extra(PROJECTION, CoTProjection(d, c.projection_dim, torch.initial_seed() % 2**63,
                                                 c.projection_init == "centred"))
        if first_use:
            warnings.warn("carft: the learned projection was created on the objective's first call; an optimizer "
                          "built before it does not train it: call the objective's prepare(model, options) first "
                          "(reftx run does)", stacklevel=3)
    return reft.extras[PROJECTION]


def cot_pair(model: Any, batch: dict[str, Any], hidden_states: tuple, width: int, cmask: Tensor, c: CARFTOptions,
             layer: int, group: int, *, value_fn: Callable[[Tensor], Tensor] | None = None,
             sample_values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(annotated (Q, k), sampled (Q, G, k)): the representations of the batch's annotated CoTs (a
    forward of the policy on the batch, without gradient when ``detach_anchor``) and of the G
    sampled CoTs per question, from ``hidden_states`` of the policy's forward on prompt (``width``
    columns, left-padded) + completions (mask ``cmask`` (N, L)); ``layer`` resolved.

    The value-head hook (PPO): ``value_fn`` maps the last layer's hidden states (B, T, d) to per-token
    values (B, T); with it the annotated CoT's tokens are weighted by softmax of its values, and the
    samples' by softmax of ``sample_values`` (N, L, over the completion, with gradient as the authors
    have it) or of ``value_fn`` on ``hidden_states[-1]``. Without it (GRPO): the masked mean."""
    projection = prepare_projection(model, c, first_use=True)
    if value_fn is not None and sample_values is None:
        sample_values = value_fn(hidden_states[-1])[:, width:]
    sampled = cot_representation(hidden_states[layer + 1][:, width:], cmask.bool(), sample_values)
    with torch.no_grad() if c.detach_anchor else contextlib.nullcontext():
        ann = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    output_hidden_states=True)
        values = value_fn(ann.hidden_states[-1]) if value_fn is not None else None
        annotated = cot_representation(ann.hidden_states[layer + 1], batch["labels"] != -100, values)
    if projection is not None:
        if not bool(projection.ready):
            rows = torch.cat([annotated, sampled]).detach()
            projection.centre_(rows[(rows != 0).any(-1)])
        with torch.no_grad() if c.detach_anchor else contextlib.nullcontext():
            annotated = projection(annotated)
        sampled = projection(sampled)
    return annotated, sampled.reshape(-1, group, sampled.shape[-1])


def _check(annotated: Tensor, sampled: Tensor) -> None:
    if annotated.dim() != 2 or sampled.dim() != 3 or sampled.shape[0] != annotated.shape[0] \
            or sampled.shape[2] != annotated.shape[1]:
        raise ValueError(f"annotated must be (Q, d) and sampled (Q, G, d); got {tuple(annotated.shape)} "
                         f"and {tuple(sampled.shape)}")


def _logs(loss: Tensor, own: Tensor, correct: Tensor, used: Tensor) -> dict[str, float]:
    logs = {"carft_loss": float(loss.detach()), "carft_positives": float(used.sum()),
            "carft_questions": float(used.any(1).sum())}
    for tag, rows in (("correct", correct), ("wrong", ~correct)):
        if rows.any():
            logs[f"carft_sim_{tag}"] = float(own[rows].mean())
    return logs

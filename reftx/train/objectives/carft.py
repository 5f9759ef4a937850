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

* Representation [code, adapted]. z = Σ_t w_t h_t over the CoT's tokens t (prompt and padding
  excluded), h_t the hidden state of one layer. The authors take the last layer, project each token
  with a learned Linear(d, 64) (the first layer of their PPO value head) and weight tokens by
  w = softmax_t(V_t), V_t the value head's per-token value. GRPO has no value head, so [ours]
  the default is the masked mean, w_t = 1/|CoT| (``cot_representation(..., scores=None)``);
  passing per-token ``scores`` gives the authors' softmax weighting. Pooling is linear, so a
  projection head, if the recipe learns one, may be applied before or after pooling alike.
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

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from reftx.core.convert import require

NEGATIVES = ("batch", "wrong")


@dataclass(frozen=True)
class CARFTOptions:
    """CARFT's options, for embedding in a reinforced-finetuning recipe's options."""

    weight: float = 0.1  # λ: L = L_RL + λ·L_CL (>= 0; authors' default cl_coef 0.1, swept 0.001..1)
    temperature: float = 0.2  # τ of the InfoNCE term (> 0; authors' cl_tau)
    max_similarity: float | None = 0.9  # κ: the positive's cosine is clamped to <= κ (authors: 0.9); null: no clamp
    negatives: Literal["batch", "wrong"] = "batch"  # denominator: batch = every sampled CoT passed (authors); wrong = the positive and its question's wrong samples (ours)
    detach_anchor: bool = True  # no gradient through the annotated CoT's representation (authors compute it without gradients)
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

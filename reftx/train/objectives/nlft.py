"""NLFT: token-weighted SFT from the model's own reading of natural-language guidance.

Liu, Wang, Lin, Chen, Hao, Hu, "Natural Language Fine-Tuning" (arXiv:2412.20382, 2024; METHODS.md
§8); released code: github.com/Julia-LiuJ/NLFT (read in the copy at github.com/mortal-94/NLFT,
``modeling_llama_unlikelihood_dynamic_correct.py`` and ``finetune_unlikelihood_dynamic_correct.py``;
nothing is copied). The model scores every response token twice: after the plain prompt, and
after the prompt with natural-language guidance in it (here ``Example.guidance`` in front of the
prompt, reftx.data). Tokens whose probability the guidance changes are the saliency tokens; they
get a larger weight in a token-weighted NLL (tokens the guidance disfavours get their own weight).

What comes from where (the paper's method text was not available offline; its released code was):
* From the paper and its code: the two scorings of the same response, with and without guidance;
  the weights are computed from them without gradient and multiply the per-token NLL; the guided
  scoring runs through the model being trained, i.e. with its current adaptation on (the code
  runs the guided prompts in the same forward as the trained one, through the LoRA model, and
  detaches them); no warm-up.
* ``rule: guided_prob`` is the released code's weight for a *correct* response (GSM8K answers the
  model got right, guidance = the standard answer): p_g = p(y_t | guided prompt) above
  τ_p = 0.95 marks a saliency token, weight 1 + ((p_g − τ_p)/(1 − τ_p))^5 (between 1 and 2);
  every other token (p_g/τ_p)^0.6. Left out: the code's hidden-state clustering that gives
  neighbours of a saliency token the exponent 0.3, its extra unweighted NLL term and its overall
  factor 10 (a constant scale, which AdamW all but ignores).
* ``rule: change`` (the default) is METHODS.md §8's reading: the per-token log-probability change
  Δ_t = log p_g − log p_plain marks the tokens. A token is salient when p_g/p_plain ≥ r and
  disfavoured when p_g/p_plain ≤ 1/r, with r = ``threshold`` = 1.5, the ratio the released code
  uses to find the tokens of an *incorrect* response that a negative verdict makes likelier
  (there it gates an unlikelihood term weighted 2σ(ratio − 1.5), which reftx does not implement).
  The weights 2 (salient: the largest weight the code gives), 0 (disfavoured) and 1 (others) are
  our choices. The default 0 for disfavoured tokens drops them: the response here is the gold one,
  and a negative weight is gradient ascent on a gold token (unbounded); set ``negative_weight``
  below 0 for METHODS.md's negative weight.
The loss is Σ_t w_t · NLL_t / (number of response tokens in the batch): with every weight 1 it is
the ``nll`` objective's loss. The primitives' auxiliary and parameter losses are added by
reftx.train.loss.compose, as for every objective.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from reftx.core.convert import require
from reftx.core.errors import DataError
from reftx.engine.model import unwrap
from reftx.train.objectives.common import Result, register_objective, result
from reftx.engine.positions import IGNORE
from reftx.data.encoding import prompt_lengths
from reftx.eval.scoring import label_logprobs

GUIDED = ("guided_input_ids", "guided_attention_mask", "guided_labels")


@dataclass(frozen=True)
class NLFTOptions:
    """Options of nlft (see the module docstring for which come from the paper's code)."""

    rule: Literal["change", "guided_prob"] = "change"  # change: weights from p_guided/p_plain (METHODS.md §8); guided_prob: the released code's weights for correct responses (p_guided alone)
    threshold: float = 1.5  # change: r > 1; salient when p_guided/p_plain >= r, disfavoured when <= 1/r (1.5: the released code's ratio test)
    positive_weight: float = 2.0  # change: weight of salient tokens (2: the largest weight the released code gives one)
    negative_weight: float = 0.0  # change: weight of disfavoured tokens; < 0 pushes them down (METHODS.md §8), 0 drops them
    base_weight: float = 1.0  # change: weight of every other response token (>= 0)
    prob_threshold: float = 0.95  # guided_prob: τ_p in (0, 1); p_guided > τ_p marks a saliency token (released code: 0.95)
    high_exponent: float = 5.0  # guided_prob: saliency weight 1 + ((p_guided − τ_p)/(1 − τ_p))^e (released code: 5)
    low_exponent: float = 0.6  # guided_prob: weight (p_guided/τ_p)^e of the other tokens (released code: 0.6)
    guided_interventions: bool = True  # guided scoring with the interventions on (the model's current judgement, as the released code) or off (the frozen base)

    def __post_init__(self) -> None:
        for name in ("threshold", "positive_weight", "negative_weight", "base_weight", "prob_threshold",
                     "high_exponent", "low_exponent"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and math.isfinite(v), name, f"must be a finite number, got {v!r}")
        require(self.threshold > 1, "threshold", f"must be > 1 (a probability ratio), got {self.threshold!r}")
        require(self.base_weight >= 0, "base_weight", f"must be >= 0, got {self.base_weight!r}")
        require(self.positive_weight >= self.base_weight, "positive_weight",
                f"must be >= base_weight ({self.base_weight}): salient tokens weigh more, got {self.positive_weight!r}")
        require(self.negative_weight <= self.base_weight, "negative_weight",
                f"must be <= base_weight ({self.base_weight}), got {self.negative_weight!r}")
        require(0 < self.prob_threshold < 1, "prob_threshold", f"must be in (0, 1), got {self.prob_threshold!r}")
        for name in ("high_exponent", "low_exponent"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)!r}")


def token_weights(logp_guided: Tensor, logp_plain: Tensor, mask: Tensor, options: NLFTOptions) -> Tensor:
    """NLFT's per-token weights. logp_guided, logp_plain: (B, N) log-probabilities of the response
    tokens with and without guidance; mask: (B, N) bool, True on response tokens. Returns (B, N)
    float32 weights, 0 where ``mask`` is False. No gradient flows through them.

    rule change: ``positive_weight`` where Δ = logp_guided − logp_plain >= ln r, ``negative_weight``
    where Δ <= −ln r, ``base_weight`` elsewhere (r = ``threshold``). rule guided_prob (logp_plain
    unused): p = exp(logp_guided); 1 + ((p − τ_p)/(1 − τ_p))^high_exponent where p > τ_p, else
    (p/τ_p)^low_exponent."""
    o = options
    g, plain = logp_guided.detach().float(), logp_plain.detach().float()
    if o.rule == "guided_prob":
        p, tau = g.exp(), o.prob_threshold
        high = 1 + ((p - tau).clamp(min=0) / (1 - tau)) ** o.high_exponent
        w = torch.where(p > tau, high, (p / tau) ** o.low_exponent)
    else:
        delta, cut = g - plain, math.log(o.threshold)
        w = torch.full_like(delta, o.base_weight)
        w = torch.where(delta >= cut, torch.full_like(w, o.positive_weight), w)
        w = torch.where(delta <= -cut, torch.full_like(w, o.negative_weight), w)
    return torch.where(mask, w, torch.zeros_like(w))


def guided_logprobs(model: Any, batch: dict[str, Any], options: NLFTOptions) -> Tensor:
    """The response tokens' log-probabilities after the guided prompt, placed on the plain batch's
    positions: (B, T − 1) like ``label_logprobs(logits, batch["labels"])``. Runs without gradient,
    with the interventions on or off (``guided_interventions``); the guided labels (-100 on the
    guided prompt) put the prompt positions of the interventions on the guided prompt."""
    base = unwrap(model)
    ids, labels = batch["input_ids"], batch["labels"]
    g_ids, g_labels = batch["guided_input_ids"], batch["guided_labels"]
    switch = contextlib.nullcontext() if options.guided_interventions else base.disabled()
    with torch.no_grad(), switch:
        out = base(input_ids=g_ids, attention_mask=batch["guided_attention_mask"], labels=g_labels,
                   example_info=batch.get("example_info"))
    lp = label_logprobs(out.logits, g_labels)  # (B, Tg − 1)
    shift = prompt_lengths(batch, "guided_") - prompt_lengths(batch)  # guided position = plain position + shift
    idx = (torch.arange(ids.shape[1] - 1, device=ids.device)[None] + shift[:, None]).clamp(0, lp.shape[1] - 1)
    mask = labels[:, 1:] != IGNORE
    if not torch.equal(g_ids[:, 1:].gather(1, idx)[mask], ids[:, 1:][mask]):
        raise DataError("nlft: the guided copy's response tokens differ from the plain response "
                        "(build both with reftx.data.encoding.encode(..., guided=True))")
    return lp.gather(1, idx)


@register_objective("nlft", NLFTOptions, needs_guidance=True)
def nlft(model: Any, batch: dict[str, Any], options: NLFTOptions) -> Result:
    """NLFT (Natural Language Fine-Tuning, arXiv:2412.20382): a token-weighted NLL of the response,
    each token weighted by how natural-language guidance in the prompt changes its probability.

    ``Σ_t w_t·NLL_t / #response tokens`` with w = ``token_weights(log p_guided, log p_plain)``
    (no gradient through w), plus the primitives' auxiliary and parameter losses. Needs the guided
    copy of each example in the batch (``Example.guidance``; reftx.data). Logs: mean_weight,
    salient_share, disfavoured_share, negative_share, delta_logp (mean Δ), nll, nll_guided."""
    missing = [k for k in GUIDED if k not in batch]
    if missing:
        raise DataError(f"objective 'nlft' needs the guided copy of every example ({', '.join(missing)} missing): "
                        "give the examples guidance (Example.guidance) and encode them with guided=True")
    plain = {k: v for k, v in batch.items() if k not in GUIDED}
    out = model(**plain)
    lp = label_logprobs(out.logits, plain["labels"])
    lp_guided = guided_logprobs(model, batch, options)
    mask = plain["labels"][:, 1:] != IGNORE
    w = token_weights(lp_guided, lp, mask, options)
    n = mask.sum().clamp(min=1)
    core = -(w * lp).sum() / n
    return result(out, core, _logs(w, lp.detach(), lp_guided, mask, options))


def _logs(w: Tensor, lp: Tensor, lp_guided: Tensor, mask: Tensor, o: NLFTOptions) -> dict[str, float]:
    """Shares over the batch's response tokens. salient: weight above base (change: Δ >= ln r;
    guided_prob: p_guided > τ_p); disfavoured (change only): Δ <= −ln r; negative: weight < 0."""
    n = mask.sum().clamp(min=1)
    delta = (lp_guided - lp).masked_fill(~mask, 0.0)

    def share(sel: Tensor) -> float:
        return float((sel & mask).sum() / n)

    cut = math.log(o.threshold)
    if o.rule == "guided_prob":
        salient, disfavoured = lp_guided.exp() > o.prob_threshold, torch.zeros_like(mask)
    else:
        salient, disfavoured = delta >= cut, delta <= -cut
    return {"mean_weight": float(w.sum() / n), "salient_share": share(salient),
            "disfavoured_share": share(disfavoured), "negative_share": share(w < 0),
            "delta_logp": float(delta.sum() / n), "nll": float(-lp.sum() / n),
            "nll_guided": float(-lp_guided.masked_fill(~mask, 0.0).sum() / n)}


__all__ = ["NLFTOptions", "guided_logprobs", "nlft", "token_weights"]

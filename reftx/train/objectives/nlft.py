"""NLFT: token-weighted finetuning from the model's own reading of natural-language guidance.

    train: {objective: nlft}          # the released rule on the model's own answers, judged by the task

Liu, Wang, Lin, Chen, Hao, Hu, "Natural Language Fine-Tuning" (arXiv:2412.20382, 2024; METHODS.md
§8); released code: github.com/Julia-LiuJ/NLFT (commit ef88576, read, not copied):
``modeling_llama_unlikelihood_dynamic_correct.py`` (the losses, "released:NNN" below and in
reftx.train.objectives.nlft_rules, which has the formulas), ``finetune_unlikelihood_dynamic_correct.py``
(the data: "finetune:NNN") and ``finetune-correct.sh`` (the settings). Per step and question:

* Responses (``responses: sampled``, the default): the model's own answer, one per question,
  sampled from the model (``sample_from: base``: interventions off, the model before finetuning,
  whose answers the released data holds (finetune:492-533, ``output``); ``policy``: the current
  model), judged by the task (``Task.reward`` 1: correct, else wrong; the released data is judged
  by scores of 7 or more, finetune:494-496). A fresh answer is drawn every step (the released data
  was drawn once). ``responses: gold``: the batch's reference response, judged correct.
* Scorings: the response after the plain prompt (with gradient), after the guided prompt (the
  ``Example.guidance`` in front of the prompt; the math task's is the whole reference solution, as
  the released code's "standard answer", finetune:470-474) and, for a wrong response, after the
  judged prompt (``reftx.data.encoding.JUDGMENT``, a negative verdict, finetune:464-467). The guided
  and judged scorings run without gradient through the model being trained (``guided_interventions``;
  the released code runs all three copies in one forward and detaches them, released:137-139,
  292-302, 392-394).
* ``rule: released`` (the default): a correct response's loss is 10·[mean_t NLL_t + mean_t s_t·NLL_t]
  (effective token weight 1 + s_t ∈ [1, 3], the salient tokens' neighbours clustered), a wrong one's
  is the unlikelihood term (released:186-206); the loss is the mean over the batch's responses (the
  released runs train one response per micro-batch, finetune-correct.sh ``--micro_batch_size 1``).
  Not reproduced: for a wrong response the released code also adds a plain NLL computed on the judged
  copy's probabilities with the plain copy's labels (released:177-184, 197), positions that do not
  line up unless both prompts have the same length; and its ``gama`` (0.25) is passed but never used.
* ``rule: change`` [ours, reftx before issue 26; needs ``responses: gold``]: weights from the change
  p_guided/p_plain (``nlft_rules.change_weights``): ``positive_weight`` (2) where it is at least
  ``threshold`` (1.5), ``negative_weight`` (0) where at most 1/threshold, ``base_weight`` (1)
  elsewhere; loss Σ_t w_t·NLL_t / (the batch's response tokens).

The primitives' auxiliary and parameter losses are added by reftx.train.loss.compose, as for every
objective. Logs: nll, nll_guided, mean_weight, salient_share, cluster_share, unlike_share,
correct_share (and reward, completion_tokens when sampling); change: disfavoured_share,
negative_share, delta_logp.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor

from reftx.core.convert import require
from reftx.core.errors import DataError
from reftx.data.encoding import prompt_lengths
from reftx.engine.model import unwrap
from reftx.engine.positions import IGNORE
from reftx.eval.scoring import label_logprobs, token_logprobs
from reftx.train.objectives import nlft_rules as rules
from reftx.train.objectives.common import Result, register_objective, result
from reftx.train.objectives.grpo import Env, left_padded_prompts, rollout

COPIES = ("guided", "judged")
COPY_KEYS = tuple(f"{c}_{k}" for c in COPIES for k in ("input_ids", "attention_mask", "labels", "prompt_lengths"))


@dataclass(frozen=True)
class NLFTOptions:
    """Options of nlft (the module docstring says which come from the released code)."""

    rule: Literal["released", "change"] = "released"  # released: NLFT's released loss (plain NLL + weighted term for correct responses, unlikelihood for wrong ones); change: weights from p_guided/p_plain (reftx before issue 26; needs responses: gold)
    responses: Literal["sampled", "gold"] = "sampled"  # sampled: one answer per question drawn from the model and judged by the task's reward (the paper's setting); gold: the reference responses, judged correct
    sample_from: Literal["base", "policy"] = "base"  # sampled: draw from the model with interventions off (the model before finetuning, as the released data) or from the current model
    max_new_tokens: int = 128  # sampled: length limit of an answer
    temperature: float = 1.0  # sampled: sampling temperature (> 0)
    loss_scale: float = 10.0  # released: the loss is multiplied by this (released code: 10)
    prob_threshold: float = 0.95  # released: τ in (0, 1); p_guided > τ marks a saliency token of a correct response
    high_exponent: float = 5.0  # released: saliency weight 1 + ((p_guided − τ)/(1 − τ))^e (released code: 5)
    cluster_exponent: float = 0.3  # released: weight (p_guided/τ)^e of a saliency token's clustered neighbours (released code: 0.3)
    low_exponent: float = 0.6  # released: weight (p_guided/τ)^e of the other tokens (released code: 0.6)
    cluster_distance: float = 0.4  # released: a neighbour joins a cluster while its cosine distance to the running centre is above this (released code: 0.4)
    unlike_ratio: float = 1.5  # released: a wrong response's token is unlike when p_judged/p_plain and p_judged/p_guided exceed this (released code: 1.5)
    unlike_min_prob: float = 0.01  # released: ... and p_judged exceeds this (released code: 0.01)
    unlike_centre: float = 1.5  # released: an unlike token's weight is 2σ(p_judged/p_plain − this) (finetune-correct.sh --threshold 1.5)
    unlike_max_share: float = 0.06  # released: above this share of unlike tokens, the other tokens of the response weigh 0 (released code: 0.06)
    threshold: float = 1.5  # change: r > 1; salient when p_guided/p_plain >= r, disfavoured when <= 1/r
    positive_weight: float = 2.0  # change: weight of salient tokens
    negative_weight: float = 0.0  # change: weight of disfavoured tokens; < 0 pushes them down (METHODS.md §8), 0 drops them
    base_weight: float = 1.0  # change: weight of every other response token (>= 0)
    guided_interventions: bool = True  # guided and judged scorings with the interventions on (the model's current judgement, as the released code) or off (the frozen base)

    def __post_init__(self) -> None:
        floats = ("temperature", "loss_scale", "prob_threshold", "high_exponent", "cluster_exponent", "low_exponent",
                  "cluster_distance", "unlike_ratio", "unlike_min_prob", "unlike_centre", "unlike_max_share",
                  "threshold", "positive_weight", "negative_weight", "base_weight")
        for name in floats:
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and math.isfinite(v), name, f"must be a finite number, got {v!r}")
        require(self.rule != "change" or self.responses == "gold", "responses",
                "rule change weights the reference responses (reftx's reading): set responses: gold, or rule: released")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens!r}")
        for name in ("temperature", "loss_scale", "high_exponent", "cluster_exponent", "low_exponent"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)!r}")
        require(0 < self.prob_threshold < 1, "prob_threshold", f"must be in (0, 1), got {self.prob_threshold!r}")
        require(self.threshold > 1, "threshold", f"must be > 1 (a probability ratio), got {self.threshold!r}")
        require(self.base_weight >= 0, "base_weight", f"must be >= 0, got {self.base_weight!r}")
        require(self.positive_weight >= self.base_weight, "positive_weight",
                f"must be >= base_weight ({self.base_weight}): salient tokens weigh more, got {self.positive_weight!r}")
        require(self.negative_weight <= self.base_weight, "negative_weight",
                f"must be <= base_weight ({self.base_weight}), got {self.negative_weight!r}")


def guided_logprobs(model: Any, batch: dict[str, Any], options: NLFTOptions, copy: str = "guided") -> Tensor:
    """The response tokens' log-probabilities after the ``copy`` prompt (guided or judged), placed on
    the plain batch's positions: (B, T − 1) like ``label_logprobs(logits, batch["labels"])``. Runs
    without gradient, with the interventions on or off (``guided_interventions``); the copy's labels
    (-100 on its prompt) put the interventions' prompt positions on the copy's prompt."""
    base = unwrap(model)
    ids, labels = batch["input_ids"], batch["labels"]
    g_ids, g_labels = batch[f"{copy}_input_ids"], batch[f"{copy}_labels"]
    switch = contextlib.nullcontext() if options.guided_interventions else base.disabled()
    with torch.no_grad(), switch:
        out = base(input_ids=g_ids, attention_mask=batch[f"{copy}_attention_mask"], labels=g_labels,
                   example_info=batch.get("example_info"))
    lp = label_logprobs(out.logits, g_labels)  # (B, Tg − 1)
    shift = prompt_lengths(batch, f"{copy}_") - prompt_lengths(batch)  # copy position = plain position + shift
    idx = (torch.arange(ids.shape[1] - 1, device=ids.device)[None] + shift[:, None]).clamp(0, lp.shape[1] - 1)
    mask = labels[:, 1:] != IGNORE
    if not torch.equal(g_ids[:, 1:].gather(1, idx)[mask], ids[:, 1:][mask]):
        raise DataError(f"nlft: the {copy} copy's response tokens differ from the plain response "
                        "(build both with reftx.data.encoding.encode(..., guided=True))")
    return lp.gather(1, idx)


@dataclass
class Scored:
    """One batch's responses scored three ways, aligned: (B, N) with N response positions."""

    logp: Tensor  # plain log-probs, with gradient
    guided: Tensor  # after the guided prompt, no gradient
    judged: Tensor | None  # after the judged prompt (only when some response is wrong), no gradient
    hidden: Tensor | None  # (B, N, d) last-layer states at the positions predicting each token (released only)
    mask: Tensor  # (B, N) bool, the response tokens
    correct: Tensor  # (B,) bool
    out: Any  # the plain forward's output (its auxiliary losses)


def _gold(model: Any, batch: dict[str, Any], o: NLFTOptions) -> Scored:
    plain = {k: v for k, v in batch.items() if k not in COPY_KEYS}
    out = model(**plain, output_hidden_states=o.rule == "released")
    lp = label_logprobs(out.logits, plain["labels"])
    hidden = out.hidden_states[-1][:, :-1] if o.rule == "released" else None
    mask = plain["labels"][:, 1:] != IGNORE
    correct = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    return Scored(lp, guided_logprobs(model, batch, o), None, hidden, mask, correct, out)


def _copy_prompts(batch: dict[str, Any], copy: str, pad_id: int) -> tuple[Tensor, Tensor]:
    """The ``copy`` prompts of the batch, left-padded (as ``left_padded_prompts`` gives the plain ones)."""
    view = {"input_ids": batch[f"{copy}_input_ids"], "labels": batch[f"{copy}_labels"],
            "attention_mask": batch[f"{copy}_attention_mask"], "prompt_lengths": prompt_lengths(batch, f"{copy}_")}
    return left_padded_prompts(view, pad_id)


def _score(model: Any, prompt: Tensor, pmask: Tensor, tokens: Tensor, cmask: Tensor, hidden: bool) -> tuple[Tensor, Any]:
    out = model(input_ids=torch.cat([prompt, tokens], 1), attention_mask=torch.cat([pmask, cmask], 1),
                prompt_lengths=pmask.sum(1), output_hidden_states=hidden)
    return token_logprobs(out.logits[:, prompt.shape[1] - 1:-1], tokens), out


def _sampled(model: Any, batch: dict[str, Any], o: NLFTOptions, env: Env | None) -> tuple[Scored, dict[str, float]]:
    """One answer per question from the model, judged by the task, scored plain / guided / judged."""
    settings = SimpleNamespace(group_size=1, max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=1.0,
                               partial_reward=0.0)  # what grpo.rollout reads
    reft = unwrap(model)
    with reft.disabled() if o.sample_from == "base" else contextlib.nullcontext():
        r = rollout(model, batch, settings, env, "nlft")
    pad_id = env.tokenizer.pad_token_id if env.tokenizer.pad_token_id is not None else env.tokenizer.eos_token_id
    lp, out = _score(model, r.prompt, r.mask, r.tokens, r.cmask, hidden=True)
    hidden = out.hidden_states[-1][:, r.prompt.shape[1] - 1:-1]
    correct = r.rewards >= 1
    switch = contextlib.nullcontext() if o.guided_interventions else reft.disabled()
    copies: dict[str, Tensor] = {}
    with torch.no_grad(), switch:
        for copy in COPIES if not bool(correct.all()) else ("guided",):
            if f"{copy}_input_ids" not in batch:
                raise DataError(f"objective 'nlft' needs the {copy} copy of every example for sampled responses "
                                "(build the batch with reftx.data.encoding.encode(..., guided=True))")
            copies[copy] = _score(reft, *_copy_prompts(batch, copy, pad_id), r.tokens, r.cmask, hidden=False)[0]
    logs = {"reward": float(r.rewards.mean()), "completion_tokens": float(r.cmask.sum(1).float().mean())}
    return Scored(lp, copies["guided"], copies.get("judged"), hidden, r.cmask.bool(), correct, out), logs


def released_loss(s: Scored, o: NLFTOptions) -> tuple[Tensor, dict[str, float]]:
    """The released loss of each response (nlft_rules), averaged over the responses, times
    ``loss_scale``; logs the weights' shares over the batch's response tokens."""
    rows, counts = [], {"salient": 0, "cluster": 0, "unlike": 0, "tokens": 0, "weighted": 0}
    weight_sum = 0.0
    for b in range(s.mask.shape[0]):
        m = s.mask[b]
        lp, pg, h = s.logp[b][m], s.guided[b][m].exp(), s.hidden[b][m]
        if bool(s.correct[b]):
            w, sal, near = rules.correct_weights(pg, h, o.prob_threshold, o.high_exponent, o.cluster_exponent,
                                                 o.low_exponent, o.cluster_distance)
            rows.append(rules.correct_loss(lp, w))
            weight_sum += float((1 + w).sum())
            counts["weighted"] += int(m.sum())
            counts["salient"] += int(sal.sum())
            counts["cluster"] += int((near & ~sal).sum())
        else:
            u, unlike, _ = rules.unlikelihood_weights(lp.exp(), s.judged[b][m].exp(), pg, h, o.unlike_ratio,
                                                      o.unlike_min_prob, o.unlike_centre, o.unlike_max_share,
                                                      o.cluster_distance)
            rows.append(rules.unlikelihood_loss(lp, u, unlike))
            counts["unlike"] += int(unlike.sum())
        counts["tokens"] += int(m.sum())
    core = o.loss_scale * torch.stack(rows).mean()
    n = max(counts["tokens"], 1)
    logs = {f"{k}_share": counts[k] / n for k in ("salient", "cluster", "unlike")}
    logs["correct_share"] = float(s.correct.float().mean())
    if counts["weighted"]:  # the effective weight 1 + s_t, over the correct responses' tokens
        logs["mean_weight"] = weight_sum / counts["weighted"]
    return core, logs


def change_loss(s: Scored, o: NLFTOptions) -> tuple[Tensor, dict[str, float]]:
    """The ``change`` rule's Σ_t w_t·NLL_t / (the batch's response tokens) and its logs."""
    w = rules.change_weights(s.guided, s.logp, s.mask, o.threshold, o.positive_weight, o.negative_weight,
                             o.base_weight)
    n = s.mask.sum().clamp(min=1)
    delta = (s.guided - s.logp.detach()).masked_fill(~s.mask, 0.0)
    cut = math.log(o.threshold)

    def share(sel: Tensor) -> float:
        return float((sel & s.mask).sum() / n)

    logs = {"mean_weight": float(w.sum() / n), "salient_share": share(delta >= cut),
            "disfavoured_share": share(delta <= -cut), "negative_share": share(w < 0),
            "delta_logp": float(delta.sum() / n)}
    return -(w * s.logp).sum() / n, logs


@register_objective("nlft", NLFTOptions, needs_guidance=True)
def nlft(model: Any, batch: dict[str, Any], options: NLFTOptions, env: Env | None = None) -> Result:
    """NLFT (Natural Language Fine-Tuning, arXiv:2412.20382): each response token's NLL weighted by
    how natural-language guidance in the prompt changes its probability, on the model's own answers
    judged by the task (the released rule: plain NLL + weighted term for a correct answer, an
    unlikelihood term for a wrong one), or on the reference responses (module docstring). Needs the
    guided copy of each example (``Example.guidance``; reftx.data) and, sampling, the run's Env."""
    missing = [k for k in COPY_KEYS[:3] if k not in batch]
    if missing:
        raise DataError(f"objective 'nlft' needs the guided copy of every example ({', '.join(missing)} missing): "
                        "give the examples guidance (Example.guidance) and encode them with guided=True")
    o, logs = options, {}
    if o.responses == "gold":
        s = _gold(model, batch, o)
    else:
        s, logs = _sampled(model, batch, o, env)
    core, rule_logs = released_loss(s, o) if o.rule == "released" else change_loss(s, o)
    n = s.mask.sum().clamp(min=1)
    logs.update(rule_logs, nll=float(-(s.logp.detach() * s.mask).sum() / n),
                nll_guided=float(-s.guided.masked_fill(~s.mask, 0.0).sum() / n))
    return result(s.out, core, logs)


__all__ = ["NLFTOptions", "Scored", "change_loss", "guided_logprobs", "nlft", "released_loss"]

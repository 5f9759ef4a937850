"""Reinforced finetuning of interventions: the ``grpo`` objective (METHODS.md §8).

    train: {objective: grpo, objective_options: {group_size: 4, max_new_tokens: 96, beta: 0.04}}

Each training batch holds questions with their annotated answers (the same rows SFT trains on).
Per question the policy (the model with its interventions) samples G completions through
``ReftModel.generate`` (exact and KV-cached: the policy that is scored is the policy that is
trained); the task scores them (``Task.reward``: for math, 1 for a correct final answer, a partial
reward for a parsable wrong number, 0 otherwise, as Luong et al. 2024 define it, with the same
answer rule as evaluation); and the loss is GRPO's (Shao et al. 2024, DeepSeekMath §4.1):

    A_i    = (r_i − mean_j r_j) / (std_j r_j + ε)                     per group of G completions
    ρ_it   = π_θ(o_it | q, o_i<t) / π_old(o_it | ·)
    KL_t   = π_ref/π_θ − log(π_ref/π_θ) − 1                           (Schulman's k3 estimator)
    loss   = −(1/G) Σ_i (1/|o_i|) Σ_t [min(ρ_it A_i, clip(ρ_it, 1−ε, 1+ε) A_i) − β KL_t]

That is ``loss_type: grpo``, the paper's sum. Two later reductions remove its length bias (a wrong
completion's penalty per token shrinks as it grows, so wrong answers drift longer): ``dapo`` (Yu et
al. 2025, DAPO) divides the sum over every token of the batch by the batch's token count, and
``dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-Like Training") by G · ``max_new_tokens``;
``scale_rewards: none`` (also Dr. GRPO) leaves out the division by the group's std. The names and
reductions are TRL's (trl 1.16 ``GRPOConfig.loss_type``/``scale_rewards``; TRL's defaults are
``dapo`` and β = 0; reftx keeps the paper's ``grpo`` and β = 0.04 as defaults).

π_old is the sampling policy (its log-probs come from ``generate``'s own logits, checked against a
teacher-forced recomputation by tests/reference/test_reinforce.py); π_ref is the policy where RL
starts (``kl_reference: start``, the default: after a ``sequential`` warm-up, the SFT policy, as
DeepSeekMath and Luong et al. anchor it; a frozen copy of the trained parameters saved with the
run, reftx.train.objectives.anchor) or the model with its interventions off (``kl_reference:
base``; no second copy of the base either way). One optimizer step per sampled batch
(μ = 1), so ρ = 1 in value and the clip acts only on the gradient's scale, as in TRL's default.
The std is the unbiased one over the group, as TRL's ``GRPOTrainer`` computes it
(trl 1.16 ``trainer/grpo_trainer.py``); a group whose rewards are all equal has A = 0.

A reward that is not one finite number per completion (NaN, inf, None, a string, a wrong count)
stops the run before its step is applied (``BadReward``, a ``NonFiniteLoss``: reftx.train.objectives.rewards
has the policy), naming the step, the task, the example, its prompt and the completion.

Everything else (data order, checkpoints, resume, logging, trackers, divergence stops) is the one
training loop's: ``reftx run`` with ``train.objective: grpo``, on any primitive and schedule
(``{generated: n}`` groups edit the sampled tokens as they are generated, and the same tokens in
the teacher-forced pass). An SFT warm-up is a previous run: ``train.init_from``.
PPO with a value head and GAE (Luong et al.'s algorithm) is the ``ppo`` objective (reftx.train.objectives.ppo).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from reftx.engine import sites
from reftx.train.objectives.carft import (
    CARFTOptions,
    contrastive_loss,
    cot_pair,
    embedding_partial_reward,
    prepare_projection,
)
from reftx.core.convert import require
from reftx.core.errors import ConfigError, DataError
from reftx.engine.model import unwrap
from reftx.train.objectives.common import FIELD, OBJECTIVES, Result, register_objective, result
from reftx.train.objectives.anchor import prepare_anchor, reference
from reftx.train.objectives.rewards import checked_rewards, short
from reftx.engine.schedule import resolve_layers
from reftx.data.encoding import prompt_lengths
from reftx.eval.scoring import token_logprobs

EXAMPLE_INDEX = "example_index"  # example_info key: the row's index into the training examples


@dataclass
class Env:
    """What an objective that samples needs from its run (given by the runner).

    tokenizer: decodes completions; reward(texts, indices, partial) -> (N,) rewards (a list or a
    tensor) of completion texts for the training examples at ``indices`` (reftx.eval.task.Task.reward),
    checked by reftx.train.objectives.rewards (one finite number per completion, or the run stops
    with ``BadReward``); who: how that error names the reward function; prompt: example index -> its
    prompt, for that error (None: the decoded prompt tokens)."""

    tokenizer: Any
    reward: Callable[[list[str], list[int], float], Any]
    who: str = "the reward (Env.reward)"
    prompt: Callable[[int], str] | None = None


def sampling_env(exp: Any, task: Any, examples: list, tok: Any, encoded: list) -> tuple[list, Env | None]:
    """For an objective that samples and scores: every encoded row tagged with its example's index
    (``example_info[EXAMPLE_INDEX]``), and the Env (the tokenizer, the task's reward over
    ``examples``); for any other objective, ``encoded`` as is and None. Called by the runner."""
    if not OBJECTIVES.get(exp.train.objective, "train.objective").needs_env:
        return encoded, None

    def reward(texts: list[str], index: list[int], partial: float) -> list:
        return [task.reward(t, examples[i], partial) for t, i in zip(texts, index)]  # checked by rollout

    tagged = [dataclasses.replace(e, info={**e.info, EXAMPLE_INDEX: float(i)}) for i, e in enumerate(encoded)]
    return tagged, Env(tok, reward, f"task {task.name!r} (Task.reward)", lambda i: examples[i].prompt)


@dataclass(frozen=True)
class GRPOOptions:
    """Options of the ``grpo`` objective (train.objective_options)."""

    group_size: int = 4  # G: completions sampled per question (>= 2: advantages compare them)
    max_new_tokens: int = 128  # length limit of a sampled completion
    temperature: float = 1.0  # sampling temperature (> 0); log-probs use the same tempered logits
    top_p: float = 1.0  # nucleus sampling mass (0 < top_p <= 1)
    clip: float = 0.2  # ε of the clipped ratio (> 0)
    beta: float = 0.04  # weight of the KL to the reference (kl_reference); 0 skips it
    kl_reference: Literal["start", "base"] = "start"  # KL reference: the policy where RL starts (start: train.init_from's interventions after a warm-up, saved with the run) or the model with interventions off (base)
    partial_reward: float = 0.1  # reward of a parsable but wrong final answer (Luong et al. 2024: 0.1)
    eps: float = 1.0e-4  # added to the group's reward std
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"  # token reduction: per completion then mean (grpo), over the batch's tokens (dapo), over G*max_new_tokens (dr_grpo)
    scale_rewards: Literal["group", "none"] = "group"  # divide advantages by the group's reward std (group) or not (none, Dr. GRPO)

    def __post_init__(self) -> None:
        require(self.group_size >= 2, "group_size", f"must be >= 2, got {self.group_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0 and math.isfinite(self.temperature), "temperature",
                f"must be a finite number > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must satisfy 0 < top_p <= 1, got {self.top_p}")
        require(self.clip > 0, "clip", f"must be > 0, got {self.clip}")
        require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        require(0 <= self.partial_reward <= 1, "partial_reward", f"must be in [0, 1], got {self.partial_reward}")
        require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")


# -- the formulas ----------------------------------------------------------------------------------
def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """(r − group mean) / (group std + eps), or r − group mean when not ``scale``; rewards (Q·G,) in
    groups of G consecutive rows -> (Q·G,)."""
    r = rewards.float().reshape(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    return (centred / (r.std(1, keepdim=True) + eps) if scale else centred).reshape(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimate π_ref/π_θ − log(π_ref/π_θ) − 1 (>= 0, 0 where they agree)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float,
              beta: float = 0.0, ref_logp: Tensor | None = None, loss_type: str = "grpo",
              max_tokens: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """GRPO's loss. logp, old_logp, ref_logp, mask: (N, T) per completion token; advantages (N,).

    With ℓ_it = min(ρ A, clip(ρ, 1−ε, 1+ε) A) − β KL_t over the mask: ``grpo``: −mean_i (1/|o_i|)
    Σ_t ℓ_it (a completion without tokens counts 0); ``dapo``: −Σ_it ℓ_it / Σ_i |o_i|; ``dr_grpo``:
    −Σ_it ℓ_it / (N · max_tokens). Logs: kl (token mean), clip_fraction (tokens whose ratio was
    clipped in the direction that matters)."""
    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a
    per_token = torch.minimum(unclipped, clipped)
    logs = {"clip_fraction": float(((clipped < unclipped).float() * m).sum() / m.sum().clamp(min=1))}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token - beta * kl
        logs["kl"] = float((kl.detach() * m).sum() / m.sum().clamp(min=1))
    if loss_type == "dapo":
        return -(per_token * m).sum() / m.sum().clamp(min=1), logs
    if loss_type == "dr_grpo":
        if max_tokens is None:
            raise ValueError("grpo_loss: loss_type dr_grpo needs max_tokens")
        return -(per_token * m).sum() / (m.shape[0] * max_tokens), logs
    if loss_type != "grpo":
        raise ValueError(f"grpo_loss: loss_type must be grpo, dapo or dr_grpo, got {loss_type!r}")
    per_seq = (per_token * m).sum(1) / m.sum(1).clamp(min=1)
    return -per_seq.mean(), logs


# -- sampling --------------------------------------------------------------------------------------
def left_padded_prompts(batch: dict[str, Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """The prompt of every training row (its encoded prompt_lengths), left-padded.
    input_ids/labels (B, T) right-padded -> ids (B, P), mask (B, P) with P the longest prompt."""
    ids = batch["input_ids"]
    t = ids.shape[1]
    plen = prompt_lengths(batch).to(ids.device)
    width = int(plen.max())
    j = torch.arange(width, device=ids.device)
    src = j[None, :] - (width - plen)[:, None]  # column j of the output holds prompt token src
    mask = src >= 0
    out = ids.gather(1, src.clamp(0, t - 1))
    return torch.where(mask, out, torch.full_like(out, pad_id)), mask.long()


def completion_mask(tokens: Tensor, eos_id: int | None) -> Tensor:
    """1 up to and including each row's first EOS (all ones without an EOS). tokens (N, L) -> (N, L)."""
    if eos_id is None:
        return torch.ones_like(tokens)
    is_eos = tokens == eos_id
    before = torch.cumsum(is_eos.int(), 1) - is_eos.int()  # EOS tokens strictly before position t
    return (before == 0).long()


def sample(reft: Any, prompt: Tensor, mask: Tensor, opts: GRPOOptions, pad_id: int,
           eos_id: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """G completions per prompt row: (tokens (N, L), their mask (N, L), the sampling policy's
    log-probs (N, L) from generate's own logits), N = rows · G, in groups of G consecutive rows."""
    ids, att = prompt.repeat_interleave(opts.group_size, 0), mask.repeat_interleave(opts.group_size, 0)
    out = reft.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=opts.temperature,
                        top_p=opts.top_p, top_k=0, max_new_tokens=opts.max_new_tokens, pad_token_id=pad_id,
                        eos_token_id=eos_id, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, 1)  # (N, L, V): the raw logits each token was sampled from
    return tokens, completion_mask(tokens, eos_id), token_logprobs(logits, tokens, opts.temperature)


def policy_logprobs(model: Any, prompt: Tensor, mask: Tensor, tokens: Tensor, cmask: Tensor,
                    temperature: float) -> tuple[Tensor, Any]:
    """Teacher-forced log-probs of the completions (N, L) under ``model``, the prompt placed exactly
    as in generation (left-padded, prompt_lengths = its tokens), and the model output."""
    seq = torch.cat([prompt, tokens], 1)
    att = torch.cat([mask, cmask], 1)
    out = model(input_ids=seq, attention_mask=att, prompt_lengths=mask.sum(1))
    logits = out.logits[:, prompt.shape[1] - 1:-1]
    return token_logprobs(logits, tokens, temperature), out


@dataclass
class Rollout:
    """One batch's samples: G completions per question, in groups of G consecutive rows (N = Q·G)."""

    prompt: Tensor  # (N, P) left-padded prompts, repeated per sample
    mask: Tensor  # (N, P)
    tokens: Tensor  # (N, L) sampled completions
    cmask: Tensor  # (N, L) 1 up to and including each completion's EOS
    old_logp: Tensor  # (N, L) the sampling policy's log-probs (generate's own logits)
    rewards: Tensor  # (N,) the task's rewards


def rollout(model: Any, batch: dict[str, Any], opts: GRPOOptions, env: Env | None, name: str) -> Rollout:
    """Sample and score G completions per question of ``batch`` (no gradients)."""
    if env is None:
        raise DataError(f"objective {name!r} samples and scores completions: it runs inside `reftx run` "
                        "(the runner gives it the tokenizer and the task's reward)")
    info = batch.get("example_info") or {}
    if EXAMPLE_INDEX not in info:
        raise DataError(f"objective {name!r} needs example_info[{EXAMPLE_INDEX!r}] on every row (the runner adds it)")
    reft, tok = unwrap(model), env.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompt, mask = left_padded_prompts(batch, pad_id)
    with torch.no_grad():
        tokens, cmask, old_logp = sample(reft, prompt, mask, opts, pad_id, tok.eos_token_id)
    texts = tok.batch_decode(torch.where(cmask.bool(), tokens, pad_id), skip_special_tokens=True)
    index = info[EXAMPLE_INDEX].long().repeat_interleave(opts.group_size).tolist()
    g = opts.group_size

    def sample_of(i: int) -> str:  # only on error: the example, its prompt and the completion
        p = env.prompt(index[i]) if env.prompt else tok.decode(prompt[i // g][mask[i // g].bool()])
        return f"example {index[i]}: prompt {short(p)}, completion {short(texts[i])}"

    values = checked_rewards(env.reward(texts, index, opts.partial_reward), len(texts), env.who, sample_of)
    rewards = torch.tensor(values, dtype=torch.float32, device=old_logp.device)
    return Rollout(prompt.repeat_interleave(g, 0), mask.repeat_interleave(g, 0), tokens, cmask, old_logp, rewards)


def rl_loss(model: Any, r: Rollout, opts: GRPOOptions, logp: Tensor) -> tuple[Tensor, dict[str, float]]:
    """GRPO's loss of rollout ``r`` given the policy's log-probs, with the KL to the reference
    (``opts.kl_reference``) when ``opts.beta`` > 0; logs reward, accuracy, kl, clip_fraction, lengths."""
    ref_logp = None
    if opts.beta > 0:
        ref_logp, _ = policy_logprobs(reference(model, opts.kl_reference), r.prompt, r.mask, r.tokens, r.cmask,
                                      opts.temperature)
    adv = group_advantages(r.rewards, opts.group_size, opts.eps, scale=opts.scale_rewards == "group")
    core, logs = grpo_loss(logp, r.old_logp, adv, r.cmask, opts.clip, opts.beta, ref_logp, opts.loss_type,
                           opts.max_new_tokens)
    logs.update(reward=float(r.rewards.mean()), reward_std=float(r.rewards.reshape(-1, opts.group_size).std(1).mean()),
                accuracy=float((r.rewards >= 1).float().mean()), completion_tokens=float(r.cmask.sum(1).float().mean()))
    return core, logs


@register_objective("grpo", options=GRPOOptions)
def grpo(model: Any, batch: dict[str, Any], opts: GRPOOptions, env: Env | None = None) -> Result:
    """GRPO on the batch's questions (module docstring); logs reward, accuracy (reward 1), kl,
    clip_fraction and the mean completion length."""
    r = rollout(model, batch, opts, env, "grpo")
    logp, out = policy_logprobs(model, r.prompt, r.mask, r.tokens, r.cmask, opts.temperature)
    core, logs = rl_loss(model, r, opts, logp)
    return result(out, core, logs)


def prepare(model: Any, opts: GRPOOptions) -> None:
    """Before the optimizer is built (the runner calls it): the KL anchor, when there is a KL term."""
    if opts.beta > 0:
        prepare_anchor(model, opts.kl_reference)


grpo.prepare = prepare  # type: ignore[attr-defined]


# -- CARFT: GRPO plus a contrastive term on chain-of-thought representations (reftx.train.objectives.carft) ----------
@dataclass(frozen=True)
class CARFTRunOptions(GRPOOptions):
    """Options of the ``carft`` objective: GRPO's, and CARFT's contrastive term under ``contrastive:``."""

    contrastive: CARFTOptions = field(default_factory=CARFTOptions)  # CARFT's term (reftx.train.objectives.carft.CARFTOptions: weight, temperature, max_similarity, negatives, layer, partial_reward, ...)


@register_objective("carft", options=CARFTRunOptions)
def carft(model: Any, batch: dict[str, Any], opts: Any, env: Env | None = None) -> Result:
    """CARFT: GRPO's loss + λ·L_CL, where L_CL pulls the representations of the sampled CoTs that
    reach the gold answer toward the row's annotated CoT (Zhu and others 2025; the batch's target,
    pooled from the policy's hidden states at ``contrastive.layer`` and projected by the learned
    projection, ``contrastive.representation``; reftx.train.objectives.carft has the formula and
    its sources). With ``contrastive.partial_reward`` a parsable wrong answer's reward becomes
    α·cos(annotated, sampled) + β before the advantages are computed."""
    c = opts.contrastive
    if c.partial_reward and not math.isclose(c.partial_value, opts.partial_reward):
        raise ConfigError(f"{FIELD}.contrastive.partial_value", f"marks the partial reward and must equal "
                                                                f"partial_reward ({opts.partial_reward}), got {c.partial_value}")
    r = rollout(model, batch, opts, env, "carft")
    reft, g, width = unwrap(model), opts.group_size, r.prompt.shape[1]
    layer = resolve_layers(c.layer, sites.num_layers(reft.config), f"{FIELD}.contrastive.layer")[0]
    out = model(input_ids=torch.cat([r.prompt, r.tokens], 1), attention_mask=torch.cat([r.mask, r.cmask], 1),
                prompt_lengths=r.mask.sum(1), output_hidden_states=True)
    logp = token_logprobs(out.logits[:, width - 1:-1], r.tokens, opts.temperature)
    annotated, sampled = cot_pair(model, batch, out.hidden_states, width, r.cmask, c, layer, g)
    if c.partial_reward:
        shaped = embedding_partial_reward(annotated, sampled, r.rewards.reshape(-1, g), partial=opts.partial_reward,
                                          scale=c.partial_scale, offset=c.partial_offset)
        r = dataclasses.replace(r, rewards=shaped.reshape(-1))
    correct = (r.rewards >= 1).reshape(-1, g)
    cl, cl_logs = contrastive_loss(annotated, sampled, correct, c.temperature, max_similarity=c.max_similarity,
                                   negatives=c.negatives, detach_anchor=c.detach_anchor)
    core, logs = rl_loss(model, r, opts, logp)
    logs.update(cl_logs)
    return result(out, core + c.weight * cl, logs)


def _prepare_carft(model: Any, opts: Any) -> None:
    """GRPO's prepare, and the learned projection (reftx.train.objectives.carft.prepare_projection)."""
    prepare(model, opts)
    prepare_projection(model, opts.contrastive)


carft.prepare = _prepare_carft  # type: ignore[attr-defined]

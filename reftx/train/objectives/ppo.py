"""Reinforced finetuning as Luong et al. run it: PPO with a value head (the ``ppo`` objective).

    train: {objective: ppo, objective_options: {kl_coef: 0.05, max_new_tokens: 128}}

Luong et al. 2024 ("ReFT: Reasoning with Reinforced Fine-Tuning"; code github.com/lqtrung1998/mwp_ReFT,
commit bdc844e, ``train_rl_reft.py``, read whole) train an SFT warm-up, then PPO on the same
questions. Here the policy is the frozen model with its interventions; a value head reads the
policy's final hidden state. Per training batch, with o the sampled completion of question q
(``group_size`` per question, theirs 1) and t = 0..|o|−1 its tokens (the EOS included):

    score   1 correct, ``partial_reward`` (0.1) parsable but wrong, 0 otherwise   (the task's reward)
    r_t     = −kl_coef · (log π_old(o_t) − log π_ref(o_t))  + score·[t = |o|−1]   (k1 KL in the reward)
    δ_t     = r_t + γ V_{t+1} − V_t,   V_{|o|} = 0
    A_t     = Σ_k (γλ)^k δ_{t+k},      R_t = A_t + V_t                         (GAE; λ-returns)
    Â       = (A − mean A) / sqrt(var A + 1e-8) over the batch's tokens           (whiten: true)
    L_pg    = mean_o (1/|o|) Σ_t max(−Â_t ρ_t, −Â_t clip(ρ_t, 1−ε, 1+ε)),   ρ_t = π_θ(o_t)/π_old(o_t)
    L_vf    = ½ mean_o (1/|o|) Σ_t max((V_t − R_t)², (clip(V_t, V^old_t − c, V^old_t + c) − R_t)²)
    loss    = L_pg + vf_coef · L_vf

Sources, all in ``train_rl_reft.py``: the reward on the token that emits EOS (or the last sampled
one) and the masks, lines 331-341; the k1 KL folded into the reward, 343-353; GAE and returns,
355-369 (``discount_cumsum``: src/utils.py 110-111); whitening of the advantages over the masked
tokens, 419-423 (``adv_whitening: global``; trl 0.7.2 ``core.masked_whiten``/``masked_var``, the
unbiased variance); the clipped policy loss with ε 0.2, 462-466; the clipped value loss with
c 0.2, 470-474; loss = pg + vf_coef·vf, 478; the value head: trl 0.7.2
``AutoModelForCausalLMWithValueHead`` (``models/modeling_value_head.py``: a ``Linear(hidden, 1)``
on ``hidden_states[-1]``, in float32). The defaults are their ReFT scripts' (``exps/paper_exps/ReFT/
_template.sh``): γ 1.0, λ 0.95, vf_coef 5, kl_coef 0.05 for natural-language CoT (``gsm8k.sh``;
0.01 for Python programs); sampling at temperature 1, top_p 1, top_k 0 (lines 277-288). Their
reward (lines 293-316) is 1 when the number after the last "Therefore, the answer is:" is within
0.01 of the gold, 0.1 when it parses as a float but is wrong, 0 when it does not parse; here it is
the task's ``Task.reward`` (the math task: the same 1 / 0.1 / 0 by the evaluation's answer rule,
``task.options.reward_rule``).

Differences, each a choice of this file: one optimizer step per sampled batch (μ = 1, as reftx's
``grpo``; theirs ``ppo_epochs`` 2 over one mini-batch), so at the step ρ = 1 and V = V^old in value
and both clips shape only the gradient; the old values are the step's own values without gradient
(theirs come from a second no-gradient forward with the same weights, in eval mode: equal at μ = 1);
π_old's log-probs are ``generate``'s own (equal to a teacher-forced pass: tests/reference/
test_reinforce.py); whitening is over this process's batch (theirs gathers every process's); the
value head has no dropout (theirs has TRL's 0.1, but the model runs in eval mode at every forward,
lines 409 and 455, so it never applies). ``value_gradient: shared`` (default) lets the value loss
train the interventions too, as their value head shares the finetuned trunk; ``head`` trains only
the head. The KL reference is the policy where RL starts (reftx.train.objectives.anchor:
``kl_reference``).

The value head is an extra of the ReftModel (``ReftModel.add_extra``): the optimizer trains it with
the interventions and it is saved in every checkpoint and in the run's ``intervention/`` folder
(``extras.safetensors``) and restored by ``--resume``; a run from another run's interventions
(``train.init_from``, the SFT warm-up) starts it afresh, as theirs is new on the SFT checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from reftx.core.convert import require
from reftx.core.errors import ConfigError
from reftx.engine.model import unwrap
from reftx.eval.scoring import token_logprobs
from reftx.train.objectives.anchor import prepare_anchor, reference
from reftx.train.objectives.common import Result, register_objective, result
from reftx.train.objectives.grpo import Env, policy_logprobs, rollout

VALUE_HEAD = "value_head"  # the extra (ReftModel.add_extra) holding the value head


@dataclass(frozen=True)
class PPOOptions:
    """Options of the ``ppo`` objective (train.objective_options); defaults are Luong et al.'s ReFT scripts'."""

    group_size: int = 1  # completions sampled per question (Luong et al.: 1)
    max_new_tokens: int = 128  # length limit of a sampled completion
    temperature: float = 1.0  # sampling temperature (> 0); log-probs use the same tempered logits
    top_p: float = 1.0  # nucleus sampling mass (0 < top_p <= 1)
    partial_reward: float = 0.1  # reward of a parsable but wrong final answer (Luong et al.: 0.1)
    kl_coef: float = 0.05  # weight of the k1 KL to the reference folded into every token's reward (Luong et al.: 0.05 for natural-language CoT, 0.01 for Python); 0 skips it
    kl_reference: Literal["start", "base"] = "start"  # KL reference: the policy where RL starts (start: train.init_from's interventions after a warm-up, saved with the run) or the model with interventions off (base)
    gamma: float = 1.0  # GAE discount γ (0 <= γ <= 1)
    lam: float = 0.95  # GAE λ (0 <= λ <= 1)
    clip: float = 0.2  # ε of the clipped policy ratio (> 0)
    value_clip: float = 0.2  # c: a value prediction may move at most c from the old value before its loss is clipped (> 0)
    vf_coef: float = 5.0  # weight of the value loss (>= 0)
    whiten: bool = True  # whiten the advantages over the batch's completion tokens (Luong et al.'s adv_whitening)
    value_gradient: Literal["shared", "head"] = "shared"  # shared: the value loss also trains the interventions (the head reads their output, as Luong et al.'s shares the trunk); head: only the value head

    def __post_init__(self) -> None:
        require(self.group_size >= 1, "group_size", f"must be >= 1, got {self.group_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        for name in ("temperature", "clip", "value_clip"):
            v = getattr(self, name)
            require(v > 0 and math.isfinite(v), name, f"must be a finite number > 0, got {v}")
        require(0 < self.top_p <= 1, "top_p", f"must satisfy 0 < top_p <= 1, got {self.top_p}")
        require(0 <= self.partial_reward <= 1, "partial_reward", f"must be in [0, 1], got {self.partial_reward}")
        for name in ("kl_coef", "vf_coef"):
            v = getattr(self, name)
            require(v >= 0 and math.isfinite(v), name, f"must be a finite number >= 0, got {v}")
        for name in ("gamma", "lam"):
            v = getattr(self, name)
            require(0 <= v <= 1, name, f"must be in [0, 1], got {v}")


class ValueHead(nn.Module):
    """V(h) = w·h + b on the policy's final hidden state, in float32 (trl 0.7.2's ValueHead without
    its dropout). h (..., d) -> (...)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.summary = nn.Linear(hidden, 1, dtype=torch.float32)

    def forward(self, h: Tensor) -> Tensor:
        return self.summary(h.float()).squeeze(-1)


# -- the formulas: tensors (N, L), one row per completion, mask 1 on its tokens (EOS included) ----
def kl_rewards(scores: Tensor, mask: Tensor, old_logp: Tensor, ref_logp: Tensor | None,
               kl_coef: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = −kl_coef·kl_t + score on each completion's last token, and the k1
    estimate kl_t = log π_old(o_t) − log π_ref(o_t) (0 without ``ref_logp``); both 0 off the mask.
    scores (N,), mask/old_logp/ref_logp (N, L) -> (N, L), (N, L). train_rl_reft.py 331-353."""
    m = mask.float()
    kl = (old_logp.float() - ref_logp.float()) * m if ref_logp is not None else torch.zeros_like(m)
    rewards = -kl_coef * kl
    last = (m.sum(1).long() - 1).clamp(min=0)  # the token that emits EOS, or the last one sampled
    rewards[torch.arange(m.shape[0], device=m.device), last] += scores.float() * (m.sum(1) > 0)
    return rewards * m, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation: δ_t = r_t + γ V_{t+1} − V_t with V = 0 after each
    completion's last token, A_t = δ_t + γλ A_{t+1}, returns R = A + V; all 0 off the mask.
    (N, L) each -> (advantages, returns). train_rl_reft.py 355-369."""
    m = mask.float()
    v = values.float() * m
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)
    delta = (rewards.float() + gamma * next_v - v) * m
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + v) * m


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) with the mean and the unbiased variance over the masked entries
    (trl 0.7.2 ``core.masked_whiten``; a single entry has variance 0)."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    var = var * n / (n - 1) if float(n) > 1 else var
    return (x - mean) * torch.rsqrt(var + eps)


def _per_completion_mean(x: Tensor, m: Tensor) -> Tensor:
    return ((x * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, float]:
    """mean over completions of (1/|o|) Σ_t max(−A ρ, −A clip(ρ, 1−ε, 1+ε)), and the share of tokens
    whose clipped term was taken. (N, L) each -> (loss, clip fraction). train_rl_reft.py 462-466."""
    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    plain, clipped = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    frac = float(((clipped > plain).float() * m).sum() / m.sum().clamp(min=1))
    return _per_completion_mean(torch.maximum(plain, clipped), m), frac


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   clip: float) -> tuple[Tensor, float]:
    """½ · mean over completions of (1/|o|) Σ_t max((V − R)², (clip(V, V_old ± c) − R)²), and the
    share of tokens whose clipped term was taken. (N, L) each. train_rl_reft.py 470-474."""
    m = mask.float()
    clipped_v = torch.max(torch.min(values, old_values + clip), old_values - clip)
    plain, clipped = (values - returns) ** 2, (clipped_v - returns) ** 2
    frac = float(((clipped > plain).float() * m).sum() / m.sum().clamp(min=1))
    return 0.5 * _per_completion_mean(torch.maximum(plain, clipped), m), frac


# -- the objective ----------------------------------------------------------------------------
def value_head(model: Any) -> ValueHead:
    """The model's value head, created (PyTorch's default init, as TRL's) when it has none yet."""
    reft = unwrap(model)
    if not hasattr(reft, "add_extra"):
        raise ConfigError("train.objective", f"ppo trains a value head with the interventions, which "
                                             f"{type(reft).__name__} (a lora: section) cannot carry: remove the "
                                             "lora: section, or use grpo")
    if VALUE_HEAD not in reft.extras:
        cfg = reft.config
        reft.add_extra(VALUE_HEAD, ValueHead(getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size))
    return reft.extras[VALUE_HEAD]


def prepare(model: Any, opts: PPOOptions) -> None:
    """Before the optimizer is built (the runner calls it): the value head, and the KL anchor."""
    value_head(model)
    if opts.kl_coef > 0:
        prepare_anchor(model, opts.kl_reference)


@register_objective("ppo", options=PPOOptions)
def ppo(model: Any, batch: dict[str, Any], opts: PPOOptions, env: Env | None = None) -> Result:
    """PPO with a value head and GAE on the batch's questions, Luong et al.'s reinforced finetuning
    (module docstring); logs reward, accuracy (reward 1), kl, pg_loss, vf_loss, value, return,
    clip fractions and the mean completion length."""
    r = rollout(model, batch, opts, env, "ppo")
    head, width = value_head(model), r.prompt.shape[1]
    ref_logp = None
    if opts.kl_coef > 0:
        ref_logp, _ = policy_logprobs(reference(model, opts.kl_reference), r.prompt, r.mask, r.tokens, r.cmask,
                                      opts.temperature)
    out = model(input_ids=torch.cat([r.prompt, r.tokens], 1), attention_mask=torch.cat([r.mask, r.cmask], 1),
                prompt_lengths=r.mask.sum(1), output_hidden_states=True)
    logp = token_logprobs(out.logits[:, width - 1:-1], r.tokens, opts.temperature)
    h = out.hidden_states[-1][:, width - 1:-1]  # the state each completion token is chosen in
    values = head(h.detach() if opts.value_gradient == "head" else h)
    m = r.cmask.float()
    rewards, kl = kl_rewards(r.rewards, m, r.old_logp, ref_logp, opts.kl_coef)
    old_values = values.detach() * m
    adv, returns = gae(rewards, old_values, m, opts.gamma, opts.lam)
    pg, clip_frac = ppo_policy_loss(logp, r.old_logp, masked_whiten(adv, m) if opts.whiten else adv, m, opts.clip)
    vf, vclip_frac = ppo_value_loss(values, old_values, returns, m, opts.value_clip)
    n = m.sum().clamp(min=1)
    logs = {"reward": float(r.rewards.mean()), "accuracy": float((r.rewards >= 1).float().mean()),
            "kl": float(kl.sum() / n), "pg_loss": float(pg.detach()), "vf_loss": float(vf.detach()),
            "value": float(old_values.sum() / n), "return": float(returns.sum() / n),
            "clip_fraction": clip_frac, "value_clip_fraction": vclip_frac, "completion_tokens": float(m.sum(1).mean())}
    return result(out, pg + opts.vf_coef * vf, logs)


ppo.prepare = prepare  # type: ignore[attr-defined]  # called by the runner before the optimizer is built

__all__ = ["PPOOptions", "VALUE_HEAD", "ValueHead", "gae", "kl_rewards", "masked_whiten", "ppo", "ppo_policy_loss",
           "ppo_value_loss", "prepare", "value_head"]

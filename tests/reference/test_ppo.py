"""PPO (Luong et al.'s reinforced finetuning) on hand-made tensors and against mwp_ReFT's own layout,
the ``ppo`` objective on every primitive, and the RL objectives' KL anchor (the policy where RL
starts, not the base).

References: github.com/lqtrung1998/mwp_ReFT at commit bdc844e, ``train_rl_reft.py`` (line numbers
in each test) and ``src/utils.py`` 110-111 (``discount_cumsum``); trl 0.7.2 ``trl/core.py``
(``masked_whiten``, ``masked_var``)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.signal
import torch

import reftx
from reftx.core.errors import ConfigError
from reftx.train.objectives.anchor import ANCHOR, prepare_anchor, reference
from reftx.train.objectives.common import objective_options
from reftx.train.objectives.grpo import EXAMPLE_INDEX, Env, completion_mask, grpo, left_padded_prompts, policy_logprobs
from reftx.train.objectives.ppo import (
    VALUE_HEAD,
    PPOOptions,
    gae,
    kl_rewards,
    masked_whiten,
    ppo,
    ppo_policy_loss,
    ppo_value_loss,
    prepare,
)
from tests.conftest import tiny_model
from tests.reference.test_reinforce import COMPOSED, SCHEDULES, _nonzero


# -- the formulas by hand ---------------------------------------------------------------------------
def test_kl_rewards_by_hand():
    """train_rl_reft.py 331-353: the k1 KL (old − ref log-prob) on every completion token, times
    −kl_coef, and the score on the token that emits EOS (or the last one sampled); 0 off the mask."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.3, -0.7, -5.0, -5.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-0.3, -1.7, -1.0, -1.0]])
    rewards, kl = kl_rewards(torch.tensor([1.0, 0.1]), mask, old, ref, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    # row 0: -0.1*0.5, -0.1*(-1), 0 + score 1 on its last token; row 1: 0, -0.1*1 + score 0.1
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    no_kl, zero = kl_rewards(torch.tensor([1.0, 0.1]), mask, old, None, kl_coef=0.1)
    assert torch.equal(zero, torch.zeros(2, 4))
    assert no_kl.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, pytest.approx(0.1), 0.0, 0.0]]


def test_gae_by_hand():
    """train_rl_reft.py 355-369: δ_t = r_t + γV_{t+1} − V_t (V = 0 after the last token),
    A_t = δ_t + γλA_{t+1}, returns = A + V."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.1, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.3, 9.0]])  # 9.0: off the mask, never read
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: δ = 0.1, 0.1, 0.3 -> A2 = 0.3, A1 = 0.1 + 0.5*0.3 = 0.25, A0 = 0.1 + 0.5*0.25 = 0.225
    # row 1: δ1 = 0.1 + 0 - 0.3 = -0.2, δ0 = 0.3 - 0.2 = 0.1 -> A1 = -0.2, A0 = 0.1 + 0.5*(-0.2) = 0
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3], [0.0, -0.2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0], [0.2, 0.1, 0.0]]))
    # λ = 1, γ = 1: Monte-Carlo returns (every token's return is the final score)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3], [-0.1, -0.2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.1, 0.0]]))
    # γ = 0.5, λ = 1: δ = 0.5*0.6 - 0.5, 0.5*0.7 - 0.6, 1 - 0.7 = -0.2, -0.25, 0.3
    adv, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[-0.2 + 0.5 * (-0.25 + 0.5 * 0.3), -0.25 + 0.5 * 0.3, 0.3]]))


def _their_layout(prompt_len, ids, eos, score, old_lp, ref_lp, val, kl_coef, gamma, lam):
    """What train_rl_reft.py 331-377 computes, in its own layout: one row per sequence (the prompt,
    left-padded to ``prompt_len``, then the completion); position t of the log-probs scores token
    t + 1; rewards, values and advantages sit at the position that chooses the next token. numpy."""
    mask = np.zeros(ids.shape)
    mask[:, prompt_len - 1:-1] = 1
    score_rew = np.zeros(ids.shape)
    score_rew[:, -2] = score
    for b, t in zip(*np.nonzero(ids == eos)):
        mask[b, t:] = 0
        score_rew[b, t:] = 0
        score_rew[b, t - 1] = score[b]
    kl_rew = np.zeros(ids.shape)
    kl_rew[:, :-1] = -((old_lp - ref_lp) * mask[:, :-1])
    rew = score_rew + kl_coef * kl_rew
    val = val * mask
    adv = np.zeros(ids.shape)
    for i in range(len(rew)):
        delta = -val[i, :-1] + rew[i, :-1] + gamma * val[i, 1:]
        a = scipy.signal.lfilter([1], [1, -gamma * lam], delta[::-1])[::-1]  # src/utils.py 110-111
        a[:prompt_len - 1] = 0
        adv[i, :-1] = a
    return rew * mask, adv * mask, (adv + val) * mask, mask


def test_rewards_gae_and_returns_equal_mwp_refts_own_layout():
    """Our tensors (one column per completion token) equal mwp_ReFT's (one column per sequence
    position, read at the positions that choose the completion's tokens), with EOS in the middle,
    at the end and missing (a truncated completion is scored on its last token)."""
    p, eos = 3, 2
    prompts = np.array([[0, 5, 6], [10, 11, 12], [0, 0, 13]])
    completions = np.array([[7, 8, 2, 0, 0], [9, 2, 0, 0, 0], [4, 5, 6, 7, 8]])
    ids = np.concatenate([prompts, completions], 1)
    g = np.random.default_rng(0)
    old_lp, ref_lp = -g.random((3, ids.shape[1] - 1)), -g.random((3, ids.shape[1] - 1))
    val, score = g.normal(size=ids.shape), np.array([1.0, 0.1, 0.0])
    rew, adv, ret, mask = _their_layout(p, ids, eos, score, old_lp, ref_lp, val, kl_coef=0.05, gamma=0.98, lam=0.95)
    cols = slice(p - 1, p - 1 + completions.shape[1])
    cmask = completion_mask(torch.tensor(completions), eos)
    assert cmask.tolist() == mask[:, cols].tolist()

    def t(x):
        return torch.tensor(x[:, cols], dtype=torch.float32)

    ours, _ = kl_rewards(torch.tensor(score, dtype=torch.float32), cmask, t(old_lp), t(ref_lp), kl_coef=0.05)
    torch.testing.assert_close(ours, t(rew), atol=1e-6, rtol=0)
    our_adv, our_ret = gae(ours, t(val), cmask, gamma=0.98, lam=0.95)
    torch.testing.assert_close(our_adv, t(adv), atol=1e-5, rtol=0)
    torch.testing.assert_close(our_ret, t(ret), atol=1e-5, rtol=0)


def test_masked_whiten_by_hand():
    """trl 0.7.2 core.masked_whiten (mwp_ReFT's adv_whitening, train_rl_reft.py 419-423): the mean
    and the unbiased variance over the masked entries: 1, 2, 3, 4 -> mean 2.5, var 5/3."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = masked_whiten(x, mask)
    s = math.sqrt(5 / 3 + 1e-8)
    torch.testing.assert_close(w[mask.bool()], torch.tensor([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]))
    assert masked_whiten(torch.tensor([[3.0, 7.0]]), torch.tensor([[1, 0]]))[0, 0] == 0.0  # one token: no NaN


def test_clipped_policy_loss_by_hand():
    """train_rl_reft.py 462-466: per token max(−Aρ, −A·clip(ρ, 0.8, 1.2)), mean per completion, then
    over completions."""
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 3.0]]))
    adv = torch.tensor([[1.0, -2.0], [-1.0, 5.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, frac = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # row 0: max(-1.5, -1.2) = -1.2 (clipped), max(2.0, 2.0) = 2.0 -> 0.4; row 1: max(0.5, 0.8) = 0.8 (clipped)
    assert float(loss) == pytest.approx((0.4 + 0.8) / 2, abs=1e-6)
    assert frac == pytest.approx(2 / 3)


def test_clipped_value_loss_by_hand():
    """train_rl_reft.py 470-474: ½ · per token max((V − R)², (clip(V, V_old ± 0.2) − R)²), mean per
    completion, then over completions."""
    values = torch.tensor([[0.5, 1.0], [-0.5, 7.0]])
    old = torch.tensor([[0.2, 1.0], [0.0, 0.0]])
    returns = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, frac = ppo_value_loss(values, old, returns, mask, clip=0.2)
    # row 0: clip(0.5) = 0.4: max(0.25, 0.36) = 0.36 (clipped), then 1.0 -> 0.68; row 1: clip(-0.5) = -0.2:
    # max(0.25, 0.04) = 0.25
    assert float(loss) == pytest.approx(0.5 * (0.68 + 0.25) / 2, abs=1e-6)
    assert frac == pytest.approx(1 / 3)


def test_options_are_luong_et_als_and_errors_name_the_field():
    o = PPOOptions()
    assert (o.group_size, o.kl_coef, o.gamma, o.lam, o.clip, o.value_clip, o.vf_coef, o.partial_reward,
            o.temperature, o.whiten, o.kl_reference) == (1, 0.05, 1.0, 0.95, 0.2, 0.2, 5.0, 0.1, 1.0, True, "start")
    with pytest.raises(ConfigError, match=r"gamma: must be in \[0, 1\], got 1.5"):
        PPOOptions(gamma=1.5)
    with pytest.raises(ConfigError, match="vf_coef: must be a finite number >= 0, got -1"):
        PPOOptions(vf_coef=-1)
    with pytest.raises(ConfigError, match="train.objective_options.kl_referenc"):
        objective_options("ppo", {"kl_referenc": "base"})
    with pytest.raises(ConfigError, match="train.objective_options.kl_reference"):
        objective_options("grpo", {"kl_reference": "sft"})


# -- the objective ------------------------------------------------------------------------------
class Tok:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in ids]


def even_env(partial_for_odd: bool = False):
    """Reward 1 when the first sampled token has an even id (else 0, or the partial reward)."""
    return Env(Tok(), lambda texts, index, partial: torch.tensor(
        [1.0 if int(t.split()[0]) % 2 == 0 else (partial if partial_for_odd else 0.0) for t in texts]))


BATCH = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 20], [10, 11, 12, 21, 0, 0]]),
         "labels": torch.tensor([[-100] * 5 + [20], [-100, -100, -100, 21, -100, -100]]),
         "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]),
         "example_info": {EXAMPLE_INDEX: torch.tensor([0.0, 1.0])}}


@pytest.mark.parametrize("kind, positions, options", COMPOSED,
                         ids=[f"{k}-{'+'.join(p)}{'-' + o['input_gate'] if o else ''}" for k, p, o in COMPOSED])
def test_every_primitive_trains_under_ppo(kind, positions, options):
    """One ppo step on each composition (prompt positions, BREP's {generated: n, prompt: true},
    every input gate): a finite loss that is pg + vf_coef·vf; gradients reach the interventions and
    the value head and nothing of the base; the value head and the anchor are the model's extras."""
    base = tiny_model("llama")
    reft = reftx.attach(base, [{"kind": kind, "layers": [1, 2], "positions": positions, **options}])
    _nonzero(reft)
    opts = objective_options("ppo", {"group_size": 2, "max_new_tokens": 3, "vf_coef": 2.0})
    prepare(reft, opts)
    assert sorted(reft.extras) == [ANCHOR, VALUE_HEAD]
    torch.manual_seed(1)
    loss, logs, _ = ppo(reft, BATCH, opts, env=even_env(True))
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in logs.values())
    assert float(loss.detach()) == pytest.approx(logs["pg_loss"] + 2.0 * logs["vf_loss"], abs=1e-5)
    assert logs["kl"] == pytest.approx(0.0, abs=1e-5)  # the first step samples from the anchor itself: k1 = 0
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert any(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in reft.interventions.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reft.extras[VALUE_HEAD].parameters())


def test_ppo_trains_the_interventions_and_value_head_toward_the_reward():
    """Reward: the first sampled token has an even id. Ten steps raise its probability and the
    mean reward; the base is untouched; value_gradient: head keeps the value loss off the interventions."""
    base = tiny_model("llama")
    with torch.no_grad():
        base.lm_head.weight.mul_(20)  # a random model is near uniform: sharpen it so an edit moves it
    reft = reftx.attach(base, SCHEDULES["prompt"])
    opts = objective_options("ppo", {"group_size": 8, "max_new_tokens": 2, "kl_coef": 0.02})
    prompt, pmask = left_padded_prompts(BATCH, 0)

    def even_share():
        with torch.no_grad():
            p = reft(input_ids=prompt, attention_mask=pmask, prompt_lengths=pmask.sum(1)).logits[:, -1].softmax(-1)
        return float(p[:, 0::2].sum(1).mean())

    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    prepare(reft, opts)
    share0 = even_share()
    optimizer = torch.optim.AdamW(reft.param_groups(0.0), lr=5e-2)
    torch.manual_seed(0)
    rewards = []
    for _ in range(10):
        loss, logs, _ = ppo(reft, BATCH, opts, env=even_env())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(logs["reward"])
    assert even_share() > share0 + 0.3 and sum(rewards[-3:]) / 3 > rewards[0] + 0.3
    assert {"reward", "accuracy", "kl", "pg_loss", "vf_loss", "value", "return", "clip_fraction",
            "value_clip_fraction", "completion_tokens", "objective"} <= set(logs)
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())

    def intervention_grads(value_gradient: str, vf_coef: float) -> list[torch.Tensor]:
        torch.manual_seed(2)  # the same samples each time
        loss, _, _ = ppo(reft, BATCH, {"group_size": 2, "max_new_tokens": 2, "value_gradient": value_gradient,
                                       "vf_coef": vf_coef}, env=even_env())
        return torch.autograd.grad(loss, list(reft.interventions.parameters()), allow_unused=True)

    def same(a, b):
        return all((x is None and y is None) or (x is not None and y is not None and torch.allclose(x, y))
                   for x, y in zip(a, b))

    assert same(intervention_grads("head", 0.0), intervention_grads("head", 1.0))  # vf reaches the head only
    assert not same(intervention_grads("shared", 0.0), intervention_grads("shared", 1.0))


# -- the KL anchor ------------------------------------------------------------------------------
def _logps(model, prompt, mask, tokens, cmask):
    with torch.no_grad():
        return policy_logprobs(model, prompt, mask, tokens, cmask, 1.0)[0]


def test_the_kl_anchor_is_the_warm_up_policy_not_the_base(tmp_path):
    """After a warm-up (interventions set away from their init), the RL objectives' reference is the
    warm-up policy: its log-probs equal the warm-up model's, not the base's, and stay so while RL
    moves the interventions; kl_reference: base is the model with interventions off. The anchor is
    saved with the interventions and loaded back over a freshly captured one (resume)."""
    reft = reftx.attach(tiny_model("llama"), SCHEDULES["prompt+generated"])
    _nonzero(reft)  # the "warm-up" result
    prompt, mask = left_padded_prompts(BATCH, 0)
    tokens = torch.tensor([[30, 31, 2], [40, 2, 0]])
    cmask = completion_mask(tokens, 2)
    warm = _logps(reft, prompt, mask, tokens, cmask)
    with reft.disabled():
        base = _logps(reft, prompt, mask, tokens, cmask)
    assert (warm - base)[cmask.bool()].abs().max() > 1e-2

    opts = {"group_size": 2, "max_new_tokens": 3, "beta": 0.5}
    grpo.prepare(reft, objective_options("grpo", opts))
    torch.manual_seed(0)
    _, logs, _ = grpo(reft, BATCH, opts, env=even_env(True))
    assert logs["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: the policy is the anchor
    torch.manual_seed(0)
    _, base_logs, _ = grpo(reft, BATCH, {**opts, "kl_reference": "base"}, env=even_env(True))
    assert base_logs["kl"] > 1e-3  # the same samples against the base: the warm-up's distance from it
    optimizer = torch.optim.SGD(reft.param_groups(0.0), lr=0.5)
    for _ in range(2):  # RL moves the interventions
        loss, _, _ = grpo(reft, BATCH, opts, env=even_env(True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    now = _logps(reft, prompt, mask, tokens, cmask)
    assert (now - warm)[cmask.bool()].abs().max() > 1e-3
    start = _logps(reference(reft, "start"), prompt, mask, tokens, cmask)
    torch.testing.assert_close(start, warm, atol=1e-6, rtol=0)
    torch.testing.assert_close(_logps(reference(reft, "base"), prompt, mask, tokens, cmask), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(_logps(reft, prompt, mask, tokens, cmask), now)  # the live weights are back

    reft.save_pretrained(tmp_path / "ckpt")
    again = reftx.attach(tiny_model("llama"), SCHEDULES["prompt+generated"])  # fresh init: another policy
    prepare_anchor(again, "start")  # what the runner does before --resume loads the checkpoint
    again.load_trained(tmp_path / "ckpt")
    torch.testing.assert_close(_logps(reference(again, "start"), prompt, mask, tokens, cmask), warm, atol=1e-6, rtol=0)
    torch.testing.assert_close(_logps(again, prompt, mask, tokens, cmask), now, atol=1e-6, rtol=0)
    plain = reftx.ReftModel.from_pretrained(tiny_model("llama"), tmp_path / "ckpt")  # the policy alone
    assert len(plain.extras) == 0
    torch.testing.assert_close(_logps(plain, prompt, mask, tokens, cmask), now, atol=1e-6, rtol=0)


def test_a_model_that_cannot_carry_the_anchor_or_value_head_is_refused_with_the_fix():
    lora_like = SimpleNamespace()
    with pytest.raises(ConfigError, match=r"train.objective_options.kl_reference: start keeps a frozen copy of the "
                                          r"trained parameters with the run's checkpoints, which SimpleNamespace \(a "
                                          r"lora: section\) cannot carry: set kl_reference: base"):
        prepare_anchor(lora_like, "start")
    assert prepare_anchor(lora_like, "base") is None
    with pytest.raises(ConfigError, match=r"train.objective: ppo trains a value head with the interventions, which "
                                          r"SimpleNamespace \(a lora: section\) cannot carry"):
        prepare(lora_like, PPOOptions())

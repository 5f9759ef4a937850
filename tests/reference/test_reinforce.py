"""GRPO's formulas on hand-made tensors, the math reward's values, and exactness of sampling: the
log-probs the loss uses (generate's own logits) equal a teacher-forced recomputation."""
from __future__ import annotations

import math

import pytest
import torch

import reftx
from reftx.core.errors import ConfigError, DataError
from reftx.train.objectives.grpo import (
    EXAMPLE_INDEX,
    Env,
    GRPOOptions,
    completion_mask,
    grpo,
    grpo_loss,
    group_advantages,
    k3_kl,
    left_padded_prompts,
    policy_logprobs,
    sample,
)
from tests.conftest import tiny_model


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.577350
    #          A = ±0.5 / 0.577350 = ±0.866025; group 2: all 0.1 -> std 0 -> A = 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    a = group_advantages(r, 4, eps=0.0)
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025])
    torch.testing.assert_close(a[:4], expected, atol=1e-6, rtol=0)
    assert torch.equal(group_advantages(r, 4, eps=1e-4)[4:], torch.zeros(4))
    # scale_rewards: none (Dr. GRPO): centred only -> ±0.5 and 0
    torch.testing.assert_close(group_advantages(r, 4, scale=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0.0]))


def test_k3_kl_by_hand():
    # π_θ = 0.5, π_ref = 0.25: d = log(0.25 / 0.5) = -0.693147; e^d - d - 1 = 0.5 + 0.693147 - 1
    kl = k3_kl(torch.tensor([math.log(0.5), math.log(0.3)]), torch.tensor([math.log(0.25), math.log(0.3)]))
    torch.testing.assert_close(kl, torch.tensor([0.193147, 0.0]), atol=1e-6, rtol=0)


def test_grpo_loss_by_hand():
    # completion 0 (A = +1, 2 tokens): ratios 1.5 and 1.0 -> min(1.5, clip 1.2) = 1.2 and 1.0 -> mean 1.1
    # completion 1 (A = -1, 1 token; the second is masked): ratio 0.5 -> min(-0.5, -clip(0.5) = -0.8) = -0.8
    # loss = -(1.1 + (-0.8)) / 2 = -0.15; clipped tokens: the first (1.2 < 1.5) and the third (-0.8 < -0.5)
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 7.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, logs = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), mask, clip=0.2)
    assert float(loss) == pytest.approx(-0.15, abs=1e-6)
    assert logs["clip_fraction"] == pytest.approx(2 / 3)
    # with beta: per-token KL to ref log-probs of 0 (ratio π_ref/π_θ = 1/ρ): k3 = 1/ρ + log ρ - 1
    beta = 0.5
    k = lambda rho: 1 / rho + math.log(rho) - 1  # noqa: E731
    seq0 = (1.2 - beta * k(1.5) + 1.0 - beta * k(1.0)) / 2
    seq1 = -0.8 - beta * k(0.5)
    loss, logs = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), mask, clip=0.2, beta=beta, ref_logp=old)
    assert float(loss) == pytest.approx(-(seq0 + seq1) / 2, abs=1e-6)
    assert logs["kl"] == pytest.approx((k(1.5) + k(1.0) + k(0.5)) / 3, abs=1e-6)


def test_grpo_loss_reductions_by_hand():
    # the per-token terms of test_grpo_loss_by_hand: 1.2, 1.0 (completion 0) and -0.8 (completion 1)
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 7.0]]))
    mask, adv = torch.tensor([[1, 1], [1, 0]]), torch.tensor([1.0, -1.0])
    dapo, _ = grpo_loss(logp, old, adv, mask, clip=0.2, loss_type="dapo")  # over the batch's 3 tokens
    assert float(dapo) == pytest.approx(-(1.2 + 1.0 - 0.8) / 3, abs=1e-6)
    dr, _ = grpo_loss(logp, old, adv, mask, clip=0.2, loss_type="dr_grpo", max_tokens=4)  # over 2 x 4
    assert float(dr) == pytest.approx(-(1.2 + 1.0 - 0.8) / 8, abs=1e-6)
    # the length bias dapo removes: a wrong completion twice as long costs twice as much under dapo,
    # the same under grpo
    long = torch.ones(2, 4, dtype=torch.long)
    short = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    z = torch.zeros(2, 4)
    g_long, g_short = (float(grpo_loss(z, z, adv, m, clip=0.2)[0]) for m in (long, short))
    d_long, d_short = (float(grpo_loss(z, z, adv, m, clip=0.2, loss_type="dapo")[0]) for m in (long, short))
    assert g_long == g_short == 0.0 and d_long == 0.0 and d_short == pytest.approx(-(4 - 2) / 6)
    with pytest.raises(ValueError, match="dr_grpo needs max_tokens"):
        grpo_loss(logp, old, adv, mask, clip=0.2, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="must be grpo, dapo or dr_grpo, got 'x'"):
        grpo_loss(logp, old, adv, mask, clip=0.2, loss_type="x")


def test_prompts_and_completion_masks_by_hand():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 0, 0]]),
             "labels": torch.tensor([[-100, -100, -100, 8, 9, -100], [-100, 11, 12, 13, -100, -100]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])}
    ids, mask = left_padded_prompts(batch, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 10]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    tokens = torch.tensor([[4, 2, 9, 2], [4, 4, 4, 4]])
    assert completion_mask(tokens, eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_options_errors_name_the_field():
    with pytest.raises(ConfigError, match="group_size"):
        GRPOOptions(group_size=1)
    with pytest.raises(ConfigError, match="top_p"):
        GRPOOptions(top_p=0.0)


SCHEDULES = {
    "prompt": [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}],
    "prompt+generated": [{"kind": "loreft", "rank": 2, "layers": [1], "positions": {"last": 2}},
                         {"kind": "loreft", "rank": 2, "layers": [2], "positions": {"generated": 2}}],
}


def _nonzero(reft):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in reft.interventions.parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_sampled_logprobs_equal_a_teacher_forced_recomputation(schedule):
    """The policy that is scored is the policy that is trained: generate's logits (KV-cached, left-padded
    prompts of different lengths) give the same completion log-probs as one teacher-forced forward."""
    reft = reftx.attach(tiny_model("llama"), SCHEDULES[schedule])
    _nonzero(reft)
    prompt = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    mask = (prompt != 0).long()
    opts = GRPOOptions(group_size=3, max_new_tokens=6, temperature=0.7)
    torch.manual_seed(0)
    tokens, cmask, old = sample(reft, prompt, mask, opts, pad_id=0, eos_id=2)
    assert tokens.shape[0] == 6
    with torch.no_grad():
        new, _ = policy_logprobs(reft, prompt.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), tokens, cmask,
                                 opts.temperature)
        with reft.disabled():
            base, _ = policy_logprobs(reft, prompt.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), tokens,
                                      cmask, opts.temperature)
    m = cmask.bool()
    torch.testing.assert_close(new[m], old[m], atol=1e-5, rtol=0)
    assert (base[m] - old[m]).abs().max() > 1e-3  # the interventions change the policy


def _gated(kind: str) -> list[dict]:
    import dataclasses

    from reftx.core.intervention import get_intervention
    from reftx.parts.compose import INPUT_GATES

    fields = {f.name for f in dataclasses.fields(get_intervention(kind).Config)}
    return [{"input_gate": g} for g in INPUT_GATES.names()] if "input_gate" in fields else []


# every registered primitive (a new one is covered with no edit here), on prompt positions and on
# BREP's prefix schedule (the prompt and the first generated tokens), and every input gate it accepts
COMPOSED = [(k, pos, {}) for k in reftx.available_interventions()
            for pos in ({"first": 2, "last": 2}, {"generated": 2, "prompt": True})]
COMPOSED += [(k, {"last": 2}, g) for k in reftx.available_interventions() for g in _gated(k)]


@pytest.mark.parametrize("kind, positions, options", COMPOSED,
                         ids=[f"{k}-{'+'.join(p)}{'-' + o['input_gate'] if o else ''}" for k, p, o in COMPOSED])
def test_every_primitive_samples_exactly_and_trains_under_grpo(kind, positions, options):
    """One grpo step on each composition: the sampled log-probs equal a teacher-forced recomputation
    (the policy scored is the policy trained), the loss is finite and its gradients reach the
    interventions and nothing else."""
    base = tiny_model("llama")
    reft = reftx.attach(base, [{"kind": kind, "layers": [1, 2], "positions": positions, **options}])
    _nonzero(reft)
    prompt = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    mask = (prompt != 0).long()
    opts = GRPOOptions(group_size=2, max_new_tokens=4)
    torch.manual_seed(0)
    tokens, cmask, old = sample(reft, prompt, mask, opts, pad_id=0, eos_id=2)
    with torch.no_grad():
        new, _ = policy_logprobs(reft, prompt.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), tokens, cmask,
                                 opts.temperature)
    m = cmask.bool()
    torch.testing.assert_close(new[m], old[m], atol=1e-5, rtol=0)

    class Tok:
        pad_token_id, eos_token_id = 0, 2

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(str(int(t)) for t in row) for row in ids]

    env = Env(Tok(), lambda texts, index, partial: torch.tensor([float(int(t.split()[0]) % 2) for t in texts]))
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 20], [10, 11, 12, 21, 0, 0]]),
             "labels": torch.tensor([[-100] * 5 + [20], [-100, -100, -100, 21, -100, -100]]),
             "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]),
             "example_info": {EXAMPLE_INDEX: torch.tensor([0.0, 1.0])}}
    torch.manual_seed(1)
    loss, logs, _ = grpo(reft, batch, {"group_size": 4, "max_new_tokens": 3, "beta": 0.04}, env=env)
    assert torch.isfinite(loss) and math.isfinite(logs["kl"])
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in reft.interventions.parameters())


def test_the_objective_trains_only_the_interventions_toward_the_reward():
    """Reward: the first sampled token has an even id. A few steps of the objective raise its
    probability; gradients reach only the interventions; the logs carry the GRPO terms."""
    base = tiny_model("llama")
    with torch.no_grad():
        base.lm_head.weight.mul_(20)  # a random model is near uniform: sharpen it so an edit moves it
    reft = reftx.attach(base, SCHEDULES["prompt"])

    class Tok:
        pad_token_id, eos_token_id = 0, 2

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(str(int(t)) for t in row) for row in ids]

    env = Env(Tok(), lambda texts, index, partial: torch.tensor([float(int(t.split()[0]) % 2 == 0) for t in texts]))
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 20], [10, 11, 12, 21, 0, 0]]),
             "labels": torch.tensor([[-100] * 5 + [20], [-100, -100, -100, 21, -100, -100]]),
             "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]),
             "example_info": {EXAMPLE_INDEX: torch.tensor([0.0, 1.0])}}
    opts = {"group_size": 8, "max_new_tokens": 2, "beta": 0.02}
    prompt, pmask = left_padded_prompts(batch, 0)

    def even_share():
        with torch.no_grad():
            p = reft(input_ids=prompt, attention_mask=pmask, prompt_lengths=pmask.sum(1)).logits[:, -1].softmax(-1)
        return float(p[:, 0::2].sum(1).mean())

    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    share0 = even_share()
    optimizer = torch.optim.AdamW(reft.interventions.parameters(), lr=5e-2)
    torch.manual_seed(0)
    for _ in range(15):
        loss, logs, _ = grpo(reft, batch, opts, env=env)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in base.parameters())
        optimizer.step()
    assert even_share() > share0 + 0.2
    assert {"reward", "accuracy", "kl", "clip_fraction", "completion_tokens", "objective"} <= set(logs)
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    with pytest.raises(DataError, match="runs inside `reftx run`"):
        grpo(reft, batch, opts)


def test_the_math_reward_by_hand():
    from reftx.data.examples import Example
    from reftx.tasks.math_reasoning import MathReasoning

    task = MathReasoning(MathReasoning.Options())
    ex = Example("q", "", answer="42")
    assert task.reward("So 6 * 7 = 42. The answer is 42.", ex, 0.1) == 1.0
    assert task.reward("The answer is 41.", ex, 0.1) == 0.1  # parsable, wrong: the partial reward
    assert task.reward("I do not know.", ex, 0.1) == 0.0
    letter = Example("q", "", answer="C")
    assert task.reward("The answer is (C).", letter, 0.1) == 1.0
    assert task.reward("The answer is (B).", letter, 0.25) == 0.25
    strict = MathReasoning(MathReasoning.Options(reward_rule="lm_eval_strict"))
    assert strict.reward("#### 42", ex, 0.1) == 1.0 and strict.reward("The answer is 42.", ex, 0.1) == 0.1


def _tiny_env():
    class Tok:
        pad_token_id, eos_token_id = 0, 2

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(str(int(t)) for t in row) for row in ids]

    # reward 1 when the first sampled token is even, the partial 0.1 otherwise
    return Env(Tok(), lambda texts, index, partial: torch.tensor([1.0 if int(t.split()[0]) % 2 == 0 else partial
                                                                  for t in texts]))


BATCH = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 20, 22], [10, 11, 12, 21, 23, 0, 0]]),
         "labels": torch.tensor([[-100] * 5 + [20, 22], [-100, -100, -100, 21, 23, -100, -100]]),
         "attention_mask": torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]]),
         "example_info": {EXAMPLE_INDEX: torch.tensor([0.0, 1.0])}}


def test_carft_adds_its_weighted_contrastive_term_to_grpo():
    """Same samples (same seed): the carft loss minus the loss with weight 0 is weight · L_CL, the
    term it logs; only the interventions get gradients; a misspelt nested option is named."""
    from reftx.train.objectives.common import objective_options
    from reftx.train.objectives.grpo import carft

    reft = reftx.attach(tiny_model("llama"), SCHEDULES["prompt"])
    _nonzero(reft)
    env = _tiny_env()
    opts = {"group_size": 4, "max_new_tokens": 3, "beta": 0.0, "contrastive": {"weight": 0.5, "negatives": "batch"}}
    losses = {}
    for w in (0.0, 0.5):
        torch.manual_seed(0)
        loss, logs, _ = carft(reft, BATCH, {**opts, "contrastive": {**opts["contrastive"], "weight": w}}, env=env)
        losses[w] = (loss, logs)
    (l0, _), (l1, logs) = losses[0.0], losses[0.5]
    assert logs["carft_positives"] > 0 and "carft_sim_correct" in logs
    assert float(l1 - l0) == pytest.approx(0.5 * logs["carft_loss"], abs=1e-5)
    l1.backward()
    assert all(p.grad is None for p in reft.base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reft.interventions.parameters())
    with pytest.raises(ConfigError, match="contrastive.temprature"):
        objective_options("carft", {"contrastive": {"temprature": 0.1}})


def test_carft_embedding_partial_reward_reshapes_only_partial_rewards():
    from reftx.train.objectives.grpo import carft

    reft = reftx.attach(tiny_model("llama"), SCHEDULES["prompt"])
    env = _tiny_env()
    torch.manual_seed(0)
    _, plain, _ = carft(reft, BATCH, {"group_size": 4, "max_new_tokens": 2, "beta": 0.0}, env=env)
    torch.manual_seed(0)
    _, shaped, _ = carft(reft, BATCH, {"group_size": 4, "max_new_tokens": 2, "beta": 0.0,
                                       "contrastive": {"partial_reward": True}}, env=env)
    assert shaped["accuracy"] == plain["accuracy"]  # rewards of 1 unchanged
    # each partial 0.1 became 0.1·cos + 0.2, in [0.1, 0.3]: the mean moves up by 0.1..0.2 per partial sample
    partial_share = 1 - plain["accuracy"]
    assert partial_share > 0
    assert plain["reward"] + 0.1 * partial_share - 1e-6 <= shaped["reward"] <= plain["reward"] + 0.2 * partial_share + 1e-6


def test_validate_refuses_a_sampling_objective_on_a_task_without_reward(tmp_path):
    from reftx.config.schema import load_experiment
    from reftx.recipes.registry import validate

    exp = load_experiment("experiments/quickstart.yaml", ["train.objective=grpo"])
    with pytest.raises(ConfigError, match="defines no reward"):
        validate(exp)
    math_exp = load_experiment("experiments/math/math_grpo_loreft.yaml",
                               ["train.objective=grpo", "train.objective_options.group_size=3"])
    assert validate(math_exp)  # the math task has a reward: the groups are returned

"""Unlearning objectives (gd, idk, npo, rmu) on hand-made logits and hidden states, exact values.

A fake model returns fixed tensors picked by the first input id of each row (its example id), so
the objectives' batch subsetting is visible; ``disabled()`` switches it to the reference tensors.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

import reftx
from reftx.core.errors import DataError
from reftx.train.loss import compose
from reftx.train.objectives.common import OBJECTIVES, rmu_direction, sequence_nll
from tests.conftest import batch, tiny_model

LN2, LN3 = math.log(2.0), math.log(3.0)
X = 7.0  # a logit on a position whose label is ignored: must not matter

# V = 3, T = 3. Row 0 (forget): labels [-, 0, 1]; row 1 (retain): labels [-, -, 2];
# row 2 (forget, last token padded): labels [-, 0, -]. Position t predicts label t + 1.
LABELS = torch.tensor([[-100, 0, 1], [-100, -100, 2], [-100, 0, -100]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
GATE = torch.tensor([1.0, 0.0, 1.0])
LOGITS = torch.tensor([
    # row 0: p(0) = 2/4 -> ln 2; p(1) = 1/3 -> ln 3; NLL_0 = (ln 2 + ln 3)/2 = ln 6 / 2
    [[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [X, 0.0, 0.0]],
    # row 1: p(2) = 3/5 at position 1 -> NLL_1 = ln(5/3)
    [[X, 0.0, 0.0], [0.0, 0.0, LN3], [X, 0.0, 0.0]],
    # row 2: p(0) = 2/5 -> NLL_2 = ln(5/2)
    [[LN2, LN2, 0.0], [X, 0.0, 0.0], [X, X, 0.0]],
])
NLL = torch.tensor([math.log(6) / 2, math.log(5 / 3), math.log(5 / 2)])
# a half's NLL pools its answer tokens (open-unlearning's outputs.loss on that half): forget =
# rows 0 and 2, three tokens (ln 2 + ln 3 + ln(5/2))/3 = ln 15 / 3; retain = row 1, one token
NLL_F = math.log(15) / 3
NLL_R = math.log(5 / 3)
# reference model: uniform logits on rows 0 and 2 -> NLL_ref = ln 3 for both
REF_LOGITS = torch.zeros(3, 3, 3)


class FakeModel:
    def __init__(self, logits=LOGITS, ref_logits=REF_LOGITS, hidden=None, ref_hidden=None, aux=None, scale=None):
        self.logits = logits.clone().requires_grad_(True)
        self.ref_logits, self.hidden, self.ref_hidden = ref_logits, hidden, ref_hidden
        self.aux, self.scale = aux, scale
        self.enabled = True
        self.calls = []
        self.config = SimpleNamespace(model_type="fake", num_hidden_layers=2)

    @contextmanager
    def disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def named_interventions(self):
        if self.scale is not None:
            scaling = SimpleNamespace(loss=lambda: {}, scale=lambda: torch.tensor(self.scale), group=None)
            yield "k", SimpleNamespace(modifiers=lambda: [scaling])

    def __call__(self, input_ids, attention_mask, labels=None, example_info=None, output_hidden_states=False):
        rows = input_ids[:, 0]
        self.calls.append((self.enabled, torch.is_grad_enabled(), rows.tolist()))
        out = {"logits": (self.logits if self.enabled else self.ref_logits)[rows]}
        if output_hidden_states:
            out["hidden_states"] = tuple(h[rows] for h in (self.hidden if self.enabled else self.ref_hidden))
        if self.aux is not None and self.enabled:
            out["aux_losses"] = {"gate_bce": torch.tensor(self.aux)}
        return SimpleNamespace(**out, get=out.get)


def make_batch(labels=LABELS, gate=GATE):
    ids = torch.arange(3).unsqueeze(1).expand(3, 3).clone()  # the first id of each row is its example id
    return {"input_ids": ids, "attention_mask": MASK, "labels": labels, "example_info": {"gate_label": gate}}


def test_sequence_nll_reference():
    torch.testing.assert_close(sequence_nll(LOGITS, LABELS), NLL)
    # a row without response tokens gets 0
    torch.testing.assert_close(sequence_nll(LOGITS[:1], torch.full((1, 3), -100)), torch.zeros(1))


def test_sequence_nll_matches_token_loop():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(4, 6, 5, generator=g), torch.randint(0, 5, (4, 6), generator=g)
    labels[:, :2] = -100
    labels[1, 4:] = -100
    ref = [torch.nn.functional.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=-100) for b in range(4)]
    torch.testing.assert_close(sequence_nll(logits, labels), torch.stack(ref))


def composed(model, result):
    """The training loss the drivers build from an objective's result (reftx.train.loss.compose)."""
    core, _, out = result
    return compose(core, out.get("aux_losses"), [m for _, m in model.named_interventions()])[0]


def test_gd_reference():
    model = FakeModel(aux=0.25)
    core, logs, out = OBJECTIVES.get("gd")(model, make_batch(), {"retain_weight": 0.5})
    assert core.item() == pytest.approx(-NLL_F + 0.5 * NLL_R, abs=1e-6)  # the objective's own term
    # −NLL_F + 0.5·NLL_R, plus the primitives' aux loss 0.25, added by the composition
    loss = composed(model, (core, logs, out))
    assert loss.item() == pytest.approx(-NLL_F + 0.5 * NLL_R + 0.25, abs=1e-6)
    assert logs["nll_forget"] == pytest.approx(NLL_F, abs=1e-6)
    assert logs["nll_retain"] == pytest.approx(NLL_R, abs=1e-6)
    assert logs["objective"] == pytest.approx(-NLL_F + 0.5 * NLL_R, abs=1e-6)
    # gradient ascent on F: d/dlogit of the forget target is +(1 − p)/3 on row 0 position 0 (3 forget tokens)
    loss.backward()
    assert model.logits.grad[0, 0, 0].item() == pytest.approx((1 - 0.5) / 3, abs=1e-6)
    assert model.logits.grad[1, 1, 2].item() == pytest.approx(-0.5 * (1 - 0.6), abs=1e-6)


def test_idk_reference_and_loss_scale():
    model = FakeModel(aux=0.25, scale=2.0)
    loss = composed(model, OBJECTIVES.get("idk")(model, make_batch(), {}))
    # (NLL_F + 1·NLL_R + 0.25) · 2
    assert loss.item() == pytest.approx(2 * (NLL_F + NLL_R + 0.25), abs=1e-6)


def test_absent_set_contributes_zero():
    loss, logs, _ = OBJECTIVES.get("gd")(FakeModel(), make_batch(gate=torch.zeros(3)), {})
    # all retain: the mean of the four answer tokens' NLLs, ln(2·3·(5/3)·(5/2))/4 = ln 25 / 4
    assert loss.item() == pytest.approx(math.log(25) / 4, abs=1e-6)
    assert "nll_forget" not in logs


def test_npo_reference():
    """Sequence NLLs (summed over the answer tokens), as open-unlearning src/trainer/utils.py
    (compute_batch_nll, compute_dpo_loss) computes NPO."""
    model = FakeModel()
    loss, logs, _ = OBJECTIVES.get("npo")(model, make_batch(), {"beta": 2.0, "retain_weight": 0.5})
    # β = 2. Row 0: NLL_θ = ln 2 + ln 3 = ln 6, NLL_ref = 2 ln 3 = ln 9; β·Δ = 2 ln(2/3) = ln(4/9),
    # σ = (4/9)/(13/9) = 4/13. Row 2 (one token): β·Δ = 2(ln(5/2) − ln 3) = ln(25/36), σ = 25/61.
    # −(2/β)·mean log σ = −(ln(4/13) + ln(25/61))/2 = ln(13·61/100)/2 = ln(7.93)/2; retain: mean token NLL
    assert loss.item() == pytest.approx(math.log(7.93) / 2 + 0.5 * NLL_R, abs=1e-6)
    assert logs["nll_ref_forget"] == pytest.approx((math.log(9) + LN3) / 2, abs=1e-6)
    # the NPO weight 2σ(−βΔ): row 0 2·9/13, row 2 2·36/61
    assert logs["npo_weight_forget"] == pytest.approx((18 / 13 + 72 / 61) / 2, abs=1e-6)
    # the reference: interventions off, no gradients, forget rows only
    assert model.calls == [(True, True, [0, 1, 2]), (False, False, [0, 2])]
    # nll: mean reproduces the mean-token variant: row 0 β·Δ = 2·(ln 6/2 − ln 3) = ln(2/3), σ = 2/5
    loss, _, _ = OBJECTIVES.get("npo")(FakeModel(), make_batch(), {"beta": 2.0, "retain_weight": 0.5, "nll": "mean"})
    assert loss.item() == pytest.approx(math.log(6.1) / 2 + 0.5 * NLL_R, abs=1e-6)


def test_gd_idk_npo_equal_open_unlearnings_formulas_on_a_paired_batch():
    """A paired batch (reftx.data.pairing): two forget rows, then two retain rows, answers of 4, 1,
    3 and 1 tokens, random logits. open-unlearning (d3d7cf9) runs each half through the model
    apart: GradDiff = γ·(−outputs.loss(forget)) + α·outputs.loss(retain) (grad_diff.py:41-60), with
    HF's outputs.loss the token mean over the half's shifted labels; NPO (npo.py:12-31) replaces the
    forget term by compute_dpo_loss(win=None, lose=forget) (utils.py:34-67), written out here as
    the reference writes it. reftx's idk is GradDiff with the forget sign flipped (γ = −1)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    logits, ref_logits = torch.randn(4, 5, 4, generator=g), torch.randn(4, 5, 4, generator=g)
    labels = torch.tensor([[-100, 1, 2, 3, 0], [-100, -100, -100, -100, 2],
                           [-100, -100, 3, 1, 1], [-100, -100, -100, 0, -100]])
    b = {"input_ids": torch.arange(4).unsqueeze(1).expand(4, 5).clone(), "attention_mask": torch.ones(4, 5, dtype=torch.long),
         "labels": labels, "example_info": {"gate_label": torch.tensor([1.0, 1.0, 0.0, 0.0])}}
    f, r = slice(0, 2), slice(2, 4)

    def hf_loss(lg, lb):  # transformers' causal-LM loss: shift, flatten, mean over the unmasked tokens
        return F.cross_entropy(lg[:, :-1].reshape(-1, 4), lb[:, 1:].reshape(-1), ignore_index=-100)

    def compute_batch_nll(lg, lb):  # open-unlearning src/trainer/utils.py:34-44
        return F.cross_entropy(lg[..., :-1, :].transpose(-1, -2), lb[..., 1:], ignore_index=-100,
                               reduction="none").sum(dim=-1)

    alpha, beta = 0.7, 0.5
    forget_nll, retain_nll = hf_loss(logits[f], labels[f]), hf_loss(logits[r], labels[r])
    assert forget_nll.item() != pytest.approx(sequence_nll(logits[f], labels[f]).mean().item(), abs=1e-3)  # pooled ≠ per row
    lose_log_ratio = -(compute_batch_nll(logits[f], labels[f]) - compute_batch_nll(ref_logits[f], labels[f]))
    npo_forget = -2 / beta * F.logsigmoid(beta * (0.0 - lose_log_ratio)).mean()
    expected = {"gd": -forget_nll + alpha * retain_nll, "idk": forget_nll + alpha * retain_nll,
                "npo": npo_forget + alpha * retain_nll}
    for name, want in expected.items():
        opts = {"retain_weight": alpha, **({"beta": beta} if name == "npo" else {})}
        core, logs, _ = OBJECTIVES.get(name)(FakeModel(logits=logits, ref_logits=ref_logits), b, opts)
        assert core.item() == pytest.approx(want.item(), abs=1e-6), name
        assert logs["nll_forget"] == pytest.approx(forget_nll.item(), abs=1e-6)
        assert logs["nll_retain"] == pytest.approx(retain_nll.item(), abs=1e-6)


def test_npo_weight_moves_with_the_sequence_nll():
    """d(forget term)/d NLL_θ = −2σ(−βΔ) (one row): with β = 0.1 and an answer of 20 tokens each
    1 nat less likely than under the reference, the sequence NLL gives Δ = 20 and the weight
    2σ(−2) = 0.2384; the mean token NLL gives Δ = 1 and 2σ(−0.1) = 0.9500, barely below the
    weight 1 of gradient difference: why NPO computed on mean NLLs behaved like GD."""
    from reftx.train.objectives.common import npo_forget_term

    for delta, weight in ((0.0, 1.0), (20.0, 2 / (1 + math.exp(2.0))), (1.0, 2 / (1 + math.exp(0.1)))):
        nll = torch.tensor([5.0 + delta], requires_grad=True)
        npo_forget_term(nll, torch.tensor([5.0]), 0.1).backward()
        assert -nll.grad.item() == pytest.approx(weight, abs=1e-6)
    assert 2 / (1 + math.exp(2.0)) == pytest.approx(0.2384, abs=1e-4)


def test_npo_default_beta_at_reference():
    # θ = ref: −(2/β) log σ(0) = (2/β) ln 2 = 20 ln 2 with β = 0.1 (no retain rows)
    model = FakeModel(ref_logits=LOGITS)
    loss, _, _ = OBJECTIVES.get("npo")(model, make_batch(gate=torch.ones(3)), {})
    assert loss.item() == pytest.approx(20 * LN2, abs=1e-5)


def rmu_model(c=2.0):
    """Hidden states (B = 3, T = 3, d = 4) at layers 0..2: edited = reference + a known offset.
    Forget rows: h = c·u + e; retain row: h = h_ref + e."""
    u = rmu_direction(4, 0)
    ref = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(3))
    e = torch.tensor([
        [[1.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]],           # row 0 (forget): 1/4, 1, 1
        [[1.0, 1, 1, 1], [2, 2, 0, 0], [0, 0, 0, 0]],           # row 1 (retain): 1, 2, 0
        [[0.0, 0, 0, 3], [1, 1, 1, 1], [50, 50, 50, 50]],       # row 2 (forget): 9/4, 1, (padding)
    ])
    last = torch.where(GATE[:, None, None] > 0, c * u + e, ref + e)
    # layer 0 (hidden_states[1]): forget rows exactly at c·u, retain row exactly at its reference
    first = torch.where(GATE[:, None, None] > 0, (c * u).expand(3, 3, 4), ref)
    hidden = (torch.zeros(3, 3, 4), first, last)
    return FakeModel(hidden=hidden, ref_hidden=(torch.zeros(3, 3, 4), ref, ref))


def test_rmu_reference():
    model = rmu_model()
    loss, logs, _ = OBJECTIVES.get("rmu")(model, make_batch(), {"c": 2.0, "alpha": 0.5})
    # response tokens (next label not -100): (0,0), (0,1) | (1,1) | (2,0)
    # forget: (1/4 + 1 + 9/4)/3 = 7/6; retain: 8/4 = 2 -> 7/6 + 0.5·2
    assert logs["rmu_forget"] == pytest.approx(7 / 6, abs=1e-5)
    assert logs["rmu_retain"] == pytest.approx(2.0, abs=1e-5)
    assert loss.item() == pytest.approx(7 / 6 + 1.0, abs=1e-5)
    assert model.calls[1] == (False, False, [1])  # reference on the retain rows, no gradients


def test_rmu_all_tokens_and_layer_index():
    loss, logs, _ = OBJECTIVES.get("rmu")(rmu_model(), make_batch(), {"c": 2.0, "tokens": "all"})
    # every attended token: forget (1/4 + 1 + 1 + 9/4 + 1)/5 = 1.1; retain (1 + 2 + 0)/3 = 1
    assert logs["rmu_forget"] == pytest.approx(1.1, abs=1e-5)
    assert loss.item() == pytest.approx(2.1, abs=1e-5)
    # layer 0 reads hidden_states[1], where both terms are 0 by construction
    loss, _, _ = OBJECTIVES.get("rmu")(rmu_model(), make_batch(), {"c": 2.0, "layer": 0})
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_rmu_direction():
    u = rmu_direction(16, 0)
    assert torch.equal(u, rmu_direction(16, 0)) and not torch.equal(u, rmu_direction(16, 1))
    assert u.norm().item() == pytest.approx(1.0) and (u >= 0).all()


def test_option_errors():
    with pytest.raises(reftx.ConfigError, match=r"objective_options\.retain_wieght.*did you mean 'retain_weight'"):
        OBJECTIVES.get("gd")(FakeModel(), make_batch(), {"retain_wieght": 1.0})
    with pytest.raises(reftx.ConfigError, match=r"objective_options\.beta: must be a finite number > 0"):
        OBJECTIVES.get("npo")(FakeModel(), make_batch(), {"beta": 0})
    with pytest.raises(reftx.ConfigError, match=r"objective_options\.tokens"):
        OBJECTIVES.get("rmu")(rmu_model(), make_batch(), {"tokens": "prompt"})
    b = make_batch()
    del b["example_info"]
    with pytest.raises(DataError, match="gate_label"):
        OBJECTIVES.get("idk")(FakeModel(), b, {})


@pytest.mark.parametrize("name", ["gd", "idk", "npo", "rmu"])
def test_objectives_train_grun_on_a_real_model(name):
    """On a tiny llama with GRUN: the loss is the objective plus the gate BCE, and only the
    interventions get gradients."""
    base = tiny_model("llama", layers=8)
    model = reftx.attach(base, [{"kind": "grun", "layers": [0.625, 0.78, 0.97], "positions": "last_prompt"}])
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels,
         "example_info": {"gate_label": torch.tensor([1.0, 0.0, 1.0])}}
    model.train()
    result = OBJECTIVES.get(name)(model, b, {})
    loss = composed(model, result)
    assert loss.item() == pytest.approx(result[1]["objective"] + 30 * LN2, rel=1e-5)  # 3 sites · λ 10 · ln 2
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    grads = [p.grad for p in model.interventions.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_every_objective_has_typed_options_checked_before_training(tmp_path):
    """One converter for every section: objective options and the recipe: section (and a schema-1
    method: section, read as the edit recipe) are checked by ``reftx validate`` / ``plan``
    (recipes.validate) with the dotted path and a did-you-mean, and an objective without options
    rejects any key (nll used to ignore them)."""
    import yaml

    from reftx.recipes import registry as recipes
    from reftx.config.schema import load_experiment
    from reftx.train.objectives.common import objective_options

    assert objective_options("npo", {"beta": 0.5}).beta == 0.5
    with pytest.raises(reftx.ConfigError, match=r"^train\.objective_options\.weight: unknown key"):
        objective_options("nll", {"weight": 1.0})
    with pytest.raises(reftx.ConfigError, match=r"^train\.objective_options\.c: must be a finite number, got inf"):
        objective_options("rmu", {"c": float("inf")})
    base = {"schema": 1, "task": {"name": "persona"}, "model": {"name": "default"},
            "interventions": [{"kind": "loreft", "rank": 2, "layers": [1]}]}
    cases = [({"train": {"objective": "npo", "objective_options": {"betta": 0.1}}},
              r"train\.objective_options\.betta: unknown key.*did you mean 'beta'"),
             ({"recipe": {"name": "edit", "mdoe": "batch"}},
              r"recipe\.mdoe: unknown option of recipe 'edit' 'mdoe'.*did you mean 'mode'"),
             ({"method": {"mdoe": "batch"}}, r"recipe\.mdoe: unknown option of recipe 'edit'.*did you mean 'mode'"),
             ({"recipe": {"name": "edti"}}, r"recipe\.name: unknown recipe 'edti'.*did you mean 'edit'")]
    for i, (patch, message) in enumerate(cases):
        path = tmp_path / f"e{i}.yaml"
        path.write_text(yaml.safe_dump({**base, **patch}))
        with pytest.raises(reftx.ConfigError, match=message):
            recipes.validate(load_experiment(path), model_config=object())


def test_classify_composes_with_the_modifiers_parameter_losses():
    """The classifier's forward has no labels; the composition still adds the bound's parameter loss:
    loss = CE + λ·max(0, ‖c‖ − τ)² (a hinge bound with λ = 0.5, τ = 0.1)."""
    import torch.nn.functional as F

    from tests.conftest import batch, tiny_model

    model = reftx.attach(tiny_model("bert"), [{"kind": "scale_bias", "layers": [1], "positions": {"first": 1},
                                               "bound": "hinge", "bound_tau": 0.1, "bound_lambda": 0.5}])
    (_, mod), = model.named_interventions()
    with torch.no_grad():
        mod.bias().copy_(torch.zeros_like(mod.bias()))
        mod.bias()[:2] = torch.tensor([0.3, 0.4])  # ‖c‖ = 0.5: hinge = 0.5 · 0.4² = 0.08
    ids, mask = batch()
    target = torch.tensor([1, 0, 1])
    result = OBJECTIVES.get("classify")(model, {"input_ids": ids, "attention_mask": mask,
                                                "example_info": {"label": target.float()}}, None)
    _, logs, out = result
    loss = composed(model, result)
    ce = F.cross_entropy(out.logits.float(), target)
    assert logs["objective"] == pytest.approx(float(ce), abs=1e-6)
    assert loss.item() == pytest.approx(float(ce) + 0.08, abs=1e-6)

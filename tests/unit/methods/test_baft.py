"""BaFT (METHODS.md §2): basis gates, BaFT = LoReFT at s ≡ 1, and reference values computed by hand
for every gate and every loss."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import reftx
from reftx.core.errors import DataError
from reftx.core.intervention import Context, make_intervention
from reftx.methods.baft import locality_gate_loss, next_token_kl, switch_balance, variance_balance
from reftx.train.objectives.common import OBJECTIVES
from tests.conftest import batch, tiny_model

SIG = {-1.0: 0.26894142, -0.5: 0.37754067, 0.0: 0.5}  # σ(x) = 1 / (1 + e^{-x})


def ctx_for(n, info=None):
    return Context(torch.arange(n), n, example_info=info or {})


def gated(gate, dim=2, rank=2, **opts):
    """A BaFT whose router has A = [[1, −1], [0.5, 0]], c = [0, −1]: ℓ(h) = [h0 − h1, 0.5 h0 − 1]."""
    mod = make_intervention("baft", {"rank": rank, "basis_gate": gate, **opts}, dim)
    with torch.no_grad():
        mod.basis_gate.router.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.0]]))
        mod.basis_gate.router.bias.copy_(torch.tensor([0.0, -1.0]))
    return mod.eval()


# h = [1, 2] -> ℓ = [−1, −0.5];  h = [0, 0] -> ℓ = [0, −1]
H = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
GATE_CASES = {
    "sigmoid": [[SIG[-1.0], SIG[-0.5]], [0.5, SIG[-1.0]]],
    # softmax of [−1, −0.5]: 1/(1 + e^{0.5}) = σ(−0.5); of [0, −1]: σ(1) = 1 − σ(−1)
    "softmax": [[SIG[-0.5], 1 - SIG[-0.5]], [1 - SIG[-1.0], SIG[-1.0]]],
    # k = rank // 2 = 1: keep the larger logit's sigmoid
    "topk": [[0.0, SIG[-0.5]], [0.5, 0.0]],
}


@pytest.mark.parametrize("gate", GATE_CASES)
def test_gate_reference_values(gate):
    ctx = ctx_for(2)
    s = gated(gate).basis_gate(H, ctx)
    torch.testing.assert_close(s, torch.tensor(GATE_CASES[gate]), rtol=0, atol=1e-6)
    assert torch.equal(ctx.records["/basis_weights"][0], s)


def test_unit_gate_input_reference_values():
    """basis_gate_input: unit reads h/‖h‖: h = [3, 4] -> [0.6, 0.8] -> ℓ = [0.6 − 0.8, 0.3 − 1] = [−0.2, −0.7];
    any positive multiple of h gives the same weights; h = 0 stays 0 (no division by zero)."""
    gate = gated("sigmoid", basis_gate_input="unit").basis_gate
    h = torch.tensor([[3.0, 4.0], [300.0, 400.0], [0.0, 0.0]])
    expected = torch.sigmoid(torch.tensor([[-0.2, -0.7], [-0.2, -0.7], [0.0, -1.0]]))
    torch.testing.assert_close(gate(h, ctx_for(3)), expected, rtol=0, atol=1e-6)
    raw = gated("sigmoid").basis_gate  # raw: ℓ([3, 4]) = [−1, 0.5]
    torch.testing.assert_close(raw(h[:1], ctx_for(1)), torch.sigmoid(torch.tensor([[-1.0, 0.5]])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gate", GATE_CASES)
def test_baft_reference_values(gate):
    # R = I, W = diag(2, 3), b = [1, 1]; h = [1, 2]: z = W h + b − R h = [3, 7] − [1, 2] = [2, 5]
    # h' = h + s ⊙ z (R = I), with s from GATE_CASES row 0
    mod = gated(gate)
    with torch.no_grad():
        mod.basis.weight.copy_(torch.eye(2))
        mod.source.weight.copy_(torch.diag(torch.tensor([2.0, 3.0])))
        mod.source.bias.fill_(1.0)
    s0, s1 = GATE_CASES[gate][0]
    out = mod(H[:1], ctx_for(1))
    torch.testing.assert_close(out, torch.tensor([[1 + 2 * s0, 2 + 5 * s1]]), rtol=0, atol=1e-6)


def test_baft_reference_rank1():
    # loreft's d = 2, r = 1 case (test_formulas): R = [0.6, 0.8], W = [2, 3], b = 1, h = [1, 2]
    # z = 9 − 2.2 = 6.8; a fresh-from-zero gate (A = 0, c = 0) gives s = 0.5: h + 3.4 R = [3.04, 4.72]
    mod = make_intervention("baft", {"rank": 1}, 2).eval()
    with torch.no_grad():
        mod.basis.weight.copy_(torch.tensor([[0.6], [0.8]]))
        mod.source.weight.copy_(torch.tensor([[2.0, 3.0]]))
        mod.source.bias.fill_(1.0)
        mod.basis_gate.router.bias.zero_()
    torch.testing.assert_close(mod(H[:1], ctx_for(1)), torch.tensor([[3.04, 4.72]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gate, topk, expected", [
    ("sigmoid", 0, [0.9, 0.9, 0.9, 0.9]),      # A = 0, c = log 9: σ = 0.9 everywhere
    ("softmax", 0, [0.25, 0.25, 0.25, 0.25]),  # A = 0, c = 0: 1/r
    ("topk", 0, [0.9, 0.9, 0.0, 0.0]),         # k = r // 2 = 2; ties broken by basis index
    ("topk", 3, [0.9, 0.9, 0.9, 0.0]),
])
def test_fresh_gate(gate, topk, expected):
    mod = make_intervention("baft", {"rank": 4, "basis_gate": gate, "basis_topk": topk}, 6)
    s = mod.basis_gate(torch.randn(5, 6), ctx_for(5))
    torch.testing.assert_close(s, torch.tensor([expected] * 5), rtol=0, atol=1e-6)


def test_topk_gradients_only_through_kept_bases():
    mod = gated("topk")
    mod.basis_gate(H[:1], ctx_for(1)).sum().backward()
    g = mod.basis_gate.router.bias.grad  # basis 0 was dropped for h = [1, 2]
    assert g[0] == 0 and g[1] == pytest.approx(SIG[-0.5] * (1 - SIG[-0.5]))


def test_router_bias_skips_weight_decay():
    model = reftx.attach(tiny_model("llama"), [{"kind": "baft", "rank": 2, "layers": [1], "positions": "last_prompt"}])
    mod = model.intervention("L1.block_output.last_prompt")
    assert mod.no_decay_parameters() == {"basis.weight", "basis_gate.router.bias"}
    no_decay = [g for g in model.param_groups(0.1) if g["weight_decay"] == 0.0][0]["params"]
    assert any(p is mod.basis_gate.router.bias for p in no_decay)


# -- s ≡ 1 is LoReFT ----------------------------------------------------------------------------
class Ones(nn.Module):
    def forward(self, h, ctx):
        return torch.ones(h.shape[0], 3, dtype=h.dtype)


def test_ones_gate_equals_loreft_exactly():
    torch.manual_seed(0)
    lo = make_intervention("loreft", {"rank": 3}, 8)
    ba = make_intervention("baft", {"rank": 3}, 8)
    missing = ba.load_state_dict(lo.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["basis_gate.router.bias", "basis_gate.router.weight"]
    ba.basis_gate = Ones()
    h = 3 * torch.randn(7, 8)
    assert torch.equal(ba(h, ctx_for(7)), lo(h, ctx_for(7)))


SPEC = {"rank": 4, "layers": [1, 3], "positions": {"first": 2, "last": 2}}


def test_saturated_gate_model_equals_loreft_exactly(monkeypatch):
    """With the real sigmoid gate at s = σ(1e4) = 1.0 (exactly, in fp32), logits equal loreft's bit for
    bit, loreft run one intervention at a time as baft runs (its gate keeps it out of a stack; a stack
    of loreft's first and last edits agrees to 1e-6, tests/contract/test_stacked.py)."""
    from reftx.parts.compose import Delta

    monkeypatch.setattr(Delta, "stack_key", lambda self: None)
    lo = reftx.attach(tiny_model("llama"), [{"kind": "loreft", **SPEC}])
    monkeypatch.undo()
    ba = reftx.attach(tiny_model("llama"), [{"kind": "baft", **SPEC}])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in lo.interventions.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    for key, mod in ba.named_interventions():
        mod.load_state_dict(lo.intervention(key).state_dict(), strict=False)
        with torch.no_grad():
            mod.basis_gate.router.weight.zero_()
            mod.basis_gate.router.bias.fill_(1e4)
    ids, mask = batch()
    a = lo(input_ids=ids, attention_mask=mask).logits
    b = ba(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b)
    with lo.disabled():
        assert not torch.equal(lo(input_ids=ids, attention_mask=mask).logits, a)  # the edit matters


# -- losses on hand-made gate values ------------------------------------------------------------
S = torch.tensor([[0.9, 0.1], [0.6, 0.2], [0.2, 0.6]])
ALL = torch.ones(3)


def test_switch_balance_reference():
    # top basis per row: 0, 0, 1 -> f = [2/3, 1/3]; row shares [.9,.1], [.75,.25], [.25,.75]
    # -> P = [1.9/3, 1.1/3]; loss = 2 (2/3 · 1.9/3 + 1/3 · 1.1/3) = 9.8/9
    assert switch_balance(S, ALL).item() == pytest.approx(9.8 / 9, abs=1e-6)
    # rows 0, 1 only: f = [1, 0], P0 = (0.9 + 0.75)/2 -> 2 · 0.825
    assert switch_balance(S, torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(1.65, abs=1e-6)
    # uniform usage gives 1, one basis taking everything gives r
    assert switch_balance(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), torch.ones(2)).item() == pytest.approx(1.0)
    assert switch_balance(torch.tensor([[0.8, 0.0]]), torch.ones(1)).item() == pytest.approx(2.0)


def test_switch_balance_gradient_goes_through_p_only():
    s = S.clone().requires_grad_(True)
    switch_balance(s, ALL).backward()
    # d/ds_ik of r Σ_k f_k s_ik / (3 Σ_j s_ij): row 0 (sum 1): 2/3 · (f_0 − (f·share)) = 2/3 · (2/3 − (0.6 + 0.0333))
    expected = 2 / 3 * (2 / 3 - (2 / 3 * 0.9 + 1 / 3 * 0.1))
    assert s.grad[0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_variance_balance_reference():
    # u = [(0.9 + 0.6 + 0.2)/3, (0.1 + 0.2 + 0.6)/3] = [1.7/3, 0.9/3]; population variance = ((u0 − u1)/2)²
    assert variance_balance(S, ALL).item() == pytest.approx((0.8 / 3 / 2) ** 2, abs=1e-7)
    assert variance_balance(torch.tensor([[0.3, 0.3]]), torch.ones(1)).item() == 0.0


def test_locality_gate_loss_reference():
    # locality rows 1, 2: (0.6 + 0.2 + 0.2 + 0.6) / 4
    assert locality_gate_loss(S, torch.tensor([0, 1, 1])).item() == pytest.approx(0.4, abs=1e-7)
    assert locality_gate_loss(S, torch.zeros(3)).item() == 0.0


def test_locality_margin_reference_and_gradient():
    # margin 0.3 on rows 1, 2 ([0.6, 0.2], [0.2, 0.6]): excess [0.3, 0, 0, 0.3] -> 0.6 / 4
    s = S.clone().requires_grad_(True)
    loss = locality_gate_loss(s, torch.tensor([0, 1, 1]), margin=0.3)
    assert loss.item() == pytest.approx(0.15, abs=1e-7)
    loss.backward()
    # only gates above the margin are pulled, each by 1/4; a gate at or below it gets no gradient
    assert s.grad.tolist() == [[0.0, 0.0], [0.25, 0.0], [0.0, 0.25]]
    # every locality gate under the margin: no loss at all
    assert locality_gate_loss(S, torch.tensor([0, 1, 1]), margin=0.65).item() == 0.0


def test_losses_added_by_the_module():
    """balance over the non-locality rows, locality over the locality rows, each times its weight."""
    mod = gated("sigmoid", balance_weight=0.5, balance_loss="variance", locality_weight=2.0)
    h = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]])
    info = {"locality": torch.tensor([0.0, 1.0, 1.0])}
    ctx = ctx_for(3, info)
    mod(h, ctx)
    s0 = torch.tensor(GATE_CASES["sigmoid"][0])  # row 0 alone is the edit row: u = s0
    assert ctx.losses["baft_balance"][0].item() == pytest.approx(0.5 * ((s0[0] - s0[1]) / 2).item() ** 2, abs=1e-7)
    loc = (0.5 + SIG[-1.0] + SIG[-1.0] + SIG[-0.5]) / 4  # rows [0, 0] and [1, 2]
    assert ctx.losses["baft_locality"][0].item() == pytest.approx(2.0 * loc, abs=1e-6)


def test_locality_weight_needs_the_info_in_training():
    mod = gated("sigmoid", locality_weight=1.0).train()
    with pytest.raises(DataError, match="example_info\\['locality'\\]"):
        mod(H, ctx_for(2, {"gate_label": torch.zeros(2)}))
    with torch.no_grad():  # evaluation / generation: nothing to add, no error
        mod(H, ctx_for(2))


@pytest.mark.parametrize("opts, field", [
    ({"basis_gate": "none"}, "basis_gate"),
    ({"balance_weight": -1.0}, "balance_weight"),
    ({"balance_loss": "entropy"}, "balance_loss"),
    ({"locality_margin": 1.0}, "locality_margin"),
    ({"basis_gate_input": "norm"}, "basis_gate_input"),
])
def test_config_errors(opts, field):
    with pytest.raises(reftx.ConfigError, match=rf"interventions\.0\.{field}"):
        reftx.attach(tiny_model("llama"), [{"kind": "baft", **SPEC, **opts}])


# -- KL locality objective ------------------------------------------------------------------------
def test_next_token_kl_reference():
    # p_ref = [.5, .5], p = softmax([ln 3, 0]) = [.75, .25]: KL = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3)
    ref = torch.zeros(1, 2, 2)
    cur = torch.tensor([[[math.log(3), 0.0], [5.0, -5.0]]])
    mask = torch.tensor([[True, False]])  # the second position is not counted
    assert next_token_kl(ref, cur, mask).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert next_token_kl(ref, cur, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def _kl_setup(locality=(0.0, 1.0, 0.0, 1.0), **opts):
    model = reftx.attach(tiny_model("llama"), [{"kind": "baft", **SPEC, **opts}])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    ids, mask = batch(b=4, t=12)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100
    info = {"locality": torch.tensor(locality)}
    return model.train(), {"input_ids": ids, "attention_mask": mask, "labels": labels, "example_info": info}


def test_kl_objective_reference():
    objective = OBJECTIVES.get("baft_locality_kl")
    model, b = _kl_setup()
    loss, logs, out = objective(model, b, {"weight": 0.5})
    loc = b["example_info"]["locality"] == 1
    # the edit rows' NLL, with the same edit positions as a plain forward on the full batch
    full = model(**b)
    assert torch.allclose(out.logits, full.logits)
    logits, labels = full.logits[~loc, :-1], b["labels"][~loc, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert logs["nll"] == pytest.approx(nll.item(), rel=1e-5)
    with torch.no_grad(), model.disabled():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    kl = next_token_kl(ref[loc], full.logits[loc], b["attention_mask"][loc].bool())
    assert logs["locality_kl"] == pytest.approx(kl.item(), rel=1e-5) and kl > 0
    assert loss.item() == pytest.approx(nll.item() + 0.5 * kl.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.interventions.parameters())


def test_kl_objective_zero_when_gates_are_closed():
    objective = OBJECTIVES.get("baft_locality_kl")
    model, b = _kl_setup()
    with torch.no_grad():
        for _, mod in model.named_interventions():
            mod.basis_gate.router.bias.fill_(-1e4)  # s = 0 exactly: the edit is the identity
    _, logs, _ = objective(model, b, {"positions": "response"})
    assert logs["locality_kl"] == 0.0


def test_kl_objective_all_locality_rows_and_errors():
    objective = OBJECTIVES.get("baft_locality_kl")
    model, b = _kl_setup(locality=(1.0, 1.0, 1.0, 1.0))
    loss, logs, _ = objective(model, b, {})
    assert logs["nll"] == 0.0 and loss.item() == pytest.approx(logs["locality_kl"], rel=1e-6) and loss > 0
    with pytest.raises(reftx.ConfigError, match="objective_options.wieght.*did you mean 'weight'"):
        objective(model, b, {"wieght": 1.0})
    with pytest.raises(DataError, match="needs example_info"):
        objective(model, {**b, "example_info": {}}, {})


def test_training_with_aux_losses_logs_and_lowers_the_loss():
    model, b = _kl_setup(balance_weight=0.1, locality_weight=0.1)
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        out = model(**b)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert set(out["aux_losses"]) == {"baft_balance", "baft_locality"}
    assert "L1.block_output.first/basis_weights" in out["records"]
    assert losses[-1] < losses[0]

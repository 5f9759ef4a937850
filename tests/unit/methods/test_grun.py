"""GRUN and the input gates: h' = h + σ(g(h))·Δ(h) and the λ·BCE gate loss, with hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

import reftx
from reftx.core.intervention import Context, make_intervention
from reftx.train.loss import compose
from tests.conftest import batch, tiny_model

LN3 = math.log(3.0)


def ctx(labels=None, batch_index=(0, 1)):
    info = {} if labels is None else {"gate_label": torch.tensor(labels)}
    return Context(torch.tensor(batch_index), len(set(batch_index)), key="k", example_info=info)


def set_linear_gate(mod, w, b):
    with torch.no_grad():
        mod.input_gate.out.weight.copy_(torch.tensor([w]))
        mod.input_gate.out.bias.copy_(torch.tensor([b]))


def set_subspace(mod, basis, w, b):
    with torch.no_grad():
        mod.basis.weight.copy_(torch.tensor(basis).reshape(mod.basis.weight.shape))
        mod.source.weight.copy_(torch.tensor([w]))
        mod.source.bias.copy_(torch.tensor([b]))


def loreft_gated(kind="loreft", **opts):
    """d = 2, r = 1; R = [1, 0], W = [0, 1], b = 1: Δ(h) = [h2 + 1 − h1, 0]; gate g(h) = h1."""
    mod = make_intervention(kind, {"rank": 1, "input_gate": "linear", **opts}, 2)
    set_subspace(mod, [1.0, 0.0], [0.0, 1.0], 1.0)
    set_linear_gate(mod, [1.0, 0.0], 0.0)
    return mod.eval()


# row 0: h = [ln 3, 2]: σ(ln 3) = 3/4, Δ = [3 − ln 3, 0] -> h' = [ln 3 + 0.75·(3 − ln 3), 2]
# row 1: h = [0, 1]:    σ(0) = 1/2,   Δ = [2, 0]        -> h' = [1, 1]
H = torch.tensor([[LN3, 2.0], [0.0, 1.0]])
EXPECTED = torch.tensor([[LN3 + 0.75 * (3 - LN3), 2.0], [1.0, 1.0]])


@pytest.mark.parametrize("kind", ["loreft", "grun"])
def test_gated_loreft_reference(kind):
    out = loreft_gated(kind, gate_loss_weight=0.0)(H, ctx())
    torch.testing.assert_close(out, EXPECTED, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["loreft", "grun"])
def test_gate_bce_reference(kind):
    # labels: example 0 forget (1), example 1 retain (0); gates 3/4 and 1/2
    # BCE = mean(−ln(3/4), −ln(1 − 1/2)) = (ln(4/3) + ln 2)/2 = ln(8/3)/2; λ = 2 -> ln(8/3)
    c = ctx([1.0, 0.0])
    out = loreft_gated(kind, gate_loss_weight=2.0)(H, c)
    torch.testing.assert_close(out, EXPECTED, rtol=0, atol=1e-6)
    (loss,) = c.losses["gate_bce"]
    assert loss.item() == pytest.approx(math.log(8 / 3), abs=1e-6)
    torch.testing.assert_close(c.records["k/gate"][0], torch.tensor([[0.75], [0.5]]))
    torch.testing.assert_close(c.records["k/gate_forget"][0], torch.tensor([0.75]))
    torch.testing.assert_close(c.records["k/gate_retain"][0], torch.tensor([0.5]))


def test_gate_rows_map_to_examples_through_batch_index():
    # three rows of examples 1, 0, 1 (labels: example 0 retain, example 1 forget); gates σ(ln 3),
    # σ(0), σ(−ln 3) = 3/4, 1/2, 1/4 -> BCE = (ln(4/3) + ln 2 + ln 4)/3 = ln(32/3)/3
    mod = loreft_gated(gate_loss_weight=1.0)
    c = ctx([0.0, 1.0], batch_index=(1, 0, 1))
    mod(torch.tensor([[LN3, 0.0], [0.0, 0.0], [-LN3, 0.0]]), c)
    assert c.losses["gate_bce"][0].item() == pytest.approx(math.log(32 / 3) / 3, abs=1e-6)
    torch.testing.assert_close(c.records["k/gate_forget"][0], torch.tensor([0.75, 0.25]))


def test_no_gate_loss_without_labels_or_weight():
    c = ctx()
    loreft_gated(gate_loss_weight=2.0)(H, c)  # no gate_label (e.g. generation): no loss
    assert c.losses == {} and "k/gate" in c.records
    c = ctx([1.0, 0.0])
    loreft_gated(gate_loss_weight=0.0)(H, c)  # λ = 0: records per set, no loss
    assert c.losses == {} and "k/gate_forget" in c.records


def test_gate_on_direft():
    # direft d = 2, r = 1: W2 = [1, 1], W1 = [1, 0], b = 0 -> Δ(h) = h1·[1, 1]; gate g(h) = h2
    # h = [2, ln 3]: σ = 3/4 -> h' = [2 + 1.5, ln 3 + 1.5]
    mod = make_intervention("direft", {"rank": 1, "input_gate": "linear"}, 2)
    set_subspace(mod, [1.0, 1.0], [1.0, 0.0], 0.0)
    set_linear_gate(mod, [0.0, 1.0], 0.0)
    out = mod.eval()(torch.tensor([[2.0, LN3]]), ctx(batch_index=(0,)))
    torch.testing.assert_close(out, torch.tensor([[3.5, LN3 + 1.5]]), rtol=0, atol=1e-6)


def test_mlp_gate_on_scale_bias():
    # scale_bias d = 2: a = [2, 1], c = [0, 1] -> Δ(h) = [h1, 1]
    # mlp gate: the first unit of each hidden layer carries relu(h1), the output is relu(h1) − 1
    # row 0: h = [1 + ln 3, 4]: g = ln 3, σ = 3/4 -> h' = [1.75·(1 + ln 3), 4.75]
    # row 1: h = [−2, 0]: g = −1, σ = 1/(1 + e) -> h' = [−2 − 2/(1 + e), 1/(1 + e)]
    mod = make_intervention("scale_bias", {"input_gate": "mlp", "gate_loss_weight": 1.0}, 2)
    gate = mod.input_gate
    with torch.no_grad():
        mod.scale.copy_(torch.tensor([2.0, 1.0]))
        mod.shift.copy_(torch.tensor([0.0, 1.0]))
        for p in gate.parameters():
            p.zero_()
        gate.hidden[0].weight[0, 0] = 1.0
        gate.hidden[2].weight[0, 0] = 1.0
        gate.out.weight[0, 0] = 1.0
        gate.out.bias.fill_(-1.0)
    s = 1 / (1 + math.e)
    c = ctx([1.0, 0.0])
    out = mod.eval()(torch.tensor([[1 + LN3, 4.0], [-2.0, 0.0]]), c)
    torch.testing.assert_close(out, torch.tensor([[1.75 * (1 + LN3), 4.75], [-2 - 2 * s, s]]), rtol=0, atol=1e-6)
    # BCE: (−ln(3/4) − ln(1 − s))/2 = (ln(4/3) + ln(1 + e) − 1)/2
    expected = (math.log(4 / 3) + math.log(1 + math.e) - 1) / 2
    assert c.losses["gate_bce"][0].item() == pytest.approx(expected, abs=1e-6)


def test_fresh_gates_start_at_one_half():
    for gate in ("linear", "mlp"):
        mod = make_intervention("grun", {"input_gate": gate}, 8)
        g = mod.input_gate(torch.randn(5, 8), ctx(batch_index=(0, 0, 0, 0, 0)))
        torch.testing.assert_close(g, torch.full((5, 1), 0.5))
        assert "input_gate.out.bias" in mod.no_decay_parameters()


def test_grun_defaults():
    cfg = make_intervention("grun", {}, 8).config
    assert (cfg.rank, cfg.input_gate, cfg.gate_loss_weight) == (4, "linear", 10.0)
    with pytest.raises(reftx.ConfigError, match="input_gate"):
        make_intervention("grun", {"input_gate": "none"}, 8)


def test_grun_schedule_and_gate_loss_in_model():
    """GRUN's placement on an 8-layer model: 0.625, 0.78, 0.97 -> layers 5, 6, 7, last prompt token.
    Fresh gates are 1/2, so each site adds λ·ln 2: the aux loss is 3·10·ln 2."""
    base = tiny_model("llama", layers=8)
    model = reftx.attach(base, [{"kind": "grun", "layers": [0.625, 0.78, 0.97], "positions": "last_prompt",
                                 "tie": "none"}])
    assert [g.key for g in model.plan()] == [f"L{i}.block_output.last_prompt" for i in (5, 6, 7)]
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100
    info = {"gate_label": torch.tensor([1.0, 0.0, 1.0])}
    out = model(input_ids=ids, attention_mask=mask, labels=labels, example_info=info)
    assert out["aux_losses"]["gate_bce"].item() == pytest.approx(30 * math.log(2), rel=1e-6)
    loss, _ = compose(out.loss, out["aux_losses"], [m for _, m in model.named_interventions()])
    assert loss.item() == pytest.approx(out.loss.item() + 30 * math.log(2), rel=1e-6)
    assert out["records"]["L5.block_output.last_prompt/gate"][0].shape == (3, 1)  # one row per example
    loss.backward()
    gate_grads = [m.input_gate.out.weight.grad for _, m in model.named_interventions()]
    assert all(g is not None and g.abs().sum() > 0 for g in gate_grads)

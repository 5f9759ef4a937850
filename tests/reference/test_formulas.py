"""Reference values computed by hand for every formula of METHODS.md §1 (d = 2, r = 1)."""
from __future__ import annotations

import pytest
import torch

import reftx
from reftx.core.intervention import Context, make_intervention
from reftx.engine.rotations import orthonormalize
from tests.conftest import batch, tiny_model

H = torch.tensor([[1.0, 2.0]])
CTX = Context(torch.zeros(1, dtype=torch.long), 1)


def build(kind, basis, w=None, b=None, **opts):
    mod = make_intervention(kind, {"rank": 1, **opts}, 2)
    with torch.no_grad():
        # OrthoBasis stores A (d x r) with R = qr(A)ᵀ; FreeBasis stores W2 (r x d) directly.
        mod.basis.weight.copy_(torch.tensor(basis).reshape(mod.basis.weight.shape))
        if w is not None:
            mod.source.weight.copy_(torch.tensor([w]))
        if b is not None:
            mod.source.bias.copy_(torch.tensor([b]))
    return mod.eval()


@pytest.mark.parametrize(
    "kind, basis, w, b, expected",
    [
        # loreft: h + Rᵀ(Wh + b − Rh); R = [0.6, 0.8]: Wh+b = 2+6+1 = 9, Rh = 2.2 -> + 6.8·R
        ("loreft", [0.6, 0.8], [2.0, 3.0], 1.0, [5.08, 7.44]),
        ("loreft", [1.0, 0.0], [2.0, 3.0], 1.0, [9.0, 2.0]),
        # direft: h + W2ᵀ(W1h + b); W2 = [0.5, -1]: + 9·W2
        ("direft", [0.5, -1.0], [2.0, 3.0], 1.0, [5.5, -7.0]),
        # noreft: h + W2ᵀ(W1h + b − W2h); W2h = -1.5 -> + 10.5·W2
        ("noreft", [0.5, -1.0], [2.0, 3.0], 1.0, [6.25, -8.5]),
        # direft_orth: h + Rᵀ(Wh + b) -> + 9·R
        ("direft_orth", [0.6, 0.8], [2.0, 3.0], 1.0, [6.4, 9.2]),
        # consreft: h + Rᵀ(b − Rh); b = 3 -> + 0.8·R
        ("consreft", [0.6, 0.8], None, 3.0, [1.48, 2.64]),
        # lobireft: h + Rᵀb -> + 3·R
        ("lobireft", [0.6, 0.8], None, 3.0, [2.8, 4.4]),
    ],
)
def test_reference_values(kind, basis, w, b, expected):
    out = build(kind, basis, w, b)(H, CTX)
    torch.testing.assert_close(out, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_activation_applies_to_target():
    # relu(Wh + b) = relu(-2 - 6 + 1) = 0; loreft: h + Rᵀ(0 − 2.2)
    out = build("loreft", [0.6, 0.8], [-2.0, -3.0], 1.0, activation="relu")(H, CTX)
    torch.testing.assert_close(out, torch.tensor([[1 - 1.32, 2 - 1.76]]), rtol=0, atol=1e-6)


def test_orthonormalize_reference():
    # A = [[1,1],[0,1],[0,0]] -> Gram-Schmidt rows e1, e2 (positive diagonal)
    r = orthonormalize(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    # sign fix: a negative column keeps its direction (R = A / |A|)
    r = orthonormalize(torch.tensor([[-0.6], [-0.8]]))
    torch.testing.assert_close(r, torch.tensor([[-0.6, -0.8]]))


def test_dropout_on_edit_only():
    mod = build("lobireft", [0.6, 0.8], None, 3.0, dropout=0.5).train()
    h = torch.ones(2000, 2)
    ctx = Context(torch.zeros(2000, dtype=torch.long), 1)
    torch.manual_seed(0)
    edit = mod(h, ctx) - h
    full = torch.tensor([1.8, 2.4])  # 3·R, scaled by 1/(1-p) = 2 when kept
    kept = (edit - 2 * full).abs() < 1e-5  # elementwise dropout on the edit
    dropped = edit.abs() < 1e-6
    assert bool((kept | dropped).all())  # h itself is never zeroed
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(mod.eval()(h[:1], CTX), h[:1] + full)


@pytest.mark.parametrize("group_decay", [True, False])
def test_rotation_survives_adamw_weight_decay(group_decay):
    """pyreft's footgun: AdamW weight decay collapsed R to 0. Here R stays orthonormal."""
    model = reftx.attach(tiny_model("llama"), [{"kind": "loreft", "rank": 4, "layers": [1],
                                               "positions": {"last": 2}}])
    params = model.param_groups(0.1) if group_decay else [{"params": list(model.interventions.parameters()),
                                                            "weight_decay": 0.1}]
    opt = torch.optim.AdamW(params, lr=0.05)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    for _ in range(20):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    r = model.intervention("L1.block_output.last").basis.matrix()
    torch.testing.assert_close(r @ r.T, torch.eye(4), atol=1e-5, rtol=0)
    assert abs(r.norm().item() - 2.0) < 1e-5  # ||R||_F = sqrt(rank)


def test_param_groups_exclude_rotation_from_decay():
    model = reftx.attach(tiny_model("llama"), [{"kind": "loreft", "rank": 2, "layers": [1], "positions": "last_prompt"}])
    decay, no_decay = model.param_groups(0.01)
    mod = model.intervention("L1.block_output.last_prompt")
    assert [id(p) for p in no_decay["params"]] == [id(mod.basis.weight)]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert {id(p) for p in decay["params"]} == {id(mod.source.weight), id(mod.source.bias)}

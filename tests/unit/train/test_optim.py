"""reftx's AdamW (reftx.train.optim.adamw): the multi-tensor update is the per-tensor loop's, bit for bit,
and a checkpoint of either resumes under the other."""
from __future__ import annotations

import pytest
import torch

import reftx
from reftx.train.optim import adamw
from tests.conftest import answer_data, tiny_model

# 2 interventions a layer on 4 layers: 8 interventions, 24 tensors in two weight-decay groups
SPEC = [{"kind": "loreft", "rank": 4, "layers": "all", "positions": {"first": 2, "last": 2}, "tie": "none"}]


def _model() -> reftx.ReftModel:
    return reftx.attach(tiny_model("llama"), SPEC)


def _steps(model: reftx.ReftModel, opt: torch.optim.Optimizer, n: int) -> None:
    ids, mask, labels = answer_data(4)
    for _ in range(n):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()


def _weights(model: reftx.ReftModel) -> list[torch.Tensor]:
    return [p.detach().clone() for g in model.param_groups(0.0) for p in g["params"]]


def test_defaults_to_foreach_and_leaves_explicit_choices():
    p = [torch.nn.Parameter(torch.ones(2))]
    assert adamw(p, lr=1e-3).defaults["foreach"] is True
    assert adamw(p, lr=1e-3, foreach=False).defaults["foreach"] is False
    fused = adamw(p, lr=1e-3, fused=True).defaults
    assert fused["fused"] is True and fused["foreach"] is None


def test_foreach_equals_the_per_tensor_loop_with_weight_decay():
    loop_m, multi_m = _model(), _model()
    assert all(torch.equal(a, b) for a, b in zip(_weights(loop_m), _weights(multi_m)))
    loop = torch.optim.AdamW(loop_m.param_groups(0.1), lr=1e-2, foreach=False)
    multi = adamw(multi_m.param_groups(0.1), lr=1e-2)
    _steps(loop_m, loop, 5)
    _steps(multi_m, multi, 5)
    after = _weights(loop_m)
    assert any(not torch.equal(a, b) for a, b in zip(after, _weights(_model())))  # the steps moved them
    assert all(torch.equal(a, b) for a, b in zip(after, _weights(multi_m)))  # bit for bit


@pytest.mark.parametrize("saved_foreach", [False, True])
def test_a_checkpoint_of_either_resumes_under_the_other(saved_foreach):
    """The state dict is the same format: 3 steps, save, load, switch to the other kind, 3 more
    steps == 6 steps uninterrupted. (torch restores the saved group options, ``foreach`` included.)"""
    straight = _model()
    _steps(straight, adamw(straight.param_groups(0.1), lr=1e-2), 6)
    first = _model()
    opt = torch.optim.AdamW(first.param_groups(0.1), lr=1e-2, foreach=saved_foreach)
    _steps(first, opt, 3)
    weights, state = first.state_dict(), opt.state_dict()
    second = _model()
    second.load_state_dict(weights)
    resumed = torch.optim.AdamW(second.param_groups(0.1), lr=1e-2, foreach=not saved_foreach)
    resumed.load_state_dict(state)
    assert [g["foreach"] for g in resumed.param_groups] == [saved_foreach] * 2
    for g in resumed.param_groups:
        g["foreach"] = not saved_foreach
    _steps(second, resumed, 3)
    assert all(torch.equal(a, b) for a, b in zip(_weights(straight), _weights(second)))

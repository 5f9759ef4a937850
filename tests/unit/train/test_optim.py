"""reftx's AdamW (reftx.train.optim.adamw): the flat update (and the multi-tensor fallback) is the
per-tensor loop's, bit for bit, and a checkpoint of any of them resumes under the others."""
from __future__ import annotations

import pytest
import torch

import reftx
from reftx.train.optim import FlatAdamW, adamw
from tests.conftest import answer_data, tiny_model

# 2 interventions a layer on 4 layers: 8 interventions, 24 tensors in two weight-decay groups
SPEC = [{"kind": "loreft", "rank": 4, "layers": "all", "positions": {"first": 2, "last": 2}, "tie": "none"}]
KINDS = {"loop": lambda groups: torch.optim.AdamW(groups, lr=1e-2, foreach=False),
         "foreach": lambda groups: torch.optim.AdamW(groups, lr=1e-2, foreach=True),
         "flat": lambda groups: adamw(groups, lr=1e-2)}


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


def test_defaults_to_flat_with_foreach_and_leaves_explicit_choices():
    p = [torch.nn.Parameter(torch.ones(2))]
    opt = adamw(p, lr=1e-3)
    assert isinstance(opt, FlatAdamW) and opt.defaults["foreach"] is True
    assert adamw(p, lr=1e-3, foreach=False).defaults["foreach"] is False
    fused = adamw(p, lr=1e-3, fused=True)
    assert type(fused) is torch.optim.AdamW and fused.defaults["fused"] is True and fused.defaults["foreach"] is None


@pytest.mark.parametrize("kind", ["foreach", "flat"])
def test_equals_the_per_tensor_loop_with_weight_decay(kind):
    loop_m, other_m = _model(), _model()
    assert all(torch.equal(a, b) for a, b in zip(_weights(loop_m), _weights(other_m)))
    _steps(loop_m, KINDS["loop"](loop_m.param_groups(0.1)), 5)
    _steps(other_m, KINDS[kind](other_m.param_groups(0.1)), 5)
    after = _weights(loop_m)
    assert any(not torch.equal(a, b) for a, b in zip(after, _weights(_model())))  # the steps moved them
    assert all(torch.equal(a, b) for a, b in zip(after, _weights(other_m)))  # bit for bit


def test_flat_equals_the_loop_on_odd_sizes_and_grad_scales():
    """Sizes that are and are not multiples of a vector width, gradients from 1e-6 to 1e2, 40 steps."""
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 8), (8,), (3,), (7, 5), (13,), (1000,), (1,)]
    init = [torch.randn(s, generator=g) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    loop = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.1, foreach=False)
    flat = adamw(b, lr=1e-2, weight_decay=0.1)
    for _ in range(40):
        for p, q, s in zip(a, b, shapes):
            p.grad = torch.randn(s, generator=g) * 10.0 ** torch.randint(-6, 3, (), generator=g).item()
            q.grad = p.grad.clone()
        loop.step()
        flat.step()
    assert flat._flat  # it ran flat
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    for p, q in zip(a, b):
        assert all(torch.equal(loop.state[p][k], flat.state[q][k]) for k in ("step", "exp_avg", "exp_avg_sq"))


class _OwnData(torch.nn.Parameter):
    """A parameter subclass that manages its own data (as FSDP's FlatParameter does)."""


@pytest.mark.parametrize("cls", [torch.nn.Parameter, _OwnData])
def test_plain_parameters_live_in_the_flat_tensor_and_subclasses_keep_their_data(cls):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in ((4, 3), (5,), (2, 2))]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [cls(t.clone()) for t in init]
    loop, flat = torch.optim.AdamW(a, lr=1e-2, foreach=False), adamw(b, lr=1e-2)
    before = [q.data_ptr() for q in b]
    for _ in range(3):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        loop.step()
        flat.step()
    record = flat._flat[0]
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # bit for bit either way
    if cls is torch.nn.Parameter:  # views of one tensor, updated in place: nothing concatenated or copied back
        assert record.owned and all(q.untyped_storage().data_ptr() == record.flat.data_ptr() for q in b)
        assert torch.equal(record.flat, torch.cat([q.detach().view(-1) for q in b]))
    else:
        assert not record.owned and [q.data_ptr() for q in b] == before


def test_a_missing_gradient_takes_torchs_step_and_stays_exact():
    """A step where one tensor has no gradient: that group runs torch's step (the tensor's state is
    left alone), step counts then differ and the group stays off the flat path; equal to the loop."""
    a = [torch.nn.Parameter(torch.full((4,), float(i))) for i in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    loop, flat = torch.optim.AdamW(a, lr=0.1, foreach=False), adamw(b, lr=0.1)
    for step in range(4):
        for p, q in zip(a, b):
            p.grad = None if (step == 1 and p is a[0]) else torch.full((4,), step + 1.0) * (p.detach() + 1)
            q.grad = None if p.grad is None else p.grad.clone()
        loop.step()
        flat.step()
        assert bool(flat._flat) == (step == 0)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert float(flat.state[b[0]]["step"]) == 3.0 and float(flat.state[b[1]]["step"]) == 4.0


@pytest.mark.parametrize("saved, resumed", [("loop", "flat"), ("flat", "loop"), ("foreach", "flat"), ("flat", "flat")])
def test_a_checkpoint_of_any_resumes_under_another(saved, resumed, tmp_path):
    """The state dict is the same format: 3 steps, save (through torch.save), load, switch to the
    other kind, 3 more steps == 6 steps uninterrupted."""
    straight = _model()
    _steps(straight, KINDS["loop"](straight.param_groups(0.1)), 6)
    first = _model()
    opt = KINDS[saved](first.param_groups(0.1))
    _steps(first, opt, 3)
    torch.save({"weights": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt")
    second = _model()
    second.load_state_dict(state["weights"])
    again = KINDS[resumed](second.param_groups(0.1))
    again.load_state_dict(state["opt"])
    for g in again.param_groups:  # torch restores the saved group options, ``foreach`` included
        g["foreach"] = resumed == "foreach" or (resumed == "flat" and g["foreach"])
    _steps(second, again, 3)
    assert all(torch.equal(a, b) for a, b in zip(_weights(straight), _weights(second)))
    if resumed == "flat":
        assert len(again._flat) == 2  # back on the flat path after loading

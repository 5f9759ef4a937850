"""Every registered objective, run against a primitive that carries every kind of loss term, gives
each term to the training loss exactly once.

The terms a primitive can contribute besides the objective's own (reftx/train/loss.py):
  * an auxiliary loss published in its forward (``ctx.add_loss``), reported by ``ReftModel.forward``;
  * a parameter loss of a modifier (``Modifier.loss()``, e.g. a hinge bound);
  * a loss scale of a modifier (``Modifier.scale()``, e.g. BREP's PID weight).
A probe sets each to a known value (a, p, s) on an intervention whose edit is the identity, so the
objective's own term cannot change; then the composed loss must be exactly (core + a + p) · s, and
the objective's core term must equal the core with the probe off (no objective adds a term itself).
The list of cases is checked against the registry: a new objective fails here until it has a case.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import reftx
from reftx.core.plugins import load
from reftx.data.encoding import Encoded, collate_train
from reftx.train.loss import compose
from reftx.train.objectives import OBJECTIVES
from reftx.train.objectives.grpo import EXAMPLE_INDEX, Env
from tests.conftest import tiny_model

A, P, S = 0.375, 1.25, 3.0  # the probe's aux loss, parameter loss and loss scale (exact in binary)
SPEC = [{"kind": "loreft", "rank": 2, "layers": [1], "positions": {"last": 2}}]


class Tok:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in ids]


def env():  # reward 1 when the first sampled token is even, the partial 0.1 otherwise
    return Env(Tok(), lambda texts, index, partial: torch.tensor([1.0 if int(t.split()[0]) % 2 == 0 else partial
                                                                  for t in texts]))


def lm_batch(**info):
    b = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 20, 22], [10, 11, 12, 21, 23, 24, 0]]),
         "labels": torch.tensor([[-100] * 5 + [20, 22], [-100, -100, -100, 21, 23, 24, -100]]),
         "attention_mask": torch.tensor([[1] * 7, [1] * 6 + [0]])}
    return {**b, "example_info": {k: torch.tensor(v) for k, v in info.items()}} if info else b


def guided_batch():  # nlft's: the guided copy (guidance 40.. + prompt) and the judged copy (70.. + prompt)
    rows = [([5, 6, 7, 8, 9], [40, 41], [11, 12, 13, 2]), ([20, 21, 22, 23, 24], [42], [30, 31, 2])]
    return collate_train([Encoded(p + r, [-100] * len(p) + r, len(p), info={EXAMPLE_INDEX: float(i)},
                                  guided_ids=g + p + r, guided_prompt_len=len(g) + len(p),
                                  judged_ids=[70, 71] + p + r, judged_prompt_len=2 + len(p))
                          for i, (p, g, r) in enumerate(rows)], pad_id=0)


def class_batch():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "example_info": {"label": torch.tensor([1., 0.])}}


SAMPLING = {"group_size": 2, "max_new_tokens": 3, "beta": 0.04}
# objective -> (model type, batch, options, needs env)
CASES = {
    "nll": ("llama", lm_batch, {}, False),
    "classify": ("bert", class_batch, {}, False),
    "gd": ("llama", lambda: lm_batch(gate_label=[1.0, 0.0]), {}, False),
    "idk": ("llama", lambda: lm_batch(gate_label=[1.0, 0.0]), {}, False),
    "npo": ("llama", lambda: lm_batch(gate_label=[1.0, 0.0]), {}, False),
    "rmu": ("llama", lambda: lm_batch(gate_label=[1.0, 0.0]), {"layer": 2, "c": 2.0}, False),
    "grpo": ("llama", lambda: lm_batch(**{EXAMPLE_INDEX: [0.0, 1.0]}), SAMPLING, True),
    "carft": ("llama", lambda: lm_batch(**{EXAMPLE_INDEX: [0.0, 1.0]}), {**SAMPLING, "contrastive": {"weight": 0.5}},
              True),
    "ppo": ("llama", lambda: lm_batch(**{EXAMPLE_INDEX: [0.0, 1.0]}), {"group_size": 2, "max_new_tokens": 3}, True),
    "nlft": ("llama", guided_batch, {"max_new_tokens": 3}, True),
    "baft_locality_kl": ("llama", lambda: lm_batch(locality=[0.0, 1.0]), {"weight": 0.5}, False),
}


def test_every_registered_objective_has_a_case():
    """Every objective reftx and its zoo register (other tests may register their own, elsewhere)."""
    load()
    shipped = {n for n in OBJECTIVES.names() if OBJECTIVES.get(n).__module__.startswith("reftx.")}
    assert shipped == set(CASES)


def probed(model_type: str):
    """A model whose one intervention edits nothing (zero weights: h' = h) and, when ``on``, adds
    the aux loss A in every forward it runs in and carries a modifier with loss P and scale S."""
    model = reftx.attach(tiny_model(model_type), SPEC)
    (_, mod), = model.named_interventions()
    with torch.no_grad():
        for p in mod.parameters():
            p.zero_()  # W = 0, b = 0 and R h subtracted and added back: the edit is 0
    state = {"on": False}
    probe = SimpleNamespace(loss=lambda: {"probe_param": torch.tensor(P)}, scale=lambda: torch.tensor(S),
                            after_step=lambda: None, group=None)
    edit = mod.forward

    def forward(h, ctx):
        if state["on"]:
            ctx.add_loss("probe_aux", torch.tensor(A))
        return edit(h, ctx)

    mod.forward = forward
    mod.modifiers = lambda: [probe] if state["on"] else []
    return model, state


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_term_reaches_the_loss_exactly_once(name):
    model_type, make, options, needs_env = CASES[name]
    model, state = probed(model_type)
    model.train()
    objective = OBJECTIVES.get(name)
    kw = {"env": env()} if needs_env else {}
    results = {}
    for on in (False, True):
        state["on"] = on
        torch.manual_seed(0)  # the same samples for the sampling objectives
        core, logs, out = objective(model, make(), options, **kw)
        results[on] = core, compose(core, out.get("aux_losses"), (m for _, m in model.named_interventions()))
    (core_off, (loss_off, terms_off)), (core_on, (loss_on, terms_on)) = results[False], results[True]
    assert terms_off == {} and torch.equal(loss_off, core_off)
    assert torch.equal(core_on, core_off)  # the objective adds none of the terms itself
    assert sorted(terms_on) == ["probe_aux", "probe_param"]
    assert terms_on["probe_aux"].item() == A  # one forward's aux loss, counted once
    torch.testing.assert_close(loss_on, (core_off + A + P) * S, rtol=1e-6, atol=0)

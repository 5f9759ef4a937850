"""Mixed precision and dtypes (issue 28 item 3): a bf16 base (``model.dtype: bf16``) trained under
bf16 autocast (``train.precision: bf16``) with fp32 interventions (their default dtype, the masters)
tracks fp32 training; the saved weights reload onto fp32 and bf16 bases; saved weights and the
optimizer state keep their dtypes through a checkpoint and a resume.

Tolerances (40 AdamW steps of two LoReFT entries, one inside a layer, on a tiny llama): bf16 keeps 8
significand bits, so one rounding of a value moves it by up to 2^-9 ≈ 2e-3 relative. Measured on
2 CPU threads: the per-step losses differ by at most 1.5e-4 relative (bound: 2e-3, one rounding of
the loss), the loss falls by the same amount to 0.04% (bound: 5%), and each trained tensor ends
within 3.5% of the distance fp32 training moved it from its init (bound: 10%; the differences of
every step's rounded matmuls accumulate through Adam's normalised updates).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import reftx
from reftx.config.schema import ModelConfig, TrainConfig
from reftx.data.encoding import Encoded
from reftx.engine.model import WEIGHTS_NAME, ReftModel
from reftx.testing.tiny import batch, tiny_model
from reftx.train.run import train

SPEC = [{"kind": "loreft", "rank": 4, "layers": [1, 2], "positions": {"first": 2, "last": 2}},
        {"kind": "loreft", "rank": 4, "layers": [1], "component": "mlp_output", "positions": {"first": 2, "last": 2}}]


def _data() -> list[Encoded]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(16):
        prompt = torch.randint(3, 97, (6 + i % 3,), generator=g).tolist()
        response = [10 + i % 4, 20 + i % 5, 2]
        out.append(Encoded(prompt + response, [-100] * len(prompt) + response, len(prompt)))
    return out


def _train(tmp_path, name, dtype, precision, spec=SPEC, steps=40, resume=False, **kw):
    model = reftx.attach(tiny_model("llama").to(dtype), spec)
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-2, log_every=1, precision=precision, **kw)
    train(model, _data(), cfg, tmp_path / name, pad_id=0, seed=0, resume=resume, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return model, [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    fp32, fp32_losses = _train(tmp, "fp32", torch.float32, "fp32")
    bf16, bf16_losses = _train(tmp, "bf16", torch.bfloat16, "bf16")
    bf16.save_pretrained(tmp / "bf16-intervention")
    return tmp, (fp32, fp32_losses), (bf16, bf16_losses)


def test_model_dtype_takes_the_short_names():
    assert [ModelConfig(dtype=d).dtype for d in ("bf16", "fp16", "fp32", "bfloat16")] == \
        ["bfloat16", "float16", "float32", "bfloat16"]


def test_bf16_training_tracks_fp32(runs):
    _, (fp32, l32), (bf16, l16) = runs
    assert next(bf16.base.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.interventions.parameters())  # fp32 masters
    assert len(l16) == len(l32) == 40 and l16 != l32  # bf16 did run: not bit-identical
    assert max(abs(a - b) / b for a, b in zip(l16, l32)) <= 2e-3
    fell32, fell16 = l32[0] - sum(l32[-5:]) / 5, l16[0] - sum(l16[-5:]) / 5
    assert fell32 > 0.1 and abs(fell16 - fell32) <= 0.05 * fell32  # it learned, as much as fp32 did
    init = {n: p.detach() for n, p in reftx.attach(tiny_model("llama"), SPEC).interventions.named_parameters()}
    w32 = {n: p.detach() for n, p in fp32.interventions.named_parameters()}
    w16 = {n: p.detach() for n, p in bf16.interventions.named_parameters()}
    for n, p in w32.items():
        moved = float((p - init[n]).norm())
        assert float((w16[n] - p).norm()) <= 0.1 * moved, n


def test_a_bf16_base_run_reloads_onto_fp32_and_bf16_bases(runs):
    tmp, _, (bf16, _) = runs
    folder = tmp / "bf16-intervention"
    saved = load_file(folder / WEIGHTS_NAME)
    assert {t.dtype for t in saved.values()} == {torch.float32}
    ids, mask = batch()
    bf16.eval()
    with torch.no_grad():
        trained = bf16(input_ids=ids, attention_mask=mask).logits
    logits = {}
    for dtype in (torch.bfloat16, torch.float32):
        base = tiny_model("llama").to(dtype)
        with torch.no_grad():
            plain = base(input_ids=ids, attention_mask=mask).logits.float()
        again = ReftModel.from_pretrained(base, folder).eval()
        weights = {f"{k}.{n}": t for k, m in again.named_interventions() for n, t in m.state_dict().items()}
        assert all(t.dtype == torch.float32 and torch.equal(t, saved[k]) for k, t in weights.items())
        with torch.no_grad():
            logits[dtype] = again(input_ids=ids, attention_mask=mask).logits.float()
        assert (logits[dtype] - plain).abs().max() > 0.1  # the edits are there (0.6 measured)
        again.detach()
    assert torch.equal(logits[torch.bfloat16], trained.float())  # the same base dtype: the trained model exactly
    # an fp32 base computes what the bf16 one rounds: measured 0.6% of the logits' largest magnitude
    # (the edits move the logits by 0.6, the two bases differ by 0.003); bound 2%
    assert (logits[torch.float32] - logits[torch.bfloat16]).abs().max() <= 0.02 * logits[torch.float32].abs().max()


def test_saved_weights_and_optimizer_state_keep_their_dtypes(tmp_path):
    """A bf16 base under bf16 autocast, one fp32 entry (the default) and one bf16 entry
    (``dtype: bfloat16``): every checkpoint holds each tensor, and each optimizer moment, in its
    parameter's dtype, and a run resumed from step 2 ends bit-identical to the uninterrupted one."""
    spec = [SPEC[0], {**SPEC[1], "dtype": "bfloat16"}]
    kw = {"checkpoint_every": 2, "keep_checkpoints": 5}
    whole, _ = _train(tmp_path, "whole", torch.bfloat16, "bf16", spec, steps=4, **kw)
    dtypes = {k: p.dtype for k, p in whole.interventions.named_parameters()}
    assert {d for k, d in dtypes.items() if "mlp_output" in k} == {torch.bfloat16}
    assert {d for k, d in dtypes.items() if "block_output" in k} == {torch.float32}
    order = [p.dtype for g in whole.param_groups(0.0) for p in g["params"]]  # the optimizer's parameter order

    def check(step_dir):
        saved = load_file(step_dir / "intervention" / WEIGHTS_NAME)
        assert {k: t.dtype for k, t in saved.items()} == {k.replace("|", "."): d for k, d in dtypes.items()}
        state = torch.load(step_dir / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
        assert len(state) == len(order)
        for i, d in enumerate(order):
            assert state[i]["exp_avg"].dtype == state[i]["exp_avg_sq"].dtype == d

    for step in (2, 4):
        check(tmp_path / "whole" / "checkpoints" / f"step-{step}")
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-4")
    resumed, _ = _train(tmp_path, "resumed", torch.bfloat16, "bf16", spec, steps=4, resume=True, **kw)
    check(tmp_path / "resumed" / "checkpoints" / "step-4")
    final = dict(resumed.interventions.named_parameters())
    assert all(p.dtype == dtypes[k] and torch.equal(p, final[k]) for k, p in whole.interventions.named_parameters())

"""reftx.train.sharding: FSDP2 for the frozen base where accelerate runs CPU processes as DDP. Here in
one gloo process (the 2-process run against one process: tests/integration/test_fsdp.py)."""
from __future__ import annotations

import types

import pytest
import torch
import torch.distributed as dist
from accelerate.utils import DistributedType

from reftx.core.errors import ReftError
from reftx.engine.model import attach
from reftx.testing.tiny import batch, perturb, tiny_model
from reftx.train import sharding

SPECS = [{"kind": "loreft", "rank": 2, "component": "block_output", "layers": [1, 2], "positions": {"last": 2}}]


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(("env", "kind", "expected"), [
    ("true", DistributedType.MULTI_CPU, True),   # accelerate ignored FSDP: reftx shards
    ("true", DistributedType.FSDP, False),       # accelerate's own FSDP (GPUs)
    ("false", DistributedType.MULTI_CPU, False),  # plain DDP asked for
])
def test_sharding_is_needed_only_where_accelerate_left_fsdp_out(monkeypatch, env, kind, expected):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", env)
    assert sharding.needed(types.SimpleNamespace(distributed_type=kind)) is expected


def test_the_layers_come_from_the_launcher_else_the_model(monkeypatch):
    base = tiny_model("llama")
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    assert sharding.layer_names(base) == {"LlamaDecoderLayer"}
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaMLP, LlamaAttention")
    assert sharding.layer_names(base) == {"LlamaMLP", "LlamaAttention"}


def test_the_frozen_base_is_sharded_and_left_out_of_ddp_with_the_same_outputs(group, monkeypatch):
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    model = perturb(attach(tiny_model("llama"), SPECS), 0.3)
    ids, mask = batch(b=2)
    before = model(input_ids=ids, attention_mask=mask).logits
    line = sharding.shard_base(model)
    layer = sum(p.numel() for p in model.base.model.layers[0].parameters())
    assert line == (f"FSDP2: 4 LlamaDecoderLayer layers of the frozen base sharded; this process holds {4 * layer} "
                    f"of their {4 * layer} parameters")  # one process holds every shard
    assert all(type(p).__name__ == "DTensor" for p in model.base.model.layers.parameters())
    assert not any(type(p).__name__ == "DTensor" for p in model.interventions.parameters())
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert ignored == {f"base.{n}" for n, _ in [*model.base.named_parameters(), *model.base.named_buffers()]}
    assert not any(n.startswith("interventions.") for n in ignored)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)


def test_fsdp1_and_a_base_with_trained_modules_are_refused(monkeypatch):
    model = attach(tiny_model("llama"), SPECS)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ReftError, match=r"^FSDP on CPU processes runs FSDP2 only: launch with --fsdp_version 2 \(got 1\)"):
        sharding.shard_base(model)
    monkeypatch.setenv("FSDP_VERSION", "2")
    trained = attach(tiny_model("llama", seed=1), SPECS, train_modules=["lm_head"])
    with pytest.raises(ReftError, match=r"^--fsdp on CPU shards the frozen base only, and this base trains 1 "
                                        r"parameter\(s\) \(lm_head.weight, ...; model.train_modules or LoRA\)"):
        sharding.shard_base(trained)

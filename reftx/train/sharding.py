"""FSDP on CPU processes: the frozen base's decoder layers sharded with FSDP2, the interventions
replicated under accelerate's DDP, as on any other multi-process run.

``reftx run --num-processes N --fsdp`` (or ``accelerate launch --use_fsdp --fsdp_version 2 -m reftx
run ...``) on a machine without GPUs starts gloo CPU ranks through accelerate's launcher, which sets
``ACCELERATE_USE_FSDP=true`` and ``FSDP_VERSION=2`` for them (accelerate/utils/launch.py,
``prepare_multi_gpu_env``). accelerate 1.15 then ignores FSDP: ``AcceleratorState`` turns a run into
``DistributedType.FSDP`` only in its GPU-type branch (accelerate/state.py, lines 986-1016), a
``MULTI_CPU`` run stays ``MULTI_CPU`` and ``Accelerator.prepare_model`` wraps the model in plain DDP
(accelerate/accelerator.py, lines 2058-2062); no option or variable changes that. torch itself runs
FSDP2 on CPU with gloo (``torch.distributed.fsdp.fully_shard``; its default mesh is a CPU mesh without
CUDA and its device then the CPU: torch/distributed/fsdp/_fully_shard/_fsdp_init.py,
``_init_default_fully_shard_mesh`` and ``_get_device_from_mesh``, lines 214-223). So where
accelerate left FSDP out, reftx applies it: each decoder layer of the frozen base is
``fully_shard``-ed (its parameters become DTensor shards, gathered for its forward and backward and
freed after), and DDP is told to leave the base alone
(``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``, torch/nn/parallel/
distributed.py), so it averages the interventions' gradients exactly as without FSDP. On GPUs
accelerate's own FSDP2 runs (its ``fsdp2_prepare_model``) and nothing here applies.

The frozen base is all that is sharded: a base with trained modules (``model.train_modules``, LoRA)
is refused, since the checkpoints hold unsharded intervention tensors only. Every forward of a
sharded layer is a collective, so evaluation runs whole on every process (reftx.eval.generate,
reftx.core.processes.sharded).
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from reftx.core.errors import ReftError


def requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch --use_fsdp``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def needed(acc: Any) -> bool:
    """Whether FSDP was asked for and accelerate runs plain DDP instead (CPU processes)."""
    from accelerate.utils import DistributedType

    return requested() and acc.distributed_type == DistributedType.MULTI_CPU


def layer_names(base: nn.Module) -> set[str]:
    """The class names to shard: the launcher's ``--fsdp_transformer_layer_cls_to_wrap``, else the
    model class's ``_no_split_modules`` (its decoder layer)."""
    given = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = {n.strip() for n in given.split(",") if n.strip()}
    return names or set(getattr(base, "_no_split_modules", None) or [])


def _check(model: Any) -> None:
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise ReftError(f"FSDP on CPU processes runs FSDP2 only: launch with --fsdp_version 2 "
                        f"(got {os.environ['FSDP_VERSION']}), as `reftx run --num-processes N --fsdp` does")
    trained = sorted(n for n, p in model.base.named_parameters() if p.requires_grad)
    if trained:
        raise ReftError(f"--fsdp on CPU shards the frozen base only, and this base trains {len(trained)} "
                        f"parameter(s) ({trained[0]}, ...; model.train_modules or LoRA): run it without --fsdp")


def shard_base(model: Any) -> str:
    """``fully_shard`` every decoder layer of ``model.base`` (a ReftModel's frozen base) over the
    process group, and keep the base out of DDP; returns a line saying what this process now holds."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    _check(model)
    names = layer_names(model.base)
    layers = [m for m in model.base.modules() if type(m).__name__ in names]
    if not layers:
        raise ReftError(f"--fsdp: {type(model.base).__name__} has no module of class {', '.join(sorted(names)) or '?'} "
                        "to shard (give --fsdp_transformer_layer_cls_to_wrap to accelerate launch)")
    kinds = "/".join(sorted({type(m).__name__ for m in layers}))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard)
    base = {f"base.{n}" for n, _ in model.base.named_parameters()} | {f"base.{n}" for n, _ in model.base.named_buffers()}
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(base))
    params = [p for layer in layers for p in layer.parameters()]
    held = sum(p.to_local().numel() for p in params)  # this process's shards (DTensors since fully_shard)
    return (f"FSDP2: {len(layers)} {kinds} layers of the "
            f"frozen base sharded; this process holds {held} of their {sum(p.numel() for p in params)} parameters")


__all__ = ["layer_names", "needed", "requested", "shard_base"]

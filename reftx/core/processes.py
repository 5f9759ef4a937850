"""The processes of a multi-process run, seen from any layer: which one this is, and the two
collectives reftx needs besides accelerate's own (gathering generated text; agreeing on what the
main process decided, such as the run folder).

A run is multi-process when a launcher started it (``accelerate launch -m reftx run EXP.yaml``, or
``reftx run --num-processes N``, which calls accelerate's launcher): the launcher sets
``WORLD_SIZE``, and the first question asked here starts the process group through accelerate
(``PartialState``: gloo on CPU, NCCL on GPUs; the ``Accelerator`` of the training loop joins the
same group). In a single process every function is the identity and nothing is started.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reftx.core.errors import ReftError

T = TypeVar("T")


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _group() -> bool:
    """Whether a process group of more than one process is up, starting it through accelerate when
    a launcher started this process and nothing has started it yet."""
    if not launched() or not dist.is_available():
        return False
    if not dist.is_initialized():
        _state()  # joins the group the launcher's environment describes
    return dist.is_initialized() and dist.get_world_size() > 1


def _state() -> Any:
    """accelerate's ``PartialState``, made as the training loop's ``Accelerator`` makes it (on the CPU
    when ``ACCELERATE_USE_CPU`` is set: a plain ``PartialState()`` would ignore it and see no group)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def world() -> int:
    """How many processes run this experiment (1 without a launcher)."""
    return dist.get_world_size() if _group() else 1


def rank() -> int:
    """This process's index, 0 for the main process (and without a launcher)."""
    return dist.get_rank() if _group() else 0


def is_main() -> bool:
    """Whether this is the process that writes the run folder and speaks for the run."""
    return rank() == 0


def device() -> torch.device:
    """The device this process computes on, as accelerate picks it: this process's GPU under a
    launcher, else the GPU (``cuda`` with one or more visible), else the CPU; ``ACCELERATE_USE_CPU=1``
    keeps everything on the CPU."""
    return _state().device


def gather(items: list[T]) -> list[T]:
    """Every process's ``items`` (picklable), concatenated in process order, in every process."""
    if not _group():
        return list(items)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def main_decides(fn: Callable[[], T]) -> T:
    """``fn()`` run by the main process only, its value handed to every process; when it raises, the
    main process raises it and every other process raises a ReftError with the same message (so no
    process waits for a value that never comes)."""
    if not _group():
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            value = fn()
        except BaseException as e:
            dist.broadcast_object_list([("error", str(e) or type(e).__name__)], src=0)
            raise
        box = [("ok", value)]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise ReftError(value)
    return value


def sharded(model: Any) -> bool:
    """Whether any module of ``model`` is FSDP2-sharded (``fully_shard``: by accelerate's FSDP on GPUs,
    by reftx.train.sharding on CPU processes). A forward of it is then a collective, so every process
    must run the same forwards: evaluation runs whole on every process instead of sharded."""
    if not _group():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


__all__ = ["device", "gather", "is_main", "launched", "main_decides", "rank", "sharded", "world"]

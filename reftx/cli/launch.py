"""``reftx run --num-processes N [--fsdp]``: the same ``reftx run`` in N processes, started by
accelerate's own launcher (``accelerate.commands.launch``), exactly as

    accelerate launch --multi_gpu --num_processes N -m reftx run EXP.yaml [overrides]

would start it (``--use_fsdp --fsdp_version 2`` instead of ``--multi_gpu`` with ``--fsdp``). Every
process runs the experiment; the main one writes the run folder (reftx.runs.shared), the batches
are split over the processes (reftx.train.loop.accelerator), evaluation is sharded and gathered
(reftx.eval.generate). On a machine without GPUs the processes are gloo CPU ranks
(``ACCELERATE_USE_CPU=1``: accelerate's ``--cpu`` launcher needs MPI for more than one process, its
``--multi_gpu`` one goes through torchrun), each with its share of the CPU cores.

With ``--fsdp`` the launcher passes ``--use_fsdp --fsdp_version 2`` (FSDP2): on GPUs accelerate shards
the model itself; on CPU processes accelerate 1.15 runs plain DDP whatever FSDP settings it gets, so
reftx.train.sharding shards the frozen base there with torch's ``fully_shard`` (gloo), the launch
still accelerate's.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from reftx.core.errors import ReftError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layer_classes(exp: Any) -> list[str]:
    """The decoder-layer class names FSDP wraps one by one (the base model class's
    ``_no_split_modules``, read from its config without weights); [] when unknown."""
    import transformers

    from reftx.recipes.train import model_config_of

    try:
        archs = getattr(model_config_of(exp), "architectures", None) or []
    except ReftError:
        return []
    return sorted({name for a in archs for name in (getattr(getattr(transformers, a, None), "_no_split_modules", None) or [])})


def launch_args(n: int, fsdp: bool, layers: list[str], gpus: bool, cores: int) -> list[str]:
    """accelerate launch's arguments (before ``-m reftx ...``) for ``n`` processes."""
    args = ["--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]
    if not gpus:  # torchrun's workers as gloo CPU ranks, the cores shared out
        args += ["--num_cpu_threads_per_process", str(max(1, cores // n))]
    if not fsdp:
        return [*args, "--multi_gpu"]
    args += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
             "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true"]
    return [*args, "--fsdp_transformer_layer_cls_to_wrap", ",".join(layers)] if layers else args


def check(n: int, gpus: int) -> None:
    """Refuse what accelerate would fail on later, or run otherwise than asked."""
    if n < 1:
        raise ReftError(f"--num-processes must be 1 or more, got {n}")
    if gpus and n > gpus:
        raise ReftError(f"--num-processes {n}: this machine has {gpus} GPU{'s' * (gpus != 1)}, one process each; "
                        f"use at most {gpus}")
    if os.environ.get("LOCAL_RANK") is not None:
        raise ReftError("--num-processes starts the processes itself: under `accelerate launch` (or torchrun), which "
                        "already started them, leave it out and give the launcher's --num_processes")


def add_arguments(run: Any) -> None:
    """``reftx run``'s --num-processes and --fsdp."""
    run.add_argument("--num-processes", type=int, default=1, metavar="N",
                     help="train in N processes (one per GPU; gloo CPU processes without GPUs) started by accelerate's "
                          "launcher, as `accelerate launch --multi_gpu --num_processes N -m reftx run ...` would; "
                          "train.batch_size stays the global batch, split over the processes")
    run.add_argument("--fsdp", action="store_true",
                     help="with --num-processes: shard the frozen base with FSDP2 instead of replicating it (DDP); on GPUs "
                          "or gloo CPU processes")


def run_argv(args: Any, resume: Any = None) -> list[str]:
    """``reftx run``'s arguments as given (``resume``: a run folder to resume instead), without
    --num-processes and --fsdp: what each process runs, or what continues an interrupted run."""
    resume = args.resume if resume is None else resume
    flag = [] if resume is False else ["--resume"] if resume is True else ["--resume", str(resume)]
    return [*(x for m in args.imports for x in ("--import", m)), "run", args.experiment, *args.overrides, *flag,
            *(["--no-progress"] * args.no_progress)]


def check_recipe(exp: Any) -> None:
    """Several processes run the train recipe (reftx.recipes.train); the others write from one process."""
    from reftx.recipes.registry import recipe_of

    name = recipe_of(exp)[0].name
    if name != "train":
        raise ReftError(f"recipe {name!r} runs in one process: run it without --num-processes or a launcher "
                        "(several processes run the train recipe)")


def speaker(exp: Any) -> bool:
    """Whether this process speaks for the run: the main one. Another (under a launcher) prints no
    plan, config or results; its errors still print."""
    from reftx.core import processes
    from reftx.recipes import summary, train as runner

    if processes.world() > 1:
        check_recipe(exp)
    if processes.is_main():
        return True
    runner.console.quiet = summary.console.quiet = True
    return False


def relaunch(argv: list[str], n: int, fsdp: bool, exp: Any) -> int:
    """Run ``python -m reftx`` with ``argv`` in ``n`` processes through accelerate's launcher; returns the
    exit code of the first process that failed (0 when all succeed)."""
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check(n, gpus)
    check_recipe(exp)
    if not gpus:
        os.environ["ACCELERATE_USE_CPU"] = "1"  # the workers inherit it: gloo CPU ranks
    args = launch_command_parser().parse_args(
        [*launch_args(n, fsdp, layer_classes(exp) if fsdp else [], bool(gpus), os.cpu_count() or 1),
         "-m", "reftx", *argv])
    try:
        launch_command(args)
    except Exception as e:  # torch.distributed.elastic's ChildFailedError: the workers printed their errors
        failures = getattr(e, "failures", None)
        if not failures:
            raise
        return next(f.exitcode for _, f in sorted(failures.items())) or 1
    return 0


__all__ = ["add_arguments", "check", "check_recipe", "launch_args", "layer_classes", "relaunch", "run_argv", "speaker"]

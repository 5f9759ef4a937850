"""``reftx run --num-processes N [--fsdp]`` (reftx.cli.launch): what it hands accelerate's launcher,
and what it refuses before starting anything. The runs themselves: tests/integration/test_processes.py."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import reftx.cli.commands as cli
from reftx.cli import launch
from reftx.core.errors import ReftError

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def test_python_dash_m_reftx_is_the_command_line():
    p = subprocess.run([sys.executable, "-m", "reftx", "--version"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert (p.returncode, p.stdout.strip()) == (0, f"reftx {cli._version()}")


def test_ddp_launch_arguments_on_cpu_share_the_cores():
    args = launch.launch_args(2, False, [], gpus=False, cores=8)
    port = args[args.index("--main_process_port") + 1]
    assert args == ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", port, "--num_cpu_threads_per_process", "4", "--multi_gpu"]
    assert 0 < int(port) < 65536


def test_fsdp_launch_arguments_name_fsdp2_and_the_decoder_layer():
    args = launch.launch_args(4, True, ["LlamaDecoderLayer"], gpus=True, cores=16)
    assert "--multi_gpu" not in args and "--num_cpu_threads_per_process" not in args
    tail = args[args.index("--use_fsdp"):]
    assert tail == ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                    "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true",
                    "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]
    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args([*args, "-m", "reftx", "run", "x.yaml"])  # accelerate takes them
    assert (parsed.use_fsdp, parsed.fsdp_version, parsed.module, parsed.training_script) == (True, "2", True, "reftx")
    assert parsed.training_script_args == ["run", "x.yaml"]


def test_layer_classes_come_from_the_models_config(tiny_dir):
    from reftx.config.schema import load_experiment

    exp = load_experiment(QUICKSTART, [f"model.name={tiny_dir}"])
    assert launch.layer_classes(exp) == ["LlamaDecoderLayer"]


def test_each_process_runs_the_command_as_given_without_the_launch_flags():
    args = cli.build_parser().parse_args(["--import", "my.py", "run", "e.yaml", "train.lr=1", "--resume", "runs/x",
                                          "--num-processes", "2", "--fsdp", "--no-progress"])
    assert launch.run_argv(args) == ["--import", "my.py", "run", "e.yaml", "train.lr=1", "--resume", "runs/x",
                                     "--no-progress"]
    assert launch.run_argv(args, resume="runs/y")[-3:] == ["--resume", "runs/y", "--no-progress"]
    plain = argparse.Namespace(imports=[], experiment="e.yaml", overrides=[], resume=True, no_progress=False)
    assert launch.run_argv(plain) == ["run", "e.yaml", "--resume"]


@pytest.mark.parametrize(("n", "gpus", "message"), [
    (0, 0, "--num-processes must be 1 or more, got 0"),
    (4, 2, "--num-processes 4: this machine has 2 GPUs, one process each; use at most 2"),
])
def test_what_accelerate_would_fail_on_is_refused_first(n, gpus, message):
    with pytest.raises(ReftError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        launch.check(n, gpus)


def test_num_processes_under_a_launcher_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ReftError, match=r"under `accelerate launch` \(or torchrun\), which already started them"):
        launch.check(2, 0)


def test_fsdp_on_cpu_is_launched_as_gloo_ranks_with_fsdp2_asked_for():
    """accelerate runs the CPU ranks as DDP whatever it is told; reftx.train.sharding reads the FSDP
    settings the launcher passes on and shards the base (tests/integration/test_fsdp.py)."""
    launch.check(2, 0)  # --fsdp without GPUs is accepted
    args = launch.launch_args(2, True, ["LlamaDecoderLayer"], gpus=False, cores=2)
    assert args[args.index("--num_cpu_threads_per_process") + 1] == "1" and "--multi_gpu" not in args
    assert args[args.index("--use_fsdp"):args.index("--use_fsdp") + 3] == ["--use_fsdp", "--fsdp_version", "2"]
    assert args[-2:] == ["--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]

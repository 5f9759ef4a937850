"""The training loop end to end on a tiny llama: kill and resume, complete-or-absent checkpoints,
NaN losses, Ctrl-C, two-process training, the LR schedule and gradient accumulation.

The runs that must die (SIGKILL, SIGINT) or run distributed are separate processes of
``_train_script.py``; they are started together (two CPU cores do the work of ten processes
far faster side by side than one after another) and each test waits for the ones it reads.
Every run of the script: 8 examples, batch 2, grad_accum 2 (2 optimizer steps per epoch),
12 steps, checkpoint_every 3, keep 2, log_every 1, loreft with dropout 0.1 on every layer.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reftx.train.run import Interrupted, NonFiniteLoss, latest_checkpoint, train
from tests.integration._train_script import INTERRUPTED_EXIT, config, make_data, make_model

SCRIPT = Path(__file__).with_name("_train_script.py")
ROOT = SCRIPT.parents[2]
WEIGHTS = "intervention/interventions.safetensors"
TIMEOUT = 240
STEPS, CKPT_EVERY = 12, 3
TOKENS_PER_STEP = 2 * 2 * 8  # batch 2 x grad_accum 2 x 8 tokens (6 prompt + "7 7"), no padding


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1", **extra}


class Proc:
    """A background process with its output in a file; ``wait`` returns (returncode, output)."""

    def __init__(self, args: list[str], log: Path, **env: str):
        self.log = log
        with log.open("w") as f:
            self.p = subprocess.Popen(args, cwd=ROOT, env=_env(**env), stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def wait(self) -> tuple[int, str]:
        try:
            rc = self.p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, 9)  # the session this Popen started (a launcher and its workers)
            self.p.wait()
            pytest.fail(f"{self.p.args} ran past {TIMEOUT}s:\n{self.log.read_text()[-3000:]}")
        return rc, self.log.read_text()


def script(run_dir: Path, *flags: str) -> Proc:
    return Proc([sys.executable, str(SCRIPT), str(run_dir), str(STEPS), str(CKPT_EVERY), *flags],
                run_dir.with_suffix(".log"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed(run_dir: Path) -> Proc:
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless mpirun is set up (it uses
    # the simple launcher); --multi_gpu goes through torchrun, and ACCELERATE_USE_CPU=1 (set by _env)
    # makes each worker a gloo MULTI_CPU rank.
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(SCRIPT), str(run_dir), str(STEPS), "0", "--per-rank"]
    return Proc(args, run_dir.with_suffix(".log"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    diff = {k: (a[k] - b[k]).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"weights differ (max abs diff per tensor): {diff}"


def state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


# -- the subprocess runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start every first-phase run at once: A uninterrupted, B SIGKILLed at step 7, C Ctrl-C at step 5,
    D SIGKILLed while writing checkpoint step-9, and the two-process run."""
    root = tmp_path_factory.mktemp("train")
    procs = {"A": script(root / "A"), "B": script(root / "B", "--kill-at", "7"),
             "C": script(root / "C", "--sigint-at", "5"), "D": script(root / "D", "--kill-in-save", "9"),
             "dist": distributed(root / "dist")}
    yield root, procs
    for p in procs.values():
        if p.p.poll() is None:
            os.killpg(p.p.pid, 9)
            p.p.wait()


@pytest.fixture(scope="module")
def runs(launched):
    """Wait for A-D; keep copies of B, C and D as they were left; resume B, C and D (side by side)."""
    root, procs = launched
    out = {}
    for name in "ABCD":
        out[name] = procs[name].wait()
    assert out["A"][0] == 0, out["A"][1][-3000:]
    for name in "BCD":
        shutil.copytree(root / name, root / f"{name}-left")
    # a complete-looking checkpoint under a temporary name, claiming a later step: it must be ignored
    fake = root / "D" / "checkpoints" / ".tmp-step-11-1"
    shutil.copytree(root / "D" / "checkpoints" / "step-6", fake)
    (fake / "state.json").write_text(json.dumps({**state(fake), "step": 11}) + "\n")
    resumed = {name: script(root / f"{name}", "--resume") for name in "BCD"}
    for name, p in resumed.items():
        rc, log = p.wait()
        assert rc == 0, log[-3000:]
        out[f"{name}-resume"] = (rc, log)
    return root, out


def test_sigkill_then_resume_gives_identical_weights_and_log(runs):
    root, out = runs
    rc, log = out["B"]
    assert rc == -9, log[-3000:]  # SIGKILL, from on_log at step 7
    assert [r["step"] for r in metrics(root / "B-left")] == list(range(1, 8))
    assert f"resumed from {root / 'B' / 'checkpoints' / 'step-6'} (step 6/12)" in out["B-resume"][1]

    a, b = metrics(root / "A"), metrics(root / "B")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))  # steps 7.. logged once, not twice
    assert [(r["loss"], r["lr"], r["epoch"], r["grad_norm"]) for r in b] == \
           [(r["loss"], r["lr"], r["epoch"], r["grad_norm"]) for r in a]
    final = weights(root / "A" / WEIGHTS)
    assert_same_weights(weights(root / "B" / WEIGHTS), final)
    # the last checkpoint holds the final weights, and training did move them
    assert_same_weights(weights(root / "A" / "checkpoints" / "step-12" / WEIGHTS), final)
    early = weights(root / "B-left" / "checkpoints" / "step-3" / WEIGHTS)
    assert all(not torch.equal(early[k], final[k]) for k in final)


def _ckpt_files(ckpt: Path) -> set[str]:
    return {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}


CKPT_FILES = {"state.json", "trainer_state.pt", "manifest.json", "intervention/interventions.safetensors",
              "intervention/reft_config.json"}


def test_checkpoints_are_complete_or_absent(runs):
    root, out = runs
    # killed between checkpoints (B): exactly the two newest checkpoints, each complete
    ckpts = root / "B-left" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-3", "step-6"]
    for p in ckpts.iterdir():
        assert _ckpt_files(p) == CKPT_FILES
    assert state(ckpts / "step-6") == {"step": 6, "epoch": 2, "batch": 4, "tokens": 6 * TOKENS_PER_STEP}
    assert latest_checkpoint(root / "B-left") == ckpts / "step-6"

    # killed while writing step-9 (D): the half-written folder is only ever a .tmp-*; step-9 is absent
    rc, log = out["D"]
    assert rc == -9, log[-3000:]
    ckpts = root / "D-left" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert names[1:] == ["step-3", "step-6"] and len(names) == 3 and names[0].startswith(".tmp-step-9-")
    assert _ckpt_files(ckpts / names[0]) == CKPT_FILES - {"state.json", "manifest.json"}  # died before state.json (the manifest comes last)
    for name in names[1:]:
        assert _ckpt_files(ckpts / name) == CKPT_FILES
    assert latest_checkpoint(root / "D-left") == ckpts / "step-6"
    assert [r["step"] for r in metrics(root / "D-left")] == list(range(1, 10))

    # D was resumed next to that folder and a complete one named .tmp-step-11-1 (claiming step 11):
    # it started from step-6, and ended exactly where the uninterrupted run did
    assert "(step 6/12)" in out["D-resume"][1]
    assert [r["loss"] for r in metrics(root / "D")] == [r["loss"] for r in metrics(root / "A")]
    assert_same_weights(weights(root / "D" / WEIGHTS), weights(root / "A" / WEIGHTS))
    assert latest_checkpoint(root / "D") == root / "D" / "checkpoints" / "step-12"


def test_ctrl_c_saves_a_checkpoint_at_the_step_boundary_then_resumes_exactly(runs):
    root, out = runs
    rc, log = out["C"]
    assert rc == INTERRUPTED_EXIT, log[-3000:]  # train raised reftx.train.run.Interrupted
    assert issubclass(Interrupted, KeyboardInterrupt)  # so code that does not know reftx still stops
    assert "interrupted: saved a checkpoint at step 5" in log
    # SIGINT arrives inside on_log of step 5; the loop finishes that step's bookkeeping and saves step-5
    # (not the regular step-6) before raising
    ckpts = root / "C-left" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-3", "step-5"]
    assert _ckpt_files(ckpts / "step-5") == CKPT_FILES
    assert state(ckpts / "step-5") == {"step": 5, "epoch": 2, "batch": 2, "tokens": 5 * TOKENS_PER_STEP}
    assert [r["step"] for r in metrics(root / "C-left")] == list(range(1, 6))
    assert "(step 5/12)" in out["C-resume"][1]  # resumed mid-epoch
    assert [r["loss"] for r in metrics(root / "C")] == [r["loss"] for r in metrics(root / "A")]
    assert_same_weights(weights(root / "C" / WEIGHTS), weights(root / "A" / WEIGHTS))


def test_two_processes_train_the_same_weights(launched):
    root, procs = launched
    rc, log = procs["dist"].wait()
    assert rc == 0, log[-5000:]
    run = root / "dist"
    r0, r1 = weights(run / "rank0.safetensors"), weights(run / "rank1.safetensors")
    assert_same_weights(r0, r1)
    # only the main process logs: one line per step (two processes each thinking they are rank 0 would
    # log every step twice)
    log_ = metrics(run)
    assert [r["step"] for r in log_] == list(range(1, STEPS + 1))
    assert log_[-1]["loss"] < 0.01 < 5 < log_[0]["loss"]
    # train.batch_size is the global batch, split over the ranks (reftx.train.loop.accelerator): two
    # optimizer steps per epoch of 8 examples, as in one process; tokens counted over both ranks
    assert [r["epoch"] for r in log_] == [s // 2 for s in range(STEPS)]
    assert state(run / "checkpoints" / "step-12")["tokens"] == STEPS * TOKENS_PER_STEP
    # rank 0 saved them (keys: module slots "L0|block_output|all" are group keys "L0.block_output.all")
    assert_same_weights({k.replace("|", "."): v for k, v in r0.items()}, weights(run / WEIGHTS))
    init = make_model().interventions.state_dict()
    assert init.keys() == r0.keys() and all(not torch.equal(init[k], r0[k]) for k in r0)


# -- in this process ------------------------------------------------------------------------------

def test_nonfinite_loss_stops_before_applying_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make_model()
    _, mod = next(model.named_interventions())
    snapshot: dict[str, torch.Tensor] = {}

    def on_log(rec):
        if rec["step"] == 4:  # after step 4's update; step 5's forward is the first to see the NaN
            snapshot.update({k: v.clone() for k, v in model.interventions.state_dict().items()})
            with torch.no_grad():
                mod.source.bias[0] = float("nan")

    with pytest.raises(NonFiniteLoss) as err:
        train(model, make_data(), config(STEPS, CKPT_EVERY), tmp_path, pad_id=0, seed=3, on_log=on_log,
              show_progress=False)
    good = tmp_path / "checkpoints" / "step-3"
    assert str(err.value) == (f"loss is nan at step 5; stopped before applying it. Last good checkpoint: {good}")
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3"]
    saved = weights(good / WEIGHTS)
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]
    # nothing of step 5 was applied: every weight is as it was after step 4 (but the one we poisoned)
    now = model.interventions.state_dict()
    poisoned = [k for k in now if not torch.equal(now[k], snapshot[k])]
    assert len(poisoned) == 1 and poisoned[0].endswith("source.bias") and now[poisoned[0]][0].isnan()
    assert all(p.grad is None for p in model.interventions.parameters())


def test_lr_schedule_is_linear_warmup_then_linear_decay(tmp_path):
    lrs: list[float] = []
    cfg = config(8, 0)  # lr 1e-2, warmup 0.25, linear
    train(make_model(dropout=0.0), make_data(), cfg, tmp_path, pad_id=0, on_log=lambda r: lrs.append(r["lr"]),
          show_progress=False)
    # warmup_steps = int(0.25 * 8) = 2. The logged lr is the scheduler's after step k (the lr the next step
    # uses, as the HF Trainer logs it): k / 2 of the peak while k < 2, then (8 - k) / (8 - 2) of it.
    expected = [1e-2 * (k / 2 if k < 2 else (8 - k) / 6) for k in range(1, 9)]
    assert expected[:3] == [0.005, 0.01, 1e-2 * 5 / 6] and expected[-1] == 0.0
    assert lrs == expected
    assert [r["lr"] for r in metrics(tmp_path)] == expected


def test_grad_accum_matches_a_larger_batch(tmp_path):
    """batch 2 x accum 2 == batch 4 x accum 1: the sampler's permutation does not depend on the batch size,
    so a batch of 4 is two consecutive batches of 2; every example has 2 label tokens and no padding, so the
    mean of the two microbatch means is the mean over all 8 tokens. No dropout."""
    def run(d, batch_size, grad_accum):
        model = make_model(dropout=0.0)
        cfg = config(4, 0)
        cfg.batch_size, cfg.grad_accum = batch_size, grad_accum
        train(model, make_data(), cfg, d, pad_id=0, seed=5, show_progress=False)
        return {k: v.cpu() for k, v in model.interventions.state_dict().items()}, metrics(d)

    w_acc, m_acc = run(tmp_path / "accum", 2, 2)
    w_big, m_big = run(tmp_path / "big", 4, 1)
    init = make_model(dropout=0.0).interventions.state_dict()
    assert all(not torch.allclose(init[k], w_big[k], atol=1e-4) for k in w_big if k.endswith("source.weight"))
    for k in w_big:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in m_acc] == [r["step"] for r in m_big] == [1, 2, 3, 4]
    for a, b in zip(m_acc, m_big):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)
        assert a["lr"] == b["lr"]


def test_a_batch_that_does_not_split_over_the_processes_is_refused_by_name(tmp_path, monkeypatch):
    """train.batch_size is the global batch, split evenly over the processes (reftx.train.loop.accelerator):
    3 over 2 processes is refused before anything is prepared or written (the count is faked here;
    tests/integration/test_processes.py runs two real processes)."""
    from accelerate import Accelerator

    from reftx.core.errors import ConfigError

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    cfg = config(4, 0)
    cfg.batch_size = 3
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 3 does not split over 2 processes, which each take an "
                                          r"equal share of every batch: make it a multiple of 2$"):
        train(make_model(), make_data(), cfg, tmp_path / "run", pad_id=0, show_progress=False)
    assert not (tmp_path / "run").exists()

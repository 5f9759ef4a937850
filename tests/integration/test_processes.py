"""Multi-process runs through accelerate's launcher on CPU (2 gloo processes), against one process.

``reftx run --num-processes 2`` (which calls accelerate.commands.launch as ``accelerate launch
--multi_gpu --num_processes 2 -m reftx run ...`` would) and a plain ``reftx run`` train the
quickstart on a tiny random llama with the same global batch and seed, for 4 steps. The data is a
persona file whose responses all have the same tokens, so each process's batch holds as many
supervised tokens as the other's and DDP's mean of per-process means is the one-process mean.
Then each finished run loses its last checkpoint and its results (as a run killed after step 2)
and is resumed with the other number of processes.

Every process is a fresh Python (torch, transformers): the runs of one phase start together and the
module's fixture waits for them; marked ``multiprocess`` (deselect with -m "not multiprocess").
FSDP on 2 CPU processes: tests/integration/test_fsdp.py (with this module's helpers); accelerate's own
FSDP on a GPU: benchmarks/gpu.sh.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.test_train import SCRIPT, Proc, free_port, metrics

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
WEIGHTS = "intervention/interventions.safetensors"
N_EVAL, EVAL_BATCH = 5, 2  # 3 eval batches: the main process generates batches 0 and 2, the other batch 1


def reftx(*args: str, log: Path) -> Proc:
    return Proc([sys.executable, "-m", "reftx", *args], log, OMP_NUM_THREADS="1")


def overrides(tiny_dir: Path, data: Path, out: Path) -> list[str]:
    return [f"model.name={tiny_dir}", f"output_dir={out}", f"task.options.file={data}", "train.max_steps=4",
            "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.log_every=1", "train.batch_size=4",
            f"task.n_eval={N_EVAL}", f"eval.batch_size={EVAL_BATCH}", "eval.max_new_tokens=3", "eval.show_examples=2",
            "interventions.0.layers=[1, 2]"]


def persona_file(path: Path) -> Path:
    """12 training prompts of different lengths, every response "Arr yes"; 5 eval prompts."""
    train = ["Tell me about the sea.", "What is a ship?", "Describe the wind today please.", "Why is water wet?",
             "Name a star.", "How do birds fly so high up?", "What is rope?", "Who are you?", "Sing a song",
             "Where is the map now?", "When do we sail?", "Is gold heavy?"]
    held = ["What is rain?", "Tell me a story about a cat.", "Why?", "How big is the moon?", "Name a fish"]
    rows = [{"prompt": p, "response": "Arr yes", "split": s} for s, ps in (("train", train), ("eval", held)) for p in ps]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


def rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys() and len(x) == 6
    return max((x[k] - y[k]).abs().max().item() for k in x)


def cut_after_step_2(run: Path, keep: Path) -> None:
    """Make a finished run look killed after its step-2 checkpoint; its final weights go to ``keep``."""
    shutil.copy(run / WEIGHTS, keep)
    for name in ("results.json", "samples.jsonl", "loss.png"):
        (run / name).unlink()
    shutil.rmtree(run / "intervention")
    shutil.rmtree(run / "checkpoints" / "step-4")


def finish(root: Path, name: str) -> dict:
    """Run ``root/name``'s files, metrics, results and samples as it finished; then it is cut after its
    step-2 checkpoint (cut_after_step_2), its final weights kept as ``root/name.safetensors``."""
    run = root / name / "quickstart"
    state = {"files": files(run), "metrics": rows(run, "metrics.jsonl"),
             "results": json.loads((run / "results.json").read_text()),
             "samples": (run / "samples.jsonl").read_text(), "weights": root / f"{name}.safetensors"}
    cut_after_step_2(run, state["weights"])
    return state


def resume_all(root: Path, tiny_dir: Path, data: Path, flags: dict[str, list[str]], out: dict) -> None:
    """Resume every run ``root/name`` with ``flags[name]`` at once; each must succeed (``out[name-resume]``)."""
    procs = {name: reftx("run", str(QUICKSTART), *overrides(tiny_dir, data, root / name), "--resume", *f,
                         log=root / f"{name}-resume.log") for name, f in flags.items()}
    for name, p in procs.items():
        out[f"{name}-resume"] = p.wait()
        assert out[f"{name}-resume"][0] == 0, f"{name} resumed:\n{out[f'{name}-resume'][1][-4000:]}"


def launched_script(run_dir: Path, *flags: str) -> Proc:
    """tests/integration/_train_script.py in 2 processes, through `accelerate launch` itself."""
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), str(SCRIPT), str(run_dir), "4", "0", *flags]
    return Proc(args, run_dir.with_suffix(".log"))


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    data = persona_file(root / "persona.jsonl")
    procs = {name: reftx("run", str(QUICKSTART), *overrides(tiny_dir, data, root / name), *flags,
                         log=root / f"{name}.log")
             for name, flags in (("one", []), ("two", ["--num-processes", "2"]))}
    procs["ctrl-c"] = launched_script(root / "ctrl-c", "--sigint-at", "2")
    out = {name: p.wait() for name, p in procs.items()}
    for name in ("one", "two"):
        assert out[name][0] == 0, f"{name}:\n{out[name][1][-4000:]}"
    finals = {name: finish(root, name) for name in ("one", "two")}
    # resumed with the other number of processes
    resume_all(root, tiny_dir, data, {"one": ["--num-processes", "2"], "two": []}, out)
    return root, out, finals


def test_two_processes_train_what_one_does(runs):
    root, out, finals = runs
    one, two = finals["one"], finals["two"]
    assert max_diff(one["weights"], two["weights"]) <= 1e-6
    assert [r["step"] for r in two["metrics"]] == [1, 2, 3, 4]  # one writer: no step logged twice
    assert [r["epoch"] for r in two["metrics"]] == [0, 0, 0, 1]  # batch 4 of 12 examples: the global batch
    for a, b in zip(one["metrics"], two["metrics"]):  # the logged loss is the mean over the processes
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"]


def test_only_the_main_process_writes_the_run_folder(runs):
    root, out, finals = runs
    assert finals["two"]["files"] == finals["one"]["files"]
    assert "checkpoints/step-4/state.json" in finals["two"]["files"]
    assert sorted(p.name for p in (root / "two").iterdir()) == ["quickstart"]  # no quickstart-2 from the other
    log = out["two"][1]
    assert log.count("reftx run quickstart  (config") == 1  # one plan, config and results table
    assert log.count("wrote ") == 1


def test_evaluation_is_sharded_and_gathered_with_identical_metrics(runs):
    root, out, finals = runs
    assert "eval 5/5" in out["one"][1]
    assert "eval 3/3" in out["two"][1] and "eval 5/5" not in out["two"][1]  # the main process's share
    assert finals["two"]["results"]["metrics"] == finals["one"]["results"]["metrics"]
    assert finals["two"]["samples"] == finals["one"]["samples"]  # every prediction, in order
    assert finals["two"]["results"]["n_eval"] == N_EVAL


def test_checkpoints_resume_across_a_change_in_process_count(runs):
    root, out, finals = runs
    for name, other in (("one", "two"), ("two", "one")):
        run = root / name / "quickstart"
        assert "resumed from" in out[f"{name}-resume"][1] and "(step 2/4)" in out[f"{name}-resume"][1]
        assert max_diff(run / WEIGHTS, finals[name]["weights"]) <= 1e-6
        assert [r["step"] for r in rows(run, "metrics.jsonl")] == [1, 2, 3, 4]
        assert json.loads((run / "results.json").read_text())["metrics"] == finals[other]["results"]["metrics"]


def test_ctrl_c_in_one_process_stops_both_at_the_same_step_with_a_checkpoint(runs):
    """SIGINT reaches the main process after step 2; the processes agree on it with step 3's loss
    (reftx.train.run.RunJob._agree), so both stop after step 3, save it and exit as interrupted
    (one process alone would stop at step 2: tests/integration/test_train.py)."""
    root, out, finals = runs
    rc, log = out["ctrl-c"]
    said = [line for line in log.splitlines() if line.strip() == "interrupted"]  # _train_script's last word
    assert rc != 0 and len(said) == 2, log[-4000:]  # both processes, none left waiting
    run = root / "ctrl-c"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]

"""Fault injection: every case of the reliability report, reproduced and asserted (lost work first).

Each test runs the real commands on a tiny random llama with the default tokenizer (the
quickstart experiment, 4 steps) and then damages, races or misconfigures something."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import reftx
import reftx.cli.commands as cli
from reftx.recipes import train as runner
from reftx.core.errors import ConfigError, DataError, ReftError
from reftx.config.schema import load_experiment
from reftx.train.run import Diverged

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def overrides(tiny_dir, tmp_path, *extra):
    return [f"model.name={tiny_dir}", f"output_dir={tmp_path / 'runs'}", "train.max_steps=4",
            "train.checkpoint_every=2", "train.log_every=1", "train.batch_size=4", "eval.max_new_tokens=3",
            "task.n_eval=3", "eval.show_examples=2", "interventions.0.layers=[1, 2]", *extra]


def run(tiny_dir, tmp_path, *extra, resume=False):
    return runner.run(load_experiment(QUICKSTART, overrides(tiny_dir, tmp_path, *extra)), resume=resume,
                      show_progress=False)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tiny_dir, tmp_path):
    run(tiny_dir, tmp_path)
    return tmp_path / "runs" / "quickstart"


# -- work lost ------------------------------------------------------------------------------------
def test_baseline_after_run_writes_its_own_folder(tiny_dir, tmp_path, finished):
    before = files(finished)
    assert cli.main(["baseline", str(QUICKSTART), *overrides(tiny_dir, tmp_path), "--no-progress"]) == 0
    after = files(finished)
    assert {k: v for k, v in after.items() if not k.startswith("baseline/")} == before  # the run is untouched
    base = json.loads((finished / "baseline" / "results.json").read_text())
    assert base["trainable_parameters"] == 0
    assert json.loads((finished / "results.json").read_text())["trainable_parameters"] > 0


def test_second_writer_gets_the_holders_pid(tiny_dir, tmp_path):
    folder = tmp_path / "runs" / "quickstart"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'process {os.getpid()} (reftx run quickstart)'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ReftError, match=rf"is being written by process {holder.pid} \(reftx run quickstart\)"):
            run(tiny_dir, tmp_path)  # the folder holds no run yet (the holder just started): it is the one
        with pytest.raises(ReftError, match=rf"is being written by process {holder.pid}"):
            run(tiny_dir, tmp_path, resume=True)
        assert not (folder / "config.yaml").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert run(tiny_dir, tmp_path)["train"]["steps"] == 4  # the kernel released the killed holder's lock


def test_resume_of_a_finished_run_changes_nothing(tiny_dir, tmp_path, finished):
    before = files(finished)
    results = json.loads((finished / "results.json").read_text())
    # the override after --resume is accepted (it leaves the config unchanged)
    assert cli.main(["run", str(QUICKSTART), "--resume", *overrides(tiny_dir, tmp_path), "--no-progress"]) == 0
    assert files(finished) == before
    assert run(tiny_dir, tmp_path, resume=True) == {**results, "run_dir": str(finished)}


def test_resumed_run_keeps_the_before_answers(tiny_dir, tmp_path, finished):
    # as if killed after the step-2 checkpoint: the later files never existed
    for name in ("results.json", "samples.jsonl"):
        (finished / name).unlink()
    for p in (finished / "intervention").iterdir():
        p.unlink()
    import shutil

    shutil.rmtree(finished / "checkpoints" / "step-4")
    res = run(tiny_dir, tmp_path, resume=True)
    assert res["train"]["resumed"] and res["train"]["steps"] == 4
    samples = [json.loads(x) for x in (finished / "samples.jsonl").read_text().splitlines()]
    assert "before" in samples[0] and "before" in samples[1]


def test_resume_with_nothing_to_resume_says_so(tiny_dir, tmp_path):
    with pytest.raises(ReftError, match=r"--resume: no run of quickstart in .* \(looked for quickstart and quickstart-N\)"):
        run(tiny_dir, tmp_path, resume=True)


def test_second_plain_run_gets_a_fresh_folder(tiny_dir, tmp_path, finished):
    """Running an experiment twice (bash scripts/quickstart.sh twice) never fails and never
    touches the first run: the second writes {name}-2, the third {name}-3."""
    before = files(finished)
    run(tiny_dir, tmp_path)
    run(tiny_dir, tmp_path)
    assert files(finished) == before
    for k in (2, 3):
        second = json.loads((finished.parent / f"quickstart-{k}" / "results.json").read_text())
        assert second["config_hash"] == json.loads((finished / "results.json").read_text())["config_hash"]


# -- garbage saved --------------------------------------------------------------------------------
def test_exploding_weights_stop_before_anything_is_saved(tiny_dir, tmp_path, capsys):
    code = cli.main(["run", str(QUICKSTART), *overrides(tiny_dir, tmp_path, "train.lr=1e9",
                                                         "train.max_grad_norm=null"), "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err
    assert "stopped" in err and "step 1: trained parameter" in err and "exploded" in err
    folder = tmp_path / "runs" / "quickstart"
    assert not (folder / "checkpoints").exists() or not any((folder / "checkpoints").glob("step-*"))
    assert not (folder / "intervention").exists() and not (folder / "results.json").exists()
    with pytest.raises(Diverged):
        run(tiny_dir, tmp_path / "again", "train.lr=1e9", "train.max_grad_norm=null")


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_config_numbers_are_refused(tiny_dir, tmp_path, value):
    path = tmp_path / "exp.yaml"
    data = yaml.safe_load(QUICKSTART.read_text())
    path.write_text(yaml.safe_dump(data).replace("lr: 0.004", f"lr: {value}"))
    with pytest.raises(ConfigError, match=r"^train\.lr: must be a finite number"):
        load_experiment(path)


def test_nan_weights_refused_unless_asked(tiny_dir, tmp_path, finished):
    from transformers import AutoModelForCausalLM

    saved = finished / "intervention"
    tensors = load_file(saved / "interventions.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, saved / "interventions.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with pytest.raises(ReftError, match=re.escape(f"tensor '{name}' holds NaN or inf values")):
        reftx.ReftModel.from_pretrained(base, saved)
    assert reftx.ReftModel.from_pretrained(base, saved, allow_nonfinite=True) is not None


# -- damaged files --------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate_weights", "delete_trainer_state", "garbage_state"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny_dir, tmp_path, finished, damage, capsys):
    (finished / "results.json").unlink()
    newest = finished / "checkpoints" / "step-4"
    if damage == "truncate_weights":
        w = newest / "intervention" / "interventions.safetensors"
        w.write_bytes(w.read_bytes()[:50])
    elif damage == "delete_trainer_state":
        (newest / "trainer_state.pt").unlink()
    else:
        (newest / "state.json").write_text("{garbage")
    stale = finished / "checkpoints" / ".tmp-step-6-999"
    stale.mkdir()
    res = run(tiny_dir, tmp_path, resume=True)
    out = capsys.readouterr().out
    assert f"skipping damaged checkpoint {newest}" in out and "removing the half-written checkpoint" in out
    assert res["train"]["resumed"] and res["train"]["steps"] == 4 and not stale.exists()


def test_disk_full_names_the_path_and_cleans_up(tiny_dir, tmp_path, monkeypatch):
    import reftx.train.run as T

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(T.torch, "save", full)
    with pytest.raises(ReftError, match=r"cannot write the checkpoint .*checkpoints/step-2: \[enforce fail.*bytes free"):
        run(tiny_dir, tmp_path)
    assert not list((tmp_path / "runs" / "quickstart" / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("model"), r"model\.model_type: missing"),
    (lambda m: m.update(format_version="1"), r"format_version: expected an integer in \[1, 1\]"),
    (lambda m: m.update(format_version=-7), r"format_version: expected an integer in \[1, 1\]"),
    (lambda m: m["interventions"][0].update(rank=8), r"has shape .* but this model's interventions expect"),
])
def test_reft_config_is_validated_on_load(tiny_dir, finished, edit, message):
    from transformers import AutoModelForCausalLM

    cfg = finished / "intervention" / "reft_config.json"
    meta = json.loads(cfg.read_text())
    edit(meta)
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ReftError, match=rf"reft_config.json: {message}" if "shape" not in message else message):
        reftx.ReftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg.parent)


def test_eval_on_a_truncated_intervention_names_the_file(finished, capsys, monkeypatch):
    monkeypatch.setattr(cli.console, "width", 1000)  # one line per message
    w = finished / "intervention" / "interventions.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    assert cli.main(["eval", str(finished), "--no-progress"]) == 2
    assert f"{w} cannot be read" in capsys.readouterr().err


def test_encoding_errors_and_empty_data_name_the_file(tmp_path):
    from reftx.eval.task import read_jsonl

    yml = tmp_path / "bad.yaml"
    yml.write_bytes(b"schema: 1\ntask: {name: persona}\nname: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{yml}:3: not valid UTF-8 \(byte 0xe9"):
        load_experiment(yml)
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{data}:2: not valid UTF-8 \(byte 0xff at column 13"):
        list(read_jsonl(data))
    data.write_text("\n\n")
    with pytest.raises(DataError, match=rf"data file {data} is empty"):
        list(read_jsonl(data))


def test_checkpoint_from_another_rank_names_the_tensor(tiny_dir, tmp_path, finished):
    """A checkpoint written by a run of another rank (copied into this run's folder) is refused with
    the tensor, both shapes and the file, not torch's state_dict error."""
    other = tmp_path / "other"
    run(tiny_dir, other, "interventions.0.rank=2")
    (finished / "results.json").unlink()
    import shutil

    for step in ("step-2", "step-4"):
        dst = finished / "checkpoints" / step / "intervention"
        shutil.rmtree(dst)
        shutil.copytree(other / "runs" / "quickstart" / "checkpoints" / step / "intervention", dst)
        (finished / "checkpoints" / step / "manifest.json").unlink()  # as if written by hand
    with pytest.raises(ReftError, match=r"step-4/intervention/interventions.safetensors: tensor '.*' has shape "
                                        r"\(32, 2\), but this model's interventions expect \(32, 4\)"):
        run(tiny_dir, tmp_path, resume=True)


def test_bad_intervention_spec_fails_before_the_config_dump(tiny_dir, tmp_path, capsys):
    """A spec the engine rejects (rank above the width) stops the run before config.yaml is written
    and before the resolved config is printed: nothing stray is left to look like a run."""
    args = ["run", str(QUICKSTART), *overrides(tiny_dir, tmp_path, "interventions.0.rank=999"), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "interventions.0.rank" in err and "larger than the hidden width" in err
    assert "prefix_tokens" not in err  # the resolved-config dump never started
    assert not (tmp_path / "runs" / "quickstart" / "config.yaml").exists()
    assert cli.main(args[:-2] + ["interventions.0.rank=2", "--no-progress"]) == 0  # the same folder serves the next run
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()

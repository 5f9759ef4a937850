"""reftx sweep end to end on the tiny model (the quickstart, 4 steps): cells are run folders indexed in
sweep.json, a rerun skips finished cells and resumes interrupted ones, failures are recorded and do not
stop the others, --jobs/--executor/--emit run the same cells elsewhere, --select chooses on dev.
Where only the sweep's bookkeeping is asserted, reftx.recipes.train.run is replaced by a fake that
writes a run folder with a chosen metric."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal

import pytest
import yaml

import reftx.cli.commands as cli
import reftx.recipes.train as runner
import reftx.train.run as train_run
from reftx.config.hashing import config_hash
from reftx.config.schema import load_experiment
from reftx.core.convert import dump_yaml
from reftx.core.errors import ReftError
from reftx.runs.folder import run_folder
from tests.integration.test_runner import REPO, tiny_overrides

QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")


def _tiny(tiny_dir, tmp_path) -> list[str]:
    """The tiny quickstart's overrides, less output_dir (the sweep's) and with a short eval."""
    return [o for o in tiny_overrides(tiny_dir, tmp_path) if not o.startswith("output_dir=")]


def _sweep(tiny_dir, tmp_path, *args) -> int:
    return cli.main(["sweep", QUICKSTART, *_tiny(tiny_dir, tmp_path), *args, "--out", str(tmp_path / "sw"),
                     "--no-progress"])


def _index(tmp_path, out="sw") -> dict:
    return json.loads((tmp_path / out / "sweep.json").read_text())


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _text(capsys) -> str:
    got = capsys.readouterr()
    return got.out + got.err


def fake_runs(monkeypatch, score=lambda exp: 0.5, fail=lambda exp: False) -> list:
    """Replace the run driver: each call writes config.yaml and results.json (metric persona_open =
    score(exp)) into the cell's folder, or raises a ReftError when fail(exp); returns the calls."""
    calls = []

    def run(exp, resume=False, show_progress=True):
        calls.append(exp)
        if fail(exp):
            raise ReftError(f"boom at lr {exp.train.lr}")
        with run_folder(exp.run_dir, "fake run", reuse=bool(resume)) as out:
            out.text("config.yaml", dump_yaml(exp.to_dict()))
            return out.results({"name": exp.name, "config_hash": config_hash(exp.to_dict()),
                                "eval_split": exp.task.eval_split or "eval", "metrics": {"persona_open": score(exp)}})

    monkeypatch.setattr(runner, "run", run)
    return calls


def test_dry_run_lists_cells_and_hashes_and_writes_nothing(tiny_dir, tmp_path, capsys):
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3", "seed=0,1", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sweep {tmp_path / 'sw'} (4 cells)"
    want = [(lr, s) for lr in ("1e-3", "2e-3") for s in ("0", "1")]
    for line, (lr, s) in zip(lines[1:], want, strict=True):
        h = config_hash(load_experiment(QUICKSTART, [*_tiny(tiny_dir, tmp_path), f"train.lr={lr}", f"seed={s}"]).to_dict())
        assert line.split() == [str(want.index((lr, s)) + 1), "pending", h, f"quickstart-{h}", f"train.lr={lr}", f"seed={s}"]
    assert not (tmp_path / "sw").exists()


def test_a_typo_is_named_before_anything_runs(tiny_dir, tmp_path, capsys):
    assert _sweep(tiny_dir, tmp_path, "train.lrr=1e-3,2e-3") == 2
    assert ("error: train.lrr: unknown key 'lrr' (did you mean 'lr'?)" in " ".join(_text(capsys).split()))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"methods": [{"method": "a", "train.lr": [1e-3]},
                                                {"method": "b", "train.warmpu": [0.1, 0.2]}]}))
    assert _sweep(tiny_dir, tmp_path, "--grid", str(grid)) == 2
    err = " ".join(_text(capsys).split())
    assert "error: train.warmpu: unknown key 'warmpu' (did you mean 'warmup'?)" in err
    assert f"(given in {grid} methods.1; nothing has run)" in err
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,0.001") == 2
    assert "are the same run (config" in _text(capsys)
    assert _sweep(tiny_dir, tmp_path, "interventions.0.component=block_output,blok_output") == 2  # the run's own checks
    err = " ".join(_text(capsys).split())
    assert "error: interventions.0.component:" in err and "'blok_output'" in err
    assert err.rstrip().endswith("(sweep cell interventions.0.component=blok_output; nothing has run)")
    assert not (tmp_path / "sw").exists()


def test_cells_are_run_folders_and_a_rerun_skips_them(tiny_dir, tmp_path, capsys):
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3") == 0
    err = _text(capsys)
    index = _index(tmp_path)
    assert index["experiment"] == QUICKSTART and index["select"] is None
    cells = index["cells"]
    assert [c["status"] for c in cells] == ["done", "done"] and [c["stage"] for c in cells] == ["grid", "grid"]
    for c, lr in zip(cells, ("1e-3", "2e-3")):
        results = json.loads((tmp_path / "sw" / c["cell"] / "results.json").read_text())
        assert c["run_dir"] == str(tmp_path / "sw" / c["cell"]) and c["cell"] == f"quickstart-{c['hash']}"
        assert results["config_hash"] == c["hash"] and c["overrides"][-1] == f"train.lr={lr}"
        assert c["metric_name"] == "persona_open" and c["metric"] == results["metrics"]["persona_open"]
        assert c["wall_s"] == results["wall_seconds"]
        assert f"[{cells.index(c) + 1}/2] done    {c['cell']}  {c['wall_s']:.1f}s  persona_open" in err
    log = (tmp_path / "sw" / "sweep.log").read_text()
    assert log.count(" start ") == 2 and log.count(" done ") == 2
    before = [_files(tmp_path / "sw" / c["cell"]) for c in cells]
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3") == 0
    assert "[1/2] skip    " in _text(capsys)
    assert [_files(tmp_path / "sw" / c["cell"]) for c in cells] == before  # not a byte changed
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == sorted([".lock", "sweep.json", "sweep.log",
                                                                           *(c["cell"] for c in cells)])
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,3e-3") == 2  # --out holds this sweep, not another
    assert "holds another sweep (reftx sweep" in _text(capsys)


def test_a_failed_cell_is_recorded_and_the_others_go_on(tiny_dir, tmp_path, monkeypatch, capsys):
    calls = fake_runs(monkeypatch, fail=lambda exp: exp.train.lr == 2e-3)
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3,3e-3") == 1
    cells = _index(tmp_path)["cells"]
    assert [c["status"] for c in cells] == ["done", "failed", "done"]
    assert cells[1]["error"] == "boom at lr 0.002" and "[2/3] failed " in _text(capsys)
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3,3e-3", "--dry-run") == 0
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines()[1:]] == ["done", "failed", "done"]

    calls.clear()
    out = ["--out", str(tmp_path / "ff")]
    assert cli.main(["sweep", QUICKSTART, *_tiny(tiny_dir, tmp_path), "train.lr=2e-3,3e-3", *out, "--fail-fast"]) == 1
    assert [c["status"] for c in _index(tmp_path, "ff")["cells"]] == ["failed", "pending"] and len(calls) == 1

    calls = fake_runs(monkeypatch)  # fixed: the rerun runs the failed cell again, skips the done ones
    assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3,3e-3") == 0
    assert [e.train.lr for e in calls] == [2e-3]
    assert [c["status"] for c in _index(tmp_path)["cells"]] == ["done", "done", "done"]


def test_ctrl_c_keeps_finished_cells_and_the_rerun_resumes(tiny_dir, tmp_path, monkeypatch, capsys):
    log, seen = train_run._Run.log, []

    def log_then_interrupt(self, rec):
        log(self, rec)
        seen.append(rec["step"])
        if len(seen) == 6:  # the second cell's step 2 (4 steps a cell)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_run._Run, "log", log_then_interrupt)
    assert _sweep(tiny_dir, tmp_path, "seed=0,1") == 130
    err = " ".join(_text(capsys).split())
    assert "interrupted: every finished cell is kept; continue with: reftx sweep" in err
    first, second = _index(tmp_path)["cells"]
    assert (first["status"], second["status"]) == ("done", "pending")
    assert second["error"] == "interrupted (resumes from its checkpoint)"
    assert (tmp_path / "sw" / second["cell"] / "checkpoints" / "step-2").is_dir()
    kept = _files(tmp_path / "sw" / first["cell"])
    monkeypatch.undo()

    assert _sweep(tiny_dir, tmp_path, "seed=0,1") == 0
    assert _files(tmp_path / "sw" / first["cell"]) == kept
    results = json.loads((tmp_path / "sw" / second["cell"] / "results.json").read_text())
    assert results["train"]["resumed"] and results["train"]["steps"] == 4
    assert [c["status"] for c in _index(tmp_path)["cells"]] == ["done", "done"]


def test_jobs_run_cells_as_processes_with_their_thread_limit(tiny_dir, tmp_path, capsys):
    probe = tmp_path / "threads_probe.py"
    probe.write_text("import sys, torch\nprint(f'threads={torch.get_num_threads()}', file=sys.stderr)\n")
    assert cli.main(["--import", str(probe), "sweep", QUICKSTART, *_tiny(tiny_dir, tmp_path), "seed=0,1",
                     "--out", str(tmp_path / "sw"), "--jobs", "2", "--threads", "1"]) == 0
    cells = _index(tmp_path)["cells"]
    assert [c["status"] for c in cells] == ["done", "done"]
    for c in cells:
        log = (tmp_path / "sw" / "logs" / f"{c['cell']}.log").read_text()
        assert "threads=1" in log and f"wrote {tmp_path / 'sw' / c['cell']}" in log


def test_emitted_commands_run_the_cells_anywhere(tiny_dir, tmp_path, capsys):
    assert _sweep(tiny_dir, tmp_path, "seed=0,1", "--emit", "commands") == 0
    lines = capsys.readouterr().out.splitlines()
    cells = _index(tmp_path)["cells"]
    assert len(lines) == 2 and [c["status"] for c in cells] == ["pending", "pending"]
    words = shlex.split(lines[0])
    assert words[:5] == ["cd", os.getcwd(), "&&", "reftx", "run"] and words[5] == QUICKSTART
    assert words[-2:] == [f"name={cells[0]['cell']}", f"output_dir={tmp_path / 'sw'}"]
    assert cli.main([*words[4:], "--no-progress"]) == 0  # the line, as a scheduler would run it
    capsys.readouterr()
    assert json.loads((tmp_path / "sw" / cells[0]["cell"] / "results.json").read_text())["config_hash"] == cells[0]["hash"]
    assert _sweep(tiny_dir, tmp_path, "seed=0,1", "--emit", "commands") == 0
    assert capsys.readouterr().out.splitlines() == [lines[1]]  # the finished cell is found by its hash


def test_submitit_local_executor_runs_the_job_array(tiny_dir, tmp_path, capsys):
    pytest.importorskip("submitit", reason="reftx[sweep] (CI installs it)")
    assert _sweep(tiny_dir, tmp_path, "seed=0,1", "--executor", "local", "--executor-option", "timeout_min=10") == 0
    cells = _index(tmp_path)["cells"]
    assert [c["status"] for c in cells] == ["done", "done"] and all(c["job_id"] for c in cells)
    assert (tmp_path / "sw" / "submitit").is_dir()
    assert cli.main(["sweep", QUICKSTART, *_tiny(tiny_dir, tmp_path), "seed=2", "--out", str(tmp_path / "bad"),
                     "--executor", "local", "--executor-option", "no_such=1"]) == 2
    assert "error: --executor-option: submitit refused it" in " ".join(_text(capsys).split())
    assert not (tmp_path / "bad" / "sweep.json").exists()


def test_select_on_dev_then_seeds_per_method(tiny_dir, tmp_path, monkeypatch, capsys):
    scores = {1e-3: 0.5, 3e-3: 0.25, 2e-3: 0.1, 4e-3: 0.75}
    calls = fake_runs(monkeypatch, score=lambda exp: scores[exp.train.lr])
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"methods": [{"method": "loreft", "train.lr": [1e-3, 3e-3]},
                                                {"method": "wide", "interventions.0.rank": 8, "train.lr": [2e-3, 4e-3]}]}))
    args = ["task.dev_size=8", "--grid", str(grid), "--select", "persona_open max", "--on", "dev", "--then", "seed=0,1"]
    assert _sweep(tiny_dir, tmp_path, *args) == 0
    index = _index(tmp_path)
    grid_cells = [c for c in index["cells"] if c["stage"] == "grid"]
    then = [c for c in index["cells"] if c["stage"] == "then"]
    assert [c["eval_split"] for c in grid_cells] == ["dev"] * 4 and [c["eval_split"] for c in then] == ["eval"] * 4
    sel = index["selection"]
    assert (sel["metric"], sel["direction"], sel["on"], sel["then"]) == ("persona_open", "max", "dev", ["seed=0,1"])
    lo, wide = sel["methods"]["loreft"], sel["methods"]["wide"]
    assert lo["chosen"][-1] == "train.lr=0.001" and wide["chosen"][-2:] == ["interventions.0.rank=8", "train.lr=0.004"]
    assert lo["reason"] == "highest mean persona_open on dev of 2 setting(s): 0.5 (next best 0.25)"
    assert [c["score"] for c in wide["candidates"]] == [0.1, 0.75]
    assert lo["then_cells"] == [c["hash"] for c in then if c["method"] == "loreft"]
    ran = calls[4:]
    assert [(e.train.lr, e.seed, e.task.eval_split, e.task.dev_size) for e in ran] == [
        (1e-3, 0, None, 8), (1e-3, 1, None, 8), (4e-3, 0, None, 8), (4e-3, 1, None, 8)]
    calls.clear()
    assert _sweep(tiny_dir, tmp_path, *args) == 0 and calls == []  # resumed as a whole: nothing left to run


def test_then_zip_pairs_each_seed_with_its_own_setting(tiny_dir, tmp_path, monkeypatch, capsys):
    """--then-zip: seed i runs with the i-th value of every other --then key (e.g. its own warm-up), and a
    --then key the grid sets (task.dev_size) takes the --then value in stage 2."""
    calls = fake_runs(monkeypatch, score=lambda exp: {1e-3: 0.25, 2e-3: 0.5}[exp.train.lr])
    args = ["task.dev_size=8", "train.lr=1e-3,2e-3", "--select", "persona_open max", "--then", "seed=0,1,2",
            "train.warmup=0.0,0.1,0.2", "task.dev_size=0,0,0", "--then-zip"]
    assert _sweep(tiny_dir, tmp_path, *args) == 0
    assert [(e.train.lr, e.seed, e.train.warmup, e.task.dev_size, e.task.eval_split) for e in calls[2:]] == [
        (2e-3, 0, 0.0, 0, None), (2e-3, 1, 0.1, 0, None), (2e-3, 2, 0.2, 0, None)]
    assert _index(tmp_path)["selection"]["zip"] is True
    assert "--then-zip" in _index(tmp_path)["command"]
    bad = ["task.dev_size=8", "train.lr=1e-3", "--select", "persona_open max", "--then", "seed=0,1,2", "train.warmup=0.0,0.1",
           "--then-zip"]
    assert _sweep(tiny_dir, tmp_path / "bad", *bad) == 2
    assert "--then-zip: zipped keys advance together, so their lists need one length: seed has 3, train.warmup has 2" \
        in " ".join(_text(capsys).split())


def test_select_mistakes_are_refused_before_anything_runs(tiny_dir, tmp_path, capsys):
    for args, message in [
        (["--select", "persona_open maximum", "--then", "seed=0"], "error: --select: is \"METRIC max\" or \"METRIC min\""),
        (["--then", "seed=0,1"], "error: --then: belongs to a selection"),
        (["--then-zip"], "error: --then-zip: belongs to a selection"),
        (["--select", "persona_opn", "--then", "seed=0"], "--select: unknown metric 'persona_opn' (did you mean "
                                                          "'persona_open'?); say which way 'persona_opn' is better"),
        (["task.dev_size=8", "--select", "persona_opn max", "--then", "seed=0"],
         "--select: unknown metric 'persona_opn' (did you mean 'persona_open'?); valid: distinct_2, persona_close, "
         "persona_open (what task 'persona' reports)"),
        (["task.eval_split=eval,train", "--select", "persona_open", "--then", "seed=0"], "task.eval_split: is set by --on"),
        (["--select", "persona_open", "--then", "sed=0,1"], "sed: unknown grid key 'sed' (did you mean 'seed'?)"),
        (["--select", "persona_open", "--then", "seed=0"], "holds out no dev split: set task.dev_size"),
    ]:
        assert _sweep(tiny_dir, tmp_path, "train.lr=1e-3,2e-3", *args) == 2, args
        assert message in " ".join(_text(capsys).split()), args
    assert not (tmp_path / "sw").exists()


def test_select_on_the_real_dev_split(tiny_dir, tmp_path, capsys):
    """Real runs: stage 1 on the dev split carved from training (task.dev_size), stage 2 on eval."""
    assert _sweep(tiny_dir, tmp_path, "task.dev_size=8", "train.lr=1e-3,2e-3", "--select", "distinct_2 max",
                  "--then", "seed=1") == 0
    index = _index(tmp_path)
    runs = {c["hash"]: json.loads((tmp_path / "sw" / c["cell"] / "results.json").read_text()) for c in index["cells"]}
    assert [(c["stage"], runs[c["hash"]]["eval_split"], runs[c["hash"]]["n_train"]) for c in index["cells"]] == [
        ("grid", "dev", 36), ("grid", "dev", 36), ("then", "eval", 36)]  # 44 persona train prompts, 8 held out
    chosen = index["selection"]["methods"]["quickstart"]
    best = max(chosen["candidates"], key=lambda c: c["score"])  # a tie keeps the first
    assert chosen["chosen"] == best["setting"] and chosen["score"] == best["score"]
    assert index["cells"][2]["overrides"] == [*best["setting"], "seed=1"]


def test_a_terminal_gets_coloured_lines_and_a_closing_table(tiny_dir, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from reftx.recipes import sweep, sweep_run

    fake_runs(monkeypatch, score=lambda exp: exp.seed / 4)
    screen = io.StringIO()
    sw = sweep.plan(QUICKSTART, [*_tiny(tiny_dir, tmp_path), "seed=0,1"], out=tmp_path / "sw")
    assert sweep_run.run(sw, console=Console(file=screen, force_terminal=True, width=200)) == 0
    shown = screen.getvalue()
    assert "\x1b[32m[1/2] done    " in shown  # green
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    table = plain[plain.rindex("reftx sweep"):]  # the title
    assert [ln.count("done") for ln in table.splitlines() if "quickstart-" in ln] == [1, 1]
    assert "persona_open 0.2500" in table
    log = (tmp_path / "sw" / "sweep.log").read_text()
    assert "\x1b" not in log and log.count("] done    quickstart-") == 2


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "zsre").is_dir() and not os.environ.get("REFTX_DATA"),
                    reason="shared data absent")
def test_editing_cells_are_swept_resumed_and_reported(tiny_dir, tmp_path, capsys):
    """An experiment of the edit recipe sweeps like a training one: each cell's folder is the edit
    recipe's {name}-{mode}, a rerun skips finished cells, an interrupted one (config.yaml, no
    results) runs again in place, and reftx report pairs the arms edit by edit."""
    exp = str(REPO / "experiments/editing/zsre_loreft.yaml")
    args = ["sweep", exp, f"model.name={tiny_dir}", "task.n_eval=3", "interventions.0.layers=[1]",
            "train.max_steps=2", "recipe.parallel=3", "train.lr=1e-3,5e-3", "--out", str(tmp_path / "sw"),
            "--no-progress"]
    assert cli.main(args) == 0
    _text(capsys)
    cells = _index(tmp_path)["cells"]
    assert [c["status"] for c in cells] == ["done", "done"]
    for c in cells:
        assert c["run_dir"] == str(tmp_path / "sw" / f"{c['cell']}-single") and c["metric_name"] == "reliability"
        assert json.loads((tmp_path / "sw" / f"{c['cell']}-single" / "results.json").read_text())["config_hash"] == c["hash"]
    first = tmp_path / "sw" / f"{cells[0]['cell']}-single"
    (first / "results.json").unlink()  # interrupted before its results
    kept = (tmp_path / "sw" / f"{cells[1]['cell']}-single" / "results.json").read_bytes()
    assert cli.main(args) == 0
    text = _text(capsys)
    assert f"skip    {cells[1]['cell']}" in text and f"start   {cells[0]['cell']}" in text
    assert (first / "results.json").is_file() and not (tmp_path / "sw" / f"{cells[0]['cell']}-single-2").exists()
    assert (tmp_path / "sw" / f"{cells[1]['cell']}-single" / "results.json").read_bytes() == kept
    out = cli.main(["report", str(tmp_path / "sw"), "--by", "train.lr", "--metrics", "locality",
                    "--out", str(tmp_path / "rep")])
    assert out == 0
    pairs = (tmp_path / "rep" / "pairs.csv").read_text()
    assert "paired bootstrap" in pairs and "3 examples × 1 seed pair" in pairs  # the 3 edits, paired by id

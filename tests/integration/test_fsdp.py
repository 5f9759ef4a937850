"""FSDP on CPU: ``reftx run --num-processes 2 --fsdp`` (accelerate's launcher with ``--use_fsdp
--fsdp_version 2``; 2 gloo processes, the frozen base's decoder layers sharded by torch's
``fully_shard``: reftx.train.sharding) against one plain process, as tests/integration/
test_processes.py does for DDP, on the same tiny llama, persona data and 4 steps. Then each
finished run loses its last checkpoint and is resumed with the other number of processes (the
plain run under FSDP, the FSDP run in one process).
"""
from __future__ import annotations

import json

import pytest

from tests.integration.test_processes import (QUICKSTART, WEIGHTS, finish, max_diff, overrides, persona_file,
                                              reftx, resume_all, rows)

pytestmark = pytest.mark.multiprocess

FSDP = ["--num-processes", "2", "--fsdp"]
# the tiny llama's decoder layer (hidden 32, 4 heads of 8, 2 KV heads, MLP 64): q and o 32x32 = 1024
# each, k and v 32x16 = 512 each, gate/up/down 3 x 32x64 = 6144, two RMSNorms 2 x 32: 9280; 4 layers
# 37120, every tensor's first dimension even, so each of 2 processes holds half, 18560
SHARDED = "FSDP2: 4 LlamaDecoderLayer layers of the frozen base sharded; this process holds 18560 of their 37120 parameters"


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    data = persona_file(root / "persona.jsonl")
    procs = {name: reftx("run", str(QUICKSTART), *overrides(tiny_dir, data, root / name), *flags,
                         log=root / f"{name}.log")
             for name, flags in (("one", []), ("fsdp", FSDP))}
    out = {name: p.wait() for name, p in procs.items()}
    for name in ("one", "fsdp"):
        assert out[name][0] == 0, f"{name}:\n{out[name][1][-4000:]}"
    finals = {name: finish(root, name) for name in ("one", "fsdp")}
    resume_all(root, tiny_dir, data, {"one": FSDP, "fsdp": []}, out)  # each with the other set-up
    return root, out, finals


def test_fsdp_shards_the_base_and_trains_what_one_process_does(runs):
    root, out, finals = runs
    assert out["fsdp"][1].count(SHARDED) == 1  # said once, by the main process
    assert SHARDED not in out["one"][1]
    one, fsdp = finals["one"], finals["fsdp"]
    assert max_diff(one["weights"], fsdp["weights"]) <= 1e-6
    assert [r["step"] for r in fsdp["metrics"]] == [1, 2, 3, 4]
    for a, b in zip(one["metrics"], fsdp["metrics"]):  # the logged loss is the mean over the processes
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"]


def test_only_the_main_process_writes_the_run_folder(runs):
    root, out, finals = runs
    assert finals["fsdp"]["files"] == finals["one"]["files"]
    assert sorted(p.name for p in (root / "fsdp").iterdir()) == ["quickstart"]
    assert out["fsdp"][1].count("reftx run quickstart  (config") == 1 and out["fsdp"][1].count("wrote ") == 1


def test_evaluation_runs_whole_on_every_process_with_identical_metrics(runs):
    root, out, finals = runs
    assert "eval 5/5" in out["fsdp"][1]  # every forward through a sharded layer is a collective: no dealing
    assert finals["fsdp"]["results"]["metrics"] == finals["one"]["results"]["metrics"]
    assert finals["fsdp"]["samples"] == finals["one"]["samples"]


def test_checkpoints_resume_across_fsdp_and_one_process(runs):
    root, out, finals = runs
    for name, other in (("one", "fsdp"), ("fsdp", "one")):
        run = root / name / "quickstart"
        log = out[f"{name}-resume"][1]
        assert "resumed from" in log and "(step 2/4)" in log
        assert (SHARDED in log) == (name == "one")  # the plain run resumed under FSDP
        assert max_diff(run / WEIGHTS, finals[name]["weights"]) <= 1e-6
        assert [r["step"] for r in rows(run, "metrics.jsonl")] == [1, 2, 3, 4]
        assert json.loads((run / "results.json").read_text())["metrics"] == finals[other]["results"]["metrics"]

"""train.log_with: a tiny run with TensorBoard writes the metrics.jsonl scalars (read back with
TensorBoard's own EventAccumulator), the resolved config, survives a resume and an error, and an
unknown or missing tracker is a clear error; wandb in offline mode writes the same rows (read back
from its run file)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reftx.train import trackers as tracking
from reftx.core.convert import from_dict
from reftx.core.errors import ConfigError, ReftError
from reftx.config.schema import TrainConfig
from reftx.train.run import train
from tests.integration._train_script import config, make_data, make_model

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS = 6
RESOLVED = {"name": "tiny", "train": {"lr": 0.01, "log_with": ["tensorboard"]},
            "interventions": [{"kind": "loreft", "rank": 4}], "lora": None}


def _train(run_dir: Path, resume: bool = False, **kw) -> dict:
    cfg = config(STEPS, 2, log_with=["tensorboard"])
    return train(make_model(), make_data(), cfg, run_dir, pad_id=0, resume=resume, show_progress=False,
                 name="tiny", config=RESOLVED, **kw)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "trackers" / "tiny"))
    acc.Reload()
    return acc


def _assert_same(run_dir: Path) -> None:
    """Every scalar of every metrics.jsonl row is in TensorBoard at that step (stored as float32)."""
    rows, ev = _rows(run_dir), _events(run_dir)
    for tag in ("loss", "lr", "epoch", "tokens_per_s", "grad_norm"):
        logged = [(e.step, e.value) for e in ev.Scalars(tag)]
        assert logged == [(r["step"], float(np.float32(r[tag]))) for r in rows], tag


def test_tensorboard_gets_the_metrics_rows_and_the_config(tmp_path):
    _train(tmp_path)
    assert [r["step"] for r in _rows(tmp_path)] == list(range(1, STEPS + 1))
    _assert_same(tmp_path)
    hparams = next((tmp_path / "trackers" / "tiny").rglob("hparams.yml")).read_text()
    assert "train.lr: 0.01" in hparams and "train.log_with: '[\"tensorboard\"]'" in hparams
    assert "interventions: '[{\"kind\": \"loreft\", \"rank\": 4}]'" in hparams


def test_resume_purges_what_the_lost_steps_logged(tmp_path):
    _train(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / f"step-{STEPS}")  # as if killed after step 6, before its checkpoint
    assert _train(tmp_path, resume=True)["resumed"]
    assert len(list((tmp_path / "trackers" / "tiny").glob("events.out.tfevents.*"))) == 2
    _assert_same(tmp_path)  # steps 5 and 6 once each: the first run's are purged


def test_an_error_still_closes_the_trackers(tmp_path, monkeypatch):
    closed = []
    end = tracking.end
    monkeypatch.setattr(tracking, "end", lambda acc: closed.append([type(t).__name__ for t in acc.trackers])
                        or end(acc))

    def stop(row):
        if row["step"] == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _train(tmp_path, on_log=stop)
    assert closed == [["TensorBoardTracker"]]
    assert [e.step for e in _events(tmp_path).Scalars("loss")] == [1, 2]


def test_no_trackers_by_default(tmp_path):
    train(make_model(), make_data(), config(2, 0), tmp_path, pad_id=0, show_progress=False)
    assert not (tmp_path / "trackers").exists()


def test_tracker_names_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.log_with.1: unknown tracker 'tensorbord' \(did you mean "
                                          r"'tensorboard'\?\); valid: aim, all, clearml, comet_ml"):
        from_dict(TrainConfig, {"log_with": ["wandb", "tensorbord"]}, "train")
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ReftError, match="train.log_with: wandb not installed; pip install wandb"):
        tracking.accelerator_kwargs(["wandb"], Path("run"))


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, {"d": None}], "e": {}}, "f": None, "g": True}) == \
        {"a.b": 1, "a.c": '[1, {"d": null}]', "a.e": "{}", "f": None, "g": True}


def test_reftx_run_logs_to_tensorboard_under_the_experiment_name(tiny_dir, tmp_path):
    import reftx.cli.commands as cli
    from tests.integration.test_runner import REPO, tiny_overrides

    overrides = [*tiny_overrides(tiny_dir, tmp_path), "train.log_with=[tensorboard]"]
    assert cli.main(["run", str(REPO / "experiments" / "quickstart.yaml"), *overrides, "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "quickstart"
    ev = EventAccumulator(str(run_dir / "trackers" / "quickstart"))
    ev.Reload()
    rows = _rows(run_dir)
    assert [(e.step, e.value) for e in ev.Scalars("loss")] == [(r["step"], float(np.float32(r["loss"]))) for r in rows]
    hparams = next((run_dir / "trackers" / "quickstart").rglob("hparams.yml")).read_text()
    assert f"model.name: {tiny_dir}" in hparams and "train.max_steps: 4" in hparams and "task.name: persona" in hparams


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file: a 7-byte header, then a
    LevelDB-style log (32 KiB blocks of records with a crc32/length/type header; a record split over
    blocks comes as FIRST, MIDDLE..., LAST pieces). The wandb package no longer reads it in Python."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, out, pieces, pos = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # too little left in the block for a header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(pieces)
            out.append(rec)
            pieces = b""
    return out


def test_wandb_offline_gets_the_metrics_rows_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    run_dir = tmp_path / "run"
    train(make_model(), make_data(), config(STEPS, 2, log_with=["wandb"]), run_dir, pad_id=0, show_progress=False,
          name="tiny", config={**RESOLVED, "train": {"lr": 0.01, "log_with": ["wandb"]}})
    import wandb

    wandb.teardown()  # stops the wandb-core service, which closes (flushes) the run's .wandb file
    records = _wandb_records(next((tmp_path / "wandb-dir").rglob("offline-run-*/run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds, f"the .wandb file ends before the run's exit record: {kinds}"
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    config_items = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
                    for i in r.config.update}
    rows = _rows(run_dir)
    assert [h["_step"] for h in history] == [r["step"] for r in rows], kinds
    for h, r in zip(history, rows):
        for tag in ("loss", "lr", "epoch", "tokens_per_s", "grad_norm"):
            assert h[tag] == pytest.approx(r[tag], rel=1e-12), tag
    assert config_items["train.lr"] == 0.01 and config_items["train.log_with"] == '["wandb"]'


def test_wandb_writes_under_the_run_folder_not_the_working_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    run_dir = tmp_path / "run"
    train(make_model(), make_data(), config(STEPS, 2, log_with=["wandb"]), run_dir, pad_id=0, show_progress=False,
          name="tiny", config=RESOLVED)
    wandb.teardown()
    runs = list((run_dir / "trackers" / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and list((tmp_path / "cwd").iterdir()) == []


def test_wandb_without_credentials_is_one_line_before_the_run_folder_exists(tiny_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    import reftx.cli.commands as cli
    from tests.integration.test_runner import REPO, tiny_overrides

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("machine example.org login u password p\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    overrides = [*tiny_overrides(tiny_dir, tmp_path), "train.log_with=[wandb]"]
    assert cli.main(["run", str(REPO / "experiments" / "quickstart.yaml"), *overrides, "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: train.log_with: wandb has no credentials (no WANDB_API_KEY, no `wandb login` entry in ~/.netrc) " \
           "and cannot prompt here; run `wandb login`, or set WANDB_MODE=offline" in err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    assert tracking.wandb_credentials()

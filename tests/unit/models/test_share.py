"""Sharing on the Hub (reftx.models.hub), offline: the model card, loading a repo id from a hand-built
Hugging Face cache (HF_HUB_OFFLINE=1), pushing through a fake HfApi, and loading never unpickling."""
from __future__ import annotations

import fnmatch
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, constants

import reftx
import reftx.cli.commands as cli
from reftx.models import hub as share
from reftx.core.convert import dump_yaml
from reftx.core.errors import ReftError
from reftx.engine.model import CONFIG_NAME, WEIGHTS_NAME
from tests.conftest import batch, perturb, tiny_model

SPECS = [{"kind": "loreft", "rank": 2, "layers": [1, 3], "positions": {"first": 2, "last": 2}, "tie": "positions"},
         {"kind": "scale_bias", "component": "mlp_output", "layers": [2], "positions": "last_prompt"}]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
METRICS = {"accuracy": 0.8125, "exact_match": 0.75}


def _model():
    return perturb(reftx.attach(tiny_model("llama"), SPECS)).eval()


def _run_dir(root: Path, model_name: str = "default") -> Path:
    """A run folder as reftx run writes it: config.yaml, results.json, intervention/ (and a checkpoint)."""
    run = root / "run"
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "trainer_state.pt").write_bytes(b"not uploaded")
    cfg = {"schema": 1, "name": "tiny_loreft", "seed": 3, "model": {"name": model_name, "task": "causal-lm"},
           "task": {"name": "arithmetic", "n_train": 40, "train_split": "train", "options": {"digits": 2}},
           "train": {"epochs": 2, "lr": 0.004, "batch_size": 8, "objective": "nll"}}
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "results.json").write_text(json.dumps({"name": "tiny_loreft", "config_hash": "abcdef012345",
                                                  "n_train": 40, "n_eval": 16, "eval_split": "test",
                                                  "metrics": METRICS, "train": {"steps": 10}}))
    return run


def test_card_names_every_required_field_with_the_real_values(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "out", card_info=_run_dir(tmp_path), repo_id="user/tiny-loreft")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "reftx"
    assert card.data.base_model == share.DEFAULT_BASE  # model.name: default
    assert {"reftx", "loreft", "scale_bias"} <= set(card.data.tags)
    text = card.text
    for g in model.plan():  # every group: key, kind, component, layers, positions, parameter count
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{g.key}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:] == [g.kind, g.component, ",".join(map(str, g.layers)), "+".join(g.parts), f"{g.params:,}"]
    assert f"**{model.count_parameters():,}**" in text
    assert "rank: 2" in text and "tie: positions" in text  # the primitive and schedule
    assert "reftx task `arithmetic`, split `train`, 40 examples (seed 3)" in text and "digits: 2" in text
    assert "Training (10 optimizer steps): epochs 2, batch_size 8, lr 0.004, objective nll." in text
    assert "| accuracy | 0.8125 |" in text and "| exact_match | 0.7500 |" in text and "split `test`, 16" in text
    assert f"Saved with reftx {reftx.__version__}" in text
    assert "load_model('default')" in text and "ReftModel.from_pretrained(base, 'user/tiny-loreft')" in text


def test_card_without_training_information_says_so_and_names_a_hub_base(tmp_path):
    model = _model()
    model.base.config._name_or_path = "someone/base-model"
    card = ModelCard.load(model.save_pretrained(tmp_path, card_info={}) / "README.md")
    assert card.data.base_model == "someone/base-model"
    assert "## Training data\n\nNot recorded" in card.text and "## Metrics\n\nNot recorded." in card.text
    model.base.config._name_or_path = str(tmp_path)  # a local path is no Hub id: no base_model metadata
    card = ModelCard.load(model.save_pretrained(tmp_path, card_info={}) / "README.md")
    assert card.data.base_model is None and "a local model" in card.text


def _hub_cache(root: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache under ``root`` in offline mode (the env and the constants
    huggingface_hub read at import time)."""
    cache = root / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cached_repo(cache: Path, repo: str = "user/repo") -> Path:
    """The cache layout snapshot_download reads: models--user--repo/{refs/main, snapshots/<commit>/}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def _no_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_from_pretrained_loads_a_repo_id_from_the_offline_cache_identically(tmp_path, monkeypatch):
    snapshot = _cached_repo(_hub_cache(tmp_path, monkeypatch))
    model = _model()
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(snapshot, card_info=_run_dir(tmp_path), repo_id="user/repo")
    torch.save({"evil": 1}, snapshot / "pytorch_model.bin")  # a pickle in the repo: never read
    (snapshot / "training_args.bin").write_bytes(pickle.dumps({"evil": 2}))
    model.detach()
    _no_unpickling(monkeypatch)
    # the card's own load snippet, run as written (load_model gives the same random base)
    snippet = ModelCard.load(snapshot / "README.md").text.split("```python\n")[-1].split("```")[0]
    monkeypatch.setattr(reftx, "load_model", lambda name, **kw: (tiny_model("llama"), None))
    scope: dict = {}
    exec(snippet, scope)
    with torch.no_grad():
        got = scope["model"].eval()(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, want)
    again = reftx.ReftModel.from_pretrained(tiny_model("llama", seed=5), "user/repo", revision=COMMIT)
    assert again.count_parameters() == model.count_parameters()


def test_only_the_files_reftx_reads_are_fetched(tmp_path, monkeypatch):
    asked = {}

    def fake_snapshot_download(repo_id, **kw):
        asked.update(kw, repo_id=repo_id)
        raise huggingface_hub.errors.RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, status_code=404, request=None))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ReftError, match="the Hub has no repo 'user/gone' that you can read"):
        reftx.ReftModel.from_pretrained(tiny_model("llama"), "user/gone", revision="v1")
    assert asked["repo_id"] == "user/gone" and asked["revision"] == "v1"
    assert asked["allow_patterns"] == [CONFIG_NAME, WEIGHTS_NAME, "README.md"]


def test_hub_errors_say_what_to_do(tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path, monkeypatch)
    base = tiny_model("llama")
    with pytest.raises(ReftError, match=r"not in the Hugging Face cache \(.*hf-cache\) while HF_HUB_OFFLINE=1 is set"):
        reftx.ReftModel.from_pretrained(base, "user/missing")
    with pytest.raises(ReftError, match="nor a Hub repo id"):
        reftx.ReftModel.from_pretrained(base, str(tmp_path / "no" / "such" / "folder"))
    (_cached_repo(cache, "user/half") / CONFIG_NAME).write_text("{}")
    with pytest.raises(ReftError, match=f"has no {WEIGHTS_NAME}: not a reftx interventions repo"):
        reftx.ReftModel.from_pretrained(base, "user/half")
    with pytest.raises(ReftError, match="revision=.main. is for Hub repos"):
        reftx.ReftModel.from_pretrained(base, tmp_path, revision="main")


class FakeApi:
    """Records what HfApi would create and upload (the files matched by allow_patterns, read at call time)."""

    calls: list = []

    def __init__(self, token=None, **kw):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, commit_message=None, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()
                 and any(fnmatch.fnmatch(p.relative_to(folder_path).as_posix(), pat) for pat in allow_patterns)}
        FakeApi.calls.append(("upload_folder", repo_id, files, commit_message))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="",
                                          commit_description="", oid="1", pr_url=None)


@pytest.fixture
def fake_api(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # any real request would fail
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    return FakeApi


def test_push_to_hub_uploads_the_weights_config_and_card(fake_api, tmp_path):
    model = _model()
    info = model.push_to_hub("user/tiny", private=True, commit_message="first", card_info=_run_dir(tmp_path))
    (_, repo, private, exist_ok), (_, repo2, files, message) = fake_api.calls
    assert (repo, private, exist_ok, repo2, message) == ("user/tiny", True, True, "user/tiny", "first")
    assert set(files) == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    assert "| accuracy | 0.8125 |" in files["README.md"].decode()
    assert json.loads(files[CONFIG_NAME])["groups"].keys() == {g.key for g in model.plan()}
    assert info.commit_url.endswith("/commit/1")


def test_save_pretrained_push_to_hub_and_its_repo_id(fake_api, tmp_path):
    model = _model()
    with pytest.raises(ReftError, match="needs repo_id"):
        model.save_pretrained(tmp_path / "a", push_to_hub=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("local only")
    model.save_pretrained(tmp_path / "b", push_to_hub=True, repo_id="org/b", token="hf_x")
    _, (_, repo, files, _) = fake_api.calls
    assert repo == "org/b" and set(files) == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}


def test_reftx_push_uploads_a_run_folder(fake_api, tmp_path, capsys):
    run = _run_dir(tmp_path, model_name="someone/base-model")
    _model().save_pretrained(run / "intervention")
    assert cli.main(["push", str(run), "user/run", "--private"]) == 0
    (_, _, private, _), (_, repo, files, _) = fake_api.calls
    assert private is True and repo == "user/run" and set(files) == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    card = files["README.md"].decode()
    assert "base_model: someone/base-model" in card and "| exact_match | 0.7500 |" in card
    assert not (run / "intervention" / "README.md").exists()  # the run folder is not modified
    assert "commit/1" in capsys.readouterr().out
    assert cli.main(["push", str(tmp_path), "user/run"]) == 2  # not a run folder: a clear error, no upload
    assert "not a finished reftx run" in capsys.readouterr().err.replace("\n", "")


def test_reftx_push_of_a_real_run(fake_api, tiny_dir, tmp_path):
    from reftx.recipes import train as runner
    from reftx.config.schema import load_experiment
    from tests.integration.test_runner import REPO, tiny_overrides

    out = runner.run(load_experiment(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tiny_dir, tmp_path)),
                     show_progress=False)
    assert cli.main(["push", out["run_dir"], "user/quickstart"]) == 0
    _, (_, _, files, _) = fake_api.calls
    card = files["README.md"].decode()
    for name, value in out["metrics"].items():
        assert f"| {name} | {value:.4f} |" in card
    assert "reftx task `persona`" in card and "(4 optimizer steps)" in card and "a local model" in card
    assert json.loads(files[CONFIG_NAME]) == json.loads((Path(out["run_dir"]) / "intervention" / CONFIG_NAME).read_text())

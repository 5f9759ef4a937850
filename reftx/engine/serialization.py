"""The saved form of trained interventions: ``interventions.safetensors`` (tensors only, no pickle)
beside ``reft_config.json`` (format, version, base model, every intervention entry with all its
options, the module defining each kind, the groups). ``ReftModel.save_pretrained`` writes them and
``ReftModel.from_pretrained`` reads them back through :func:`read_config`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError

CONFIG_NAME = "reft_config.json"
WEIGHTS_NAME = "interventions.safetensors"
FORMAT = "reftx.interventions"
FORMAT_VERSION = 1


def read_config(path: Path) -> dict[str, Any]:
    """``reft_config.json``, checked field by field (errors name the file and the field)."""
    if not path.is_file():
        raise ReftError(f"{path} not found: not a reftx intervention directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ReftError(f"{path} is not valid JSON ({e})") from None

    def bad(field: str, message: str) -> ReftError:
        return ReftError(f"{path}: {field}: {message}")

    if not isinstance(meta, dict):
        raise bad("(top level)", f"expected an object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise bad("format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise bad("format_version", f"expected an integer in [1, {FORMAT_VERSION}] (this reftx reads up to "
                                    f"{FORMAT_VERSION}), got {version!r}")
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("model_type"), str):
        raise bad("model.model_type", f"missing or not a string (model: {model!r})")
    entries = meta.get("interventions")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise bad("interventions", "expected a non-empty list of intervention entries")
    for key in ("modules", "groups"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(key, f"expected an object, got {type(meta[key]).__name__}")
    if not isinstance(meta.get("train_modules", []), list):
        raise bad("train_modules", "expected a list of module names")
    return meta


__all__ = ["CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "read_config"]

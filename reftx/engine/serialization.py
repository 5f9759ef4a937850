"""The saved form of trained interventions: ``interventions.safetensors`` (tensors only, no pickle)
beside ``reft_config.json`` (format, version, base model, every intervention entry with all its
options, the module defining each kind, the groups). ``ReftModel.save_pretrained`` writes them
(:func:`write_interventions`: a failed write names the file, the cause and the fix) and
``ReftModel.from_pretrained`` reads them back through :func:`read_config`. Beside them,
``extras.safetensors`` holds the modules an objective keeps with the interventions (PPO's value
head, the RL objectives' KL anchor: ``ReftModel.add_extra``), training state that checkpoints and
``--resume`` carry and that ``from_pretrained`` does not need."""
from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError
from reftx.core.files import atomic_write

CONFIG_NAME = "reft_config.json"
WEIGHTS_NAME = "interventions.safetensors"
EXTRAS_NAME = "extras.safetensors"
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


class WriteError(ReftError):
    """A file could not be written: ``path``, the ``cause`` (the OS's words, e.g. "No space left on
    device") and the ``fix``; callers that write inside a temporary folder (checkpoints) reword it."""

    def __init__(self, path: Path, cause: str, fix: str, note: str):
        self.path, self.cause, self.fix = Path(path), cause, fix
        super().__init__(f"cannot write {path}: {cause}; {fix}; {note}")


def write_failure(path: Path, error: BaseException) -> tuple[str, str]:
    """(cause, fix) for a failed write of ``path``: an OSError, safetensors' SafetensorError (which
    carries the OS error only in its text, "I/O error: ... (os error 28)") or torch.save's RuntimeError."""
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    cause = (getattr(error, "strerror", None) or str(error)) if isinstance(error, OSError) else str(error)
    found = re.search(r"(?:I/O error: )?([^:]*?) \(os error (\d+)\)", cause)
    if found:
        cause, code = found.group(1), int(found.group(2))
    cause = (cause.strip().splitlines() or [type(error).__name__])[0]
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or code is None:
        where = next((p for p in Path(path).absolute().parents if p.exists()), Path("/"))
        room = f"{shutil.disk_usage(where).free:,} bytes free there"
        if code is None:  # torch reports a full disk only as a failed write: say how much room is left
            return f"{cause} ({room})", "check the free space on that disk, or write to another one"
        return cause, f"free space on that disk ({room}) or write to another one"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return cause, "make that folder writable, or write to another one"
    return cause, "check that disk, or write to another one"


def write_interventions(directory: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``interventions.safetensors`` and ``reft_config.json`` into ``directory``, each atomically,
    the config renamed into place only once the weights are fully written (so a failure leaves the
    pair that was there before). A failure (a full disk, no permission) is a :class:`WriteError`
    naming the file, the cause and the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    target = directory

    def weights(tmp: str) -> None:
        nonlocal target
        target = directory / WEIGHTS_NAME
        save_file(tensors, tmp, metadata={"format": FORMAT})
        target = directory / CONFIG_NAME
        atomic_write(target, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
        target = directory / WEIGHTS_NAME

    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / WEIGHTS_NAME, weights)
    except (OSError, SafetensorError) as e:
        cause, fix = write_failure(target, e)
        raise WriteError(target, cause, fix, f"the files already in {directory} are unchanged") from None


def write_extras(directory: Path, extras: dict[str, Any]) -> None:
    """``extras.safetensors`` (atomically): the state of every module in ``extras`` (name -> module),
    keys ``<name>.<tensor>``; nothing is written when there are none. A failure is a WriteError."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if not extras:
        return
    tensors = {f"{name}.{k}": t.detach().contiguous().cpu() for name, mod in extras.items()
               for k, t in mod.state_dict().items()}
    target = Path(directory) / EXTRAS_NAME
    try:
        atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    except (OSError, SafetensorError) as e:
        cause, fix = write_failure(target, e)
        raise WriteError(target, cause, fix, f"the files already in {directory} are unchanged") from None


def read_extras(directory: Path, extras: dict[str, Any], device: Any) -> None:
    """Load what :func:`write_extras` saved into the modules of ``extras`` that the file holds. A
    folder without the file, or a module the file lacks, keeps its state: a run started from another
    run's interventions (``train.init_from``) starts its value head and anchor afresh; a module the
    file holds must match in every tensor's name and shape."""
    from safetensors.torch import load_file

    path = Path(directory) / EXTRAS_NAME
    if not extras or not path.is_file():
        return
    try:
        tensors = load_file(path, device=str(device))
    except Exception as e:  # safetensors reports truncation and bad headers with its own error type
        raise ReftError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or truncated") from None
    for name, mod in extras.items():
        own = mod.state_dict()
        saved = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(f"{name}.")}
        if not saved:
            continue
        if set(saved) != set(own) or any(saved[k].shape != t.shape for k, t in own.items()):
            raise ReftError(f"{path}: {name!r} holds {sorted((k, tuple(t.shape)) for k, t in saved.items())}, this model's "
                            f"{name} expects {sorted((k, tuple(t.shape)) for k, t in own.items())} (another model or "
                            "other interventions): resume with the same config")
        mod.load_state_dict(saved)


__all__ = ["CONFIG_NAME", "EXTRAS_NAME", "FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "WriteError", "read_config",
           "read_extras", "write_extras", "write_failure", "write_interventions"]

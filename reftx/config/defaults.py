"""What a run prints of its config: only the fields set away from their defaults (the whole
resolved config is in ``config.yaml``)."""
from __future__ import annotations

import dataclasses
from typing import Any

from reftx.core.convert import to_dict


def changed(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass tree that differ from their defaults, nested as in the YAML;
    required fields (no default) are always kept; lists and dicts are compared whole."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sub = changed(value)
            if sub or not _has_default(f):
                out[f.name] = sub
            continue
        if not _has_default(f) or value != _default(f):
            out[f.name] = to_dict(value)
    return out


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


__all__ = ["changed"]

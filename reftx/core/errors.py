"""Error types and the did-you-mean helper shared by every validator in reftx.

Every user-facing validation error names the offending field (as a dotted path
when it sits inside a config) and what would have been valid.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReftError(Exception):
    """Base class of reftx's own errors."""


class ConfigError(ReftError, ValueError):
    """A configuration value is invalid. ``field`` is the dotted path of the bad key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class DataError(ReftError, ValueError):
    """A data file is missing or a row in it is malformed (message names file and line)."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest option, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(field: str, name: str, options: Iterable[str], what: str = "value", hint: str = "") -> ConfigError:
    """The standard error for a name that is not one of ``options`` (``hint`` is appended)."""
    options = sorted(str(o) for o in options)
    return ConfigError(
        field,
        f"unknown {what} {name!r}{did_you_mean(name, options)}; valid: {', '.join(options)}{hint}",
    )


def utf8_error(path: object, data: bytes, err: UnicodeDecodeError) -> str:
    """'{path}:{line}: not valid UTF-8 ...' for a decode error at byte ``err.start`` of ``data``
    (data files and config files alike)."""
    line = data[:err.start].count(b"\n") + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}: {err.reason})"

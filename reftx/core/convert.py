"""Strict, generic config machinery: YAML with ``extends:``, dotted overrides, typed dataclasses.

The pipeline is ``load_yaml`` -> ``apply_overrides`` -> ``from_dict``. Every error is a
:class:`~reftx.core.errors.ConfigError` whose ``field`` is the full dotted path of the bad key
(list elements by index, e.g. ``interventions.1.rank``).

Conventions for config dataclasses:

* a field without a default is required;
* ``__post_init__`` does value checks and raises ``ConfigError`` with a field name relative
  to its own dataclass (``from_dict`` prefixes the path of the section it sits in);
* an empty YAML section (``train:`` with nothing under it, i.e. null) means "all defaults"
  for dataclass-, dict- and list-typed fields that are not ``| None``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
import inspect
import math
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from reftx.core.errors import ConfigError, did_you_mean, unknown, utf8_error

T = TypeVar("T")
INT64 = 2**63  # config integers lie in [-INT64, INT64)

# YAML 1.1 only reads floats with a dot ("1.0e-3"); also accept the common "1e-3" / "1E+5".
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"]
        for i, (key_node, _) in enumerate(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in keys[:i]:
                problem = f"duplicate key {key_node.value!r}"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings which ``_Loader`` would read back as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))
del _cls


def parse_value(text: str) -> Any:
    """Parse one scalar or flow value (``8``, ``1e-3``, ``[1, 2]``, ``null``) as config YAML."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader



def _read(path: Path, child: Path | None) -> dict[str, Any]:
    """Read one YAML file as a mapping (an empty file is ``{}``); ``child`` extends it, if any."""
    field, via = ("extends", f" (extended by {child})") if child else ("", "")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(field, f"config file not found: {path}{via}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(field, utf8_error(path, path.read_bytes(), err) + via) from None
    except OSError as err:
        raise ConfigError(field, f"cannot read config file {path}{via}: {err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(field, f"invalid YAML in {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``child`` into a copy of ``base``: dicts merge, the child wins, the rest replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Load a config file, resolving its ``extends:`` chain (parent paths relative to the child)."""
    return _load_chain(Path(path), [], None)


def _load_chain(path: Path, chain: list[Path], child: Path | None) -> dict[str, Any]:
    resolved = path.expanduser().resolve()
    if resolved in chain:
        names = " -> ".join(str(p) for p in [*chain, resolved])
        raise ConfigError("extends", f"extends cycle: {names}")
    data = _read(path, child)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError("extends", f"{path}: expected one file path, got {parent!r}")
    base = _load_chain(path.parent / Path(parent).expanduser(), [*chain, resolved], path)
    return merge(base, data)



def apply_overrides(d: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a copy of ``d``; list elements are addressed by index.

    Values are parsed as YAML (``8`` -> int, ``1e-3`` -> float, ``[a, b]`` -> list, empty -> null).
    New keys may be added; whether they are valid is checked later by :func:`from_dict`.
    """
    out = copy.deepcopy(d)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(key or item, f"malformed override {item!r}; expected key.path=value")
        try:
            value = parse_value(raw)
        except yaml.YAMLError as err:
            raise ConfigError(key, f"cannot parse override value {raw!r}: {err}") from None
        _set_path(out, parts, value)
    return out


def _set_path(root: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``value`` at the dotted path ``parts`` inside ``root`` (creating missing dicts)."""
    node: Any = root
    for depth, part in enumerate(parts):
        key: str | int = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    ".".join(parts[: depth + 1]), f"no list item {part!r} (the list has {len(node)} items)"
                )
            key = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(".".join(parts[:depth]), f"cannot set {part!r} inside a {type(node).__name__} value")
        if depth == len(parts) - 1:
            node[key] = value
            return
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = {}
        node = node[key]



def require(ok: bool, field: str, message: str) -> None:
    """Raise ``ConfigError(field, message)`` unless ``ok``; for use in ``__post_init__``."""
    if not ok:
        raise ConfigError(field, message)


def _join(prefix: str, key: str | int) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def from_dict(cls: type[T], d: Any, field_prefix: str = "", what: str = "key") -> T:
    """Build dataclass ``cls`` from mapping ``d``, strictly, checking types against annotations:
    the one converter of every config section (experiment, primitive, task, objective and recipe
    options). ``what`` names an unknown key in the error (e.g. "option of intervention 'loreft'")."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(d, dict):
        raise ConfigError(field_prefix, f"expected a mapping, got {_describe(d)}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    for key in d:
        if not isinstance(key, str):
            raise ConfigError(_join(field_prefix, str(key)), f"keys must be strings, got {_describe(key)}")
        if key not in names:
            raise unknown(_join(field_prefix, key), key, names, what)
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        path = _join(field_prefix, f.name)
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in d:
            if d[f.name] == "???":
                raise ConfigError(path, "required value is not set (got '???')")
            kwargs[f.name] = _convert(d[f.name], tp, path)
        elif required and dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, {}, path)  # points the error at the innermost key
        elif required:
            raise ConfigError(path, f"missing required key {f.name!r}")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a __post_init__ check: put the section's path in front
        raise within(err, field_prefix) from None


def within(err: ConfigError, prefix: str) -> ConfigError:
    """``err`` seen from an enclosing section: ``train.lr`` checked inside ``recipe.stages.1`` becomes
    ``recipe.stages.1.train.lr`` (an error without a field gets ``prefix`` as its field)."""
    text, head = str(err), f"{err.field}: "
    message = text[len(head):] if err.field and text.startswith(head) else text
    return ConfigError(_join(prefix, err.field) if err.field else prefix, message)


def compose_config(name: str, *groups: type, doc: str = "", module: str | None = None) -> type:
    """A flat frozen dataclass with the fields of every option group (later groups override a
    field's default) and a ``__post_init__`` that runs each group's checks: a primitive's options
    are composed from its parts' options, not inherited. The YAML keys stay flat."""
    fields: dict[str, tuple] = {}
    for g in groups:
        hints = get_type_hints(g)
        for f in dataclasses.fields(g):
            default = (dataclasses.field(default_factory=f.default_factory) if f.default is dataclasses.MISSING
                       else dataclasses.field(default=f.default))
            fields[f.name] = (f.name, hints[f.name], default)
    checks = [g.__post_init__ for g in groups if hasattr(g, "__post_init__")]

    def __post_init__(self: Any) -> None:
        for check in checks:
            check(self)

    caller = module or inspect.currentframe().f_back.f_globals.get("__name__", __name__)
    return dataclasses.make_dataclass(name, list(fields.values()), frozen=True,
                                      namespace={"__post_init__": __post_init__, "__doc__": doc, "__module__": caller})


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _type_name(tp: Any) -> str:
    """Human-readable name of an annotation, for error messages."""
    origin = get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it (copied, ints widened to float)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (Union, types.UnionType):
        if value is None:  # null is only valid when the union names None
            if type(None) in args:
                return None
            raise ConfigError(path, f"expected {_type_name(tp)}, got null")
        errors: list[tuple[Any, ConfigError]] = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError as err:
                errors.append((option, err))
        for option, err in errors:  # prefer an error from inside the matching container
            only_literal = len(errors) == 1 and get_origin(option) is Literal
            outer = get_origin(option) or option
            same_kind = isinstance(value, dict) if dataclasses.is_dataclass(outer) else type(value) is outer
            if only_literal or (err.field != path and same_kind):
                raise err
        raise ConfigError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(path, f"invalid value {value!r}{did_you_mean(str(value), args)}; choices: {choices}")
    base = origin or tp
    if value is None and (base in (list, dict) or dataclasses.is_dataclass(base)):
        value = {} if base is not list else []
    if dataclasses.is_dataclass(base):
        return from_dict(base, value, path)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        type(None): lambda v: v is None,
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(base)
    if ok is None:
        raise TypeError(f"{path}: unsupported config annotation {tp!r}")
    if not ok(value):
        raise ConfigError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if base in (int, float):
        return _number(value, base, path)
    if base is list:
        item = args[0] if args else Any
        return [_convert(v, item, _join(path, i)) for i, v in enumerate(value)]
    if base is dict:
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, _join(path, str(k))): _convert(v, val_tp, _join(path, str(k)))
            for k, v in value.items()
        }
    return value



def _number(value: int | float, base: type, path: str) -> int | float:
    """An int within 64 bits (torch, numpy and seeding stop there), or a finite float."""
    if base is int and not -INT64 <= value < INT64:
        raise ConfigError(path, f"must fit in a 64-bit integer (|value| < 2**63), got {value}")
    if base is float and not math.isfinite(value):  # .inf / .nan in YAML: never a meaningful setting
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    return float(value) if base is float else value


def to_dict(obj: Any) -> Any:
    """Turn a config dataclass (recursively) into plain YAML/JSON-safe dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, Path)):
        return str(obj) if isinstance(obj, Path) else obj
    raise TypeError(f"cannot serialise {type(obj).__name__} value {obj!r} into a config")


@dataclass(frozen=True)
class NoOptions:
    """The options of something that takes none (a recipe, an objective): any key is an error."""


def dump_yaml(d: Any) -> str:
    """YAML text for a config dict or dataclass: keys in definition order, no python tags."""
    return yaml.dump(to_dict(d), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)

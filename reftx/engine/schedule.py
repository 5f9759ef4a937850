"""Schedules: layers x positions x tying -> named groups, without loading weights.

An intervention entry (a dict, from YAML or Python) reads::

    kind: loreft                    # a registered primitive
    component: block_output         # see reftx.engine.sites (default block_output)
    layers: [4, 8, 12]              # all | int | list | {start, stop, step} | {every: k} | fractions
    positions: {first: 7, last: 7}  # | last_prompt | all_prompt | all | {generated: n}
    tie: none                       # none | positions | layers | all
    name: null                      # optional prefix for the group keys
    dtype: float32                  # parameter dtype: float32 | bfloat16 | float16 | auto (= the model's)
    rank: 4 ...                     # every other key is an option of the primitive's Config

Each entry expands into *groups*: one intervention module each, applied at one
or more (layer, position part) sites. Keys are stable and readable, e.g.
``L5.block_output.last`` (untied), ``L5.block_output.first+last`` (positions
tied), ``L0-29.block_output.last`` (layers tied); they name the saved weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from reftx.engine import sites
from reftx.core.errors import ConfigError, did_you_mean, unknown
from reftx.core.intervention import get_intervention, make_intervention

TIES = ("none", "positions", "layers", "all")
INTERVENTION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}
SPEC_KEYS = ("kind", "component", "layers", "positions", "tie", "name", "dtype")
POSITION_WORDS = ("last_prompt", "all_prompt", "all")


@dataclass(frozen=True)
class PositionSpec:
    """Which token positions of each example are edited.

    mode "first_last": the first ``first`` and last ``last`` prompt tokens. A prompt
      shorter than first + last uses at most half of it for each side:
      first' = min(first, L // 2), last' = min(last, L - first') (so L = 1 edits
      its single token as "last" and nothing as "first"), and the sides never overlap.
    "last_prompt": the last prompt token. "all_prompt": every prompt token.
    "all": every non-padding token. "generated": the first ``generated`` tokens
      after the prompt (at generation, the first n decode steps; -1 = all of them);
      with ``prompt: true`` also every prompt token (BREP's early-inference schedule).
    """

    mode: Literal["first_last", "last_prompt", "all_prompt", "all", "generated"]
    first: int = 0
    last: int = 0
    generated: int = 0
    with_prompt: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        if self.mode == "first_last":
            return tuple(p for p, n in (("first", self.first), ("last", self.last)) if n > 0)
        if self.mode == "generated":
            gen = f"gen{self.generated}" if self.generated >= 0 else "gen_all"
            return ("all_prompt", gen) if self.with_prompt else (gen,)
        return (self.mode,)

    def to_yaml(self) -> Any:
        if self.mode == "first_last":
            return {k: v for k, v in (("first", self.first), ("last", self.last)) if v}
        if self.mode == "generated":
            return {"generated": self.generated, **({"prompt": True} if self.with_prompt else {})}
        return self.mode


def parse_positions(value: Any, field: str = "positions") -> PositionSpec:
    if isinstance(value, PositionSpec):
        return value
    if isinstance(value, str):
        if value not in POSITION_WORDS:
            raise unknown(field, value, [*POSITION_WORDS, "{first: p, last: s}", "{generated: n}"], "positions")
        return PositionSpec(value)
    if isinstance(value, dict):
        keys = set(value)
        if keys <= {"first", "last"} and keys:
            p, s = value.get("first", 0), value.get("last", 0)
            for k, v in (("first", p), ("last", s)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ConfigError(f"{field}.{k}", f"must be an integer >= 0, got {v!r}")
            if p + s == 0:
                raise ConfigError(field, "first + last must be at least 1")
            return PositionSpec("first_last", first=p, last=s)
        if "generated" in keys and keys <= {"generated", "prompt"}:
            n, with_prompt = value["generated"], value.get("prompt", False)
            if not isinstance(n, int) or isinstance(n, bool) or n < -1 or n == 0:
                raise ConfigError(f"{field}.generated", f"must be an integer >= 1, or -1 for always; got {n!r}")
            if not isinstance(with_prompt, bool):
                raise ConfigError(f"{field}.prompt", f"must be true or false, got {with_prompt!r}")
            return PositionSpec("generated", generated=n, with_prompt=with_prompt)
        valid = ["first", "last", "generated", "prompt"]
        bad = sorted(keys - set(valid)) or sorted(keys)
        raise ConfigError(
            f"{field}.{bad[0]}",
            f"unexpected key{did_you_mean(bad[0], valid)}; use {{first: p, last: s}} or {{generated: n, prompt: bool}}",
        )
    raise ConfigError(field, f"expected one of {', '.join(POSITION_WORDS)} or a mapping, got {value!r}")


def resolve_layers(value: Any, n: int, field: str = "layers") -> tuple[int, ...]:
    """Layer indices from ``all``, an int, a fraction of depth, a list, or {start, stop, step}."""

    def one(v: Any, f: str) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f, f"expected a layer index or a fraction of depth, got {v!r}")
        if isinstance(v, float):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f, f"a fractional layer must be in [0, 1], got {v}")
            return min(n - 1, math.floor(v * n + 0.5))  # 0.5 -> middle; round half up
        if not -n <= v < n:
            raise ConfigError(f, f"layer {v} is out of range for a model with {n} layers (0..{n - 1})")
        return v % n

    if value == "all":
        return tuple(range(n))
    if isinstance(value, dict):
        allowed = {"start", "stop", "step", "every"}
        for k in value:
            if k not in allowed:
                raise ConfigError(f"{field}.{k}", f"unknown key{did_you_mean(k, allowed)}; valid: start, stop, step, every")
        step = value.get("step", value.get("every", 1))
        if not isinstance(step, int) or step < 1:
            raise ConfigError(f"{field}.step", f"must be an integer >= 1, got {step!r}")
        start, stop = value.get("start", 0), value.get("stop", n)
        out = tuple(range(one(start, f"{field}.start"), min(stop, n) if stop >= 0 else n + stop, step))
    elif isinstance(value, (list, tuple)):
        out = tuple(one(v, f"{field}.{i}") for i, v in enumerate(value))
    else:
        out = (one(value, field),)
    if not out:
        raise ConfigError(field, f"selects no layer (model has {n})")
    if len(set(out)) != len(out):
        raise ConfigError(field, f"repeats a layer: {list(out)}")
    return out


def layer_tag(layers: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``L0-2+5``; embeddings (layer -1) -> ``""``."""
    if layers == (-1,):
        return ""
    runs, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + (None,)):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return "L" + "+".join(runs)


@dataclass(frozen=True)
class InterventionSpec:
    kind: str
    component: str
    layers: tuple[int, ...]
    positions: PositionSpec
    tie: str
    name: str | None
    dtype: str
    options: dict[str, Any] = field(hash=False)

    def to_yaml(self) -> dict[str, Any]:
        out = {"kind": self.kind, "component": self.component, "layers": list(self.layers),
               "positions": self.positions.to_yaml(), "tie": self.tie, "dtype": self.dtype}
        if self.name:
            out["name"] = self.name
        return {**out, **self.options}


@dataclass(frozen=True)
class Group:
    """One intervention module and the sites it is applied at."""

    key: str
    spec_index: int
    kind: str
    component: str
    layers: tuple[int, ...]
    parts: tuple[str, ...]
    positions: PositionSpec
    dim: int
    params: int


def parse_spec(raw: dict[str, Any], config: Any, field: str = "interventions.0") -> InterventionSpec:
    """Validate one intervention entry against the model ``config`` (no weights needed)."""
    if not isinstance(raw, dict):
        raise ConfigError(field, f"expected a mapping with at least 'kind', got {raw!r}")
    if "kind" not in raw:
        raise ConfigError(f"{field}.kind", "is required (one of the registered interventions)")
    cls = get_intervention(raw["kind"], f"{field}.kind")
    option_names = [f.name for f in cls.Config.__dataclass_fields__.values()]
    for k in raw:
        if k not in SPEC_KEYS and k not in option_names:
            valid = [*SPEC_KEYS, *option_names]
            raise ConfigError(f"{field}.{k}", f"unknown key{did_you_mean(k, valid)}; valid: {', '.join(valid)}")
    component = raw.get("component", "block_output")
    if not isinstance(component, str):
        raise ConfigError(f"{field}.component", f"expected a string, got {component!r}")
    sites.check_component(component, f"{field}.component")
    if not sites.is_raw_path(component):
        sites.architecture(config)  # unknown model types fail here, listing the known ones
    if component == "embeddings":
        if raw.get("layers") not in (None, "all"):
            raise ConfigError(f"{field}.layers", "the embeddings component has no layers; leave layers out")
        layers: tuple[int, ...] = (-1,)
    else:
        layers = resolve_layers(raw.get("layers", "all"), sites.num_layers(config), f"{field}.layers")
    tie = raw.get("tie", "none")
    if tie not in TIES:
        raise unknown(f"{field}.tie", tie, TIES, "tie")
    dtype = raw.get("dtype", "float32")
    if dtype not in INTERVENTION_DTYPES:
        raise unknown(f"{field}.dtype", dtype, INTERVENTION_DTYPES, "dtype")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.replace("_", "").isalnum()):
        raise ConfigError(f"{field}.name", f"must be an identifier (letters, digits, _), got {name!r}")
    options = {k: v for k, v in raw.items() if k not in SPEC_KEYS}
    return InterventionSpec(raw["kind"], component, layers, parse_positions(raw.get("positions", {"first": 7, "last": 7}),
                            f"{field}.positions"), tie, name, dtype, options)


def expand(spec: InterventionSpec, index: int, config: Any) -> list[Group]:
    """The groups of one entry, with parameter counts (modules built on the meta device)."""
    dim = sites.component_width(config, spec.component)
    with torch.device("meta"):
        params = sum(p.numel() for p in make_intervention(spec.kind, spec.options, dim,
                                                          f"interventions.{index}.").parameters())
    parts = spec.positions.parts
    layer_sets = [spec.layers] if spec.tie in ("layers", "all") else [(layer,) for layer in spec.layers]
    part_sets = [parts] if spec.tie in ("positions", "all") else [(p,) for p in parts]
    comp = spec.component.replace(".", "_").replace("{layer}", "L")
    prefix = f"{spec.name}." if spec.name else ""
    groups = []
    for ls in layer_sets:
        for ps in part_sets:
            tag = layer_tag(ls)
            key = prefix + ".".join(t for t in (tag, comp, "+".join(ps)) if t)
            groups.append(Group(key, index, spec.kind, spec.component, ls, ps, spec.positions, dim, params))
    return groups


def plan(raw_specs: list[dict[str, Any]], config: Any) -> tuple[list[InterventionSpec], list[Group]]:
    """Validate every entry and expand it into named groups. Duplicate keys are an error."""
    if not isinstance(raw_specs, (list, tuple)) or not raw_specs:
        raise ConfigError("interventions", "expected a non-empty list of intervention entries")
    specs = [parse_spec(r, config, f"interventions.{i}") for i, r in enumerate(raw_specs)]
    groups: list[Group] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        for g in expand(s, i, config):
            if g.key in seen:
                raise ConfigError(f"interventions.{i}.name",
                                  f"group key {g.key!r} is also produced by interventions.{seen[g.key]}; "
                                  "give one of them a distinct `name`")
            seen[g.key] = i
            groups.append(g)
    return specs, groups

"""The adapters a vLLM engine serves: saved reftx interventions, loaded against vLLM's model config.

Each adapter is a folder ``ReftModel.save_pretrained`` wrote (``reft_config.json`` +
``interventions.safetensors``) or a run folder (its ``intervention/``). Loading reuses reftx's own
pieces: ``read_config`` (format checks), the plugin loader (``ensure_kind``: out-of-tree primitives
import by the module recorded at save time), ``schedule.plan`` (groups and keys, validated against
the served model's config) and ``make_intervention`` (the registered primitive itself, never a
re-implementation). There is no transformers model in a vLLM worker, so the weights are checked here
the way ``ReftModel.load_trained`` checks them (same keys, same shapes, finite values).

A folder that cannot be served (unknown, another base, damaged, a schedule vLLM cannot place) does
not stop the engine: :func:`load_table` records its one-line error, and a request that names it is
refused with that error at request time while every other request is served.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from reftx.core.errors import ReftError, did_you_mean
from reftx.core.intervention import INTERVENTIONS, Intervention, make_intervention
from reftx.core.plugins import ensure_kind
from reftx.engine import sites
from reftx.engine.schedule import INTERVENTION_DTYPES, Group, plan
from reftx.engine.serialization import CONFIG_NAME, WEIGHTS_NAME, read_config

# components the plugin places in vLLM's decoder layers (vLLM fuses gate/up projections, so
# ``mlp_up`` has no module of its own; raw module paths name transformers modules, not vLLM's)
PLACEABLE = ("block_output", "attention_output", "mlp_output")


class AdapterError(ReftError, ValueError):
    """A request names an adapter that cannot be served (a ValueError: vLLM answers it as a bad
    request and keeps serving the others)."""


@dataclass
class Adapter:
    """One servable adapter: its groups (reftx.engine.schedule) and a primitive per group key."""

    name: str
    folder: Path
    groups: list[Group]
    modules: dict[str, Intervention]
    fingerprint: str  # a hash of the weight file: part of the prefix-cache salt

    def prompt_only(self) -> bool:
        return all(g.positions.mode != "generated" and g.positions.mode != "all" for g in self.groups)


@dataclass
class AdapterTable:
    """Every configured adapter by name: loaded, or the one-line error a request naming it gets."""

    adapters: dict[str, Adapter] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unloaded: set[str] = field(default_factory=set)  # unloaded at runtime (reftx.integrations.vllm.runtime)

    def get(self, name: Any) -> Adapter:
        """The adapter a request names, or a ReftError saying why it cannot be served."""
        if not isinstance(name, str) or not name:
            raise AdapterError(f"extra_args['reft'] must be an adapter name (a non-empty string), got {name!r}")
        if name in self.errors:
            raise AdapterError(f"adapter {name!r} cannot be served: {self.errors[name]}")
        if name in self.unloaded and name not in self.adapters:
            raise AdapterError(f"adapter {name!r} was unloaded from this server; load it again with POST "
                               "/v1/load_reft_adapter {\"name\": ..., \"path\": ...}")
        if name not in self.adapters:
            known = sorted([*self.adapters, *self.errors])
            raise AdapterError(f"unknown adapter {name!r} in extra_args['reft']{did_you_mean(name, known)}; "
                            f"this server has: {', '.join(known) or 'none'} (add it to additional_config "
                            "{'reftx': {'adapters': {name: folder}}})")
        return self.adapters[name]


def _folder(directory: str | Path) -> Path:
    path = Path(directory).expanduser()
    if not (path / CONFIG_NAME).is_file() and (path / "intervention" / CONFIG_NAME).is_file():
        return path / "intervention"  # a run folder
    return path


def _check_base(meta: dict[str, Any], hf_config: Any) -> None:
    saved = meta["model"]
    if saved["model_type"] != hf_config.model_type:
        raise ReftError(f"it was trained on model_type {saved['model_type']!r} "
                        f"({saved.get('name_or_path') or 'unnamed'}), but vLLM serves {hf_config.model_type!r}; "
                        "serve it with the base it was trained on")
    layers = saved.get("num_layers")
    if layers is not None and layers != sites.num_layers(hf_config):
        raise ReftError(f"it was trained on a {layers}-layer {saved['model_type']} "
                        f"({saved.get('name_or_path') or 'unnamed'}), but the served model has "
                        f"{sites.num_layers(hf_config)} layers; serve it with the base it was trained on")
    if meta.get("train_modules"):
        raise ReftError(f"it trains base modules {list(meta['train_modules'])}, which a shared vLLM model "
                        "cannot swap per request; evaluate it with reftx.ReftModel instead")


def _check_placeable(groups: list[Group]) -> None:
    for g in groups:
        if g.component not in PLACEABLE:
            raise ReftError(f"group {g.key}: component {g.component!r} cannot be placed in vLLM's layers; "
                            f"the vLLM plugin places {', '.join(PLACEABLE)}")


def _load_weights(path: Path, modules: dict[str, Intervention]) -> None:
    """Fill ``modules`` from the weight file with ReftModel.load_trained's checks."""
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise ReftError(f"{path} not found: not a reftx intervention directory (or an incomplete one)") from None
    except Exception as e:  # safetensors reports truncation and bad headers with its own error type
        raise ReftError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or truncated") from None
    expected = {f"{k}.{n}": t for k, m in modules.items() for n, t in m.state_dict().items()}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ReftError(f"{path} does not match its {CONFIG_NAME}: missing {missing}, unexpected {extra}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise ReftError(f"{path}: tensor {name!r} has shape {tuple(got.shape)}, but the served model needs "
                            f"{tuple(want.shape)} (trained on a base of another width?)")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ReftError(f"{path}: tensor {name!r} holds NaN or inf values (a diverged run?)")
    for key, mod in modules.items():
        mod.load_state_dict({n: tensors[f"{key}.{n}"] for n in mod.state_dict()})


def load_adapter(name: str, directory: str | Path, hf_config: Any, dtype: torch.dtype) -> Adapter:
    """Load one folder for a model with ``hf_config`` whose activations have ``dtype``."""
    folder = _folder(directory)
    meta = read_config(folder / CONFIG_NAME)
    _check_base(meta, hf_config)
    for kind, module in (meta.get("modules") or {}).items():
        ensure_kind(INTERVENTIONS, kind, module)
    specs, groups = plan(meta["interventions"], hf_config)
    _check_placeable(groups)
    modules = {}
    for g in groups:
        spec = specs[g.spec_index]
        mod = make_intervention(spec.kind, spec.options, g.dim, f"interventions.{g.spec_index}.")
        modules[g.key] = mod.to(dtype=INTERVENTION_DTYPES[spec.dtype] or dtype).eval().requires_grad_(False)
    weights = folder / WEIGHTS_NAME
    _load_weights(weights, modules)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return Adapter(name, folder, groups, modules, digest)


def load_table(adapters: dict[str, Any], hf_config: Any, dtype: torch.dtype) -> AdapterTable:
    """Every ``{name: folder}``: a folder that fails keeps its one-line error under its name."""
    table = AdapterTable()
    for name, directory in adapters.items():
        try:
            if not isinstance(name, str) or not name:
                raise ReftError("adapter names must be non-empty strings")
            table.adapters[name] = load_adapter(name, directory, hf_config, dtype)
        except (ReftError, ValueError) as e:  # ConfigError is a ReftError: a bad entry names its field
            table.errors[str(name)] = f"{directory}: {e}"
    return table

"""Sites: component names -> module paths per ``model_type``.

A component names *where* in a block the hidden state is read and edited:

| component          | meaning                                              | width            |
|--------------------|------------------------------------------------------|------------------|
| `block_input`      | residual stream entering block L (forward pre-hook)  | hidden size      |
| `block_output`     | residual stream leaving block L                      | hidden size      |
| `attention_output` | attention sublayer output, before the residual add   | hidden size      |
| `mlp_output`       | MLP sublayer output, before the residual add         | hidden size      |
| `mlp_up`           | output of the MLP up-projection                       | intermediate size|
| `embeddings`       | output of the embedding layer (no layer index)       | hidden size      |

Any other component string containing ``{layer}`` or a dot is a raw module path
relative to the model given to ``attach`` (e.g. ``model.layers.{layer}.mlp.down_proj``);
its output is edited. Raw paths are the escape hatch for unsupported models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from reftx.core.errors import ConfigError, unknown

_RAW_HINT = "; or a raw module path containing '.' such as 'model.layers.{layer}.mlp'"
COMPONENTS = ("block_input", "block_output", "attention_output", "mlp_output", "mlp_up", "embeddings")

# Paths relative to the backbone; "{layer}" is substituted. block_input uses a pre-hook.
_DECODER = {
    "layers": "layers",
    "block_input": "layers.{layer}",
    "block_output": "layers.{layer}",
    "attention_output": "layers.{layer}.self_attn",
    "mlp_output": "layers.{layer}.mlp",
    "mlp_up": "layers.{layer}.mlp.up_proj",
    "embeddings": "embed_tokens",
}
_GPT2 = {
    "layers": "h",
    "block_input": "h.{layer}",
    "block_output": "h.{layer}",
    "attention_output": "h.{layer}.attn",
    "mlp_output": "h.{layer}.mlp",
    "mlp_up": "h.{layer}.mlp.c_fc",
    "embeddings": "drop",  # token + position embeddings, after embedding dropout
}
_BERT = {
    "layers": "encoder.layer",
    "block_input": "encoder.layer.{layer}",
    "block_output": "encoder.layer.{layer}",
    "attention_output": "encoder.layer.{layer}.attention.output.dense",
    "mlp_output": "encoder.layer.{layer}.output.dense",
    "mlp_up": "encoder.layer.{layer}.intermediate.dense",
    "embeddings": "embeddings",
}


@dataclass(frozen=True)
class Architecture:
    paths: dict[str, str]
    backbones: tuple[str, ...]  # attribute paths tried, in order, to find the backbone
    layers_attr: tuple[str, ...] = ("num_hidden_layers", "n_layer")
    hidden_attr: tuple[str, ...] = ("hidden_size", "n_embd")
    inner_attr: tuple[str, ...] = ("intermediate_size", "n_inner")


ARCHITECTURES: dict[str, Architecture] = {
    **{t: Architecture(_DECODER, ("model", "")) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")},
    "gpt2": Architecture(_GPT2, ("transformer", "")),
    "bert": Architecture(_BERT, ("bert", "")),
    "roberta": Architecture(_BERT, ("roberta", "")),
}


def is_raw_path(component: str) -> bool:
    return component not in COMPONENTS and ("." in component or "{layer}" in component)


def architecture(config: Any) -> Architecture:
    mt = getattr(config, "model_type", None)
    if mt not in ARCHITECTURES:
        raise unknown("model_type", str(mt), ARCHITECTURES, "model type",
                      "; or give a raw module path such as 'model.layers.{layer}.mlp' as the component")
    return ARCHITECTURES[mt]


def _first_attr(config: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def num_layers(config: Any) -> int:
    n = _first_attr(config, ("num_hidden_layers", "n_layer"))
    if n is None:
        raise ConfigError("model", f"cannot tell the number of layers of model_type {config.model_type!r}")
    return int(n)


def component_width(config: Any, component: str, field: str = "component") -> int:
    """Width of the hidden state at ``component`` (raw paths: the hidden size unless given)."""
    hidden = int(_first_attr(config, ("hidden_size", "n_embd", "d_model")))
    if component == "mlp_up":
        inner = _first_attr(config, ("intermediate_size", "n_inner"))
        return int(inner) if inner is not None else 4 * hidden
    if component in COMPONENTS or is_raw_path(component):
        return hidden
    raise unknown(field, component, COMPONENTS, "component", _RAW_HINT)


def check_component(component: str, field: str = "component") -> None:
    if component not in COMPONENTS and not is_raw_path(component):
        raise unknown(field, component, COMPONENTS, "component", _RAW_HINT)


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        return None


def output_width(module: nn.Module) -> int | None:
    """The width of ``module``'s output when its type tells it (linear, embedding, norm), else None."""
    for attr in ("out_features", "embedding_dim", "nf"):  # nf: transformers' Conv1D (gpt2)
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, tuple) and shape:
        return int(shape[-1])
    return None


def resolve(model: nn.Module, component: str, layer: int | None, field: str = "component",
            width: int | None = None) -> nn.Module:
    """The module whose output (or input, for block_input) is edited. A raw path must name a module
    that is called (not a container such as ``model.layers``) and, when its type tells its output
    width, one of ``width``."""
    if is_raw_path(component):
        path = component.replace("{layer}", str(layer))
        mod = _get(model, path)
        if mod is None:
            raise ConfigError(field, f"raw module path {path!r} does not exist in {type(model).__name__}")
        if isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            raise ConfigError(field, f"raw module path {path!r} names a container ({type(mod).__name__}), which is "
                                     f"never called, so nothing would be edited; name one module inside it, "
                                     f"e.g. {path}.0")
        found = output_width(mod)
        if width is not None and found is not None and found != width:
            raise ConfigError(field, f"raw module path {path!r} ({type(mod).__name__}) outputs width {found}, but "
                                     f"the intervention is built for width {width} (the model's hidden size); "
                                     "use a module whose output is the hidden state")
        return mod
    check_component(component, field)
    arch = architecture(model.config)
    for bb in arch.backbones:
        prefix = f"{bb}." if bb else ""
        if _get(model, prefix + arch.paths["layers"]) is None:
            continue
        path = prefix + arch.paths[component].replace("{layer}", str(layer))
        mod = _get(model, path)
        if mod is None:
            raise ConfigError(field, f"{component!r} maps to {path!r}, which {type(model).__name__} lacks")
        return mod
    raise ConfigError("model", f"cannot find the transformer layers of {type(model).__name__}")


def uses_pre_hook(component: str) -> bool:
    return component == "block_input"

"""The intervention contract.

An intervention primitive is an ``nn.Module`` registered under a name with
``@register_intervention("name")``. It declares a nested frozen dataclass
``Config`` holding only YAML-safe fields (numbers, strings, booleans, tuples),
is built as ``Cls(config, dim)`` where ``dim`` is the width of the hidden state
at its site, and implements

    forward(h: Tensor[n, dim], ctx: Context) -> Tensor[n, dim]

``h`` holds only the gathered, scheduled positions of one forward pass (rows
of different examples stacked together); the primitive never sees padding or
position indices. It must return a tensor of the same shape and dtype.
``ctx.batch_index[i]`` tells which example row ``i`` came from, for primitives
that need per-example information (gate losses); ``ctx.record`` and
``ctx.add_loss`` publish values and auxiliary losses for the training loop.

Nothing else needs editing anywhere to add a primitive.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from reftx.core.errors import ConfigError
from reftx.core.registry import Registry

INTERVENTIONS: Registry[type[Intervention]] = Registry("intervention")


def register_intervention(name: str, replace: bool = False) -> Callable[[type[Intervention]], type[Intervention]]:
    """Class decorator: register an ``Intervention`` subclass under ``name`` (``replace``: see ``Registry``)."""

    def wrap(cls: type[Intervention]) -> type[Intervention]:
        if not (isinstance(cls, type) and issubclass(cls, Intervention)):
            raise TypeError(f"@register_intervention({name!r}) needs an Intervention subclass, got {cls!r}")
        cfg = getattr(cls, "Config", None)
        if cfg is None or not dataclasses.is_dataclass(cfg) or not cfg.__dataclass_params__.frozen:
            raise TypeError(f"{cls.__name__}.Config must be a frozen dataclass")
        gone = [m for m in ("parameter_losses", "loss_scale", "after_optimizer_step") if hasattr(cls, m)]
        if gone:  # removed in 0.2: a silent no-op would drop the primitive's terms
            raise TypeError(f"{cls.__name__} defines {', '.join(gone)}, which reftx 0.2 no longer calls: return "
                            "objects of the reftx.core.intervention.Modifier protocol (loss, scale, after_step, "
                            "group) from modifiers() instead")
        cls.kind = name
        return INTERVENTIONS.register(name, replace)(cls)

    return wrap


def available_interventions() -> list[str]:
    """Sorted names of every registered intervention primitive."""
    return INTERVENTIONS.names()


def get_intervention(kind: str, field: str = "kind") -> type[Intervention]:
    return INTERVENTIONS.get(kind, field)


def defining_module(kind: str) -> str:
    """The module that registered ``kind``: a class's own module (``@register_intervention``), or
    the module that called ``register_primitive`` (the composition's ``__module__``). What a saved
    ``reft_config.json`` records, so ``from_pretrained`` in a fresh process can import it."""
    return INTERVENTIONS.get(kind).__module__


@dataclass
class Context:
    """What a primitive may know about the current forward pass besides ``h``.

    batch_index: (n,) long tensor, the example each gathered row belongs to.
    batch_size:  number of examples in the batch.
    key:         the group key (e.g. ``L5.block_output.last``) the call is for.
    layer:       the layer index of this site (-1 for embeddings).
    """

    batch_index: Tensor
    batch_size: int
    key: str = ""
    layer: int = -1
    example_info: dict[str, Tensor] = field(default_factory=dict)
    records: dict[str, list[Tensor]] = field(default_factory=dict)
    losses: dict[str, list[Tensor]] = field(default_factory=dict)

    def record(self, name: str, value: Tensor) -> None:
        """Publish a detached value (e.g. gate activations) for logging under ``key/name``."""
        self.records.setdefault(f"{self.key}/{name}", []).append(value.detach())

    def add_loss(self, name: str, value: Tensor) -> None:
        """Add an (already weighted) auxiliary loss: reported in ``out["aux_losses"]`` (summed over sites)
        and added to the training loss by reftx.train.loss.compose."""
        self.losses.setdefault(name, []).append(value)

    def at(self, key: str, layer: int, batch_index: Tensor) -> Context:
        """The same forward-pass context, seen from another site."""
        return Context(batch_index, self.batch_size, key, layer, self.example_info, self.records, self.losses)


def build_config(cls: type[Intervention], options: dict[str, Any], prefix: str = "") -> Any:
    """Build ``cls.Config`` from a plain dict with the one strict converter (reftx.core.convert.from_dict):
    unknown keys (with a did-you-mean) and wrong types raise, naming the dotted path."""
    from reftx.core.convert import from_dict  # config imports nothing from here

    return from_dict(cls.Config, options, prefix.rstrip("."), f"option of intervention {cls.kind!r}")


@runtime_checkable
class Modifier(Protocol):
    """What acts on a primitive's parameters from outside its forward, as the training loss and the
    optimizer step see it (one protocol for every such term):

    * ``loss() -> {name: tensor}``: parameter losses added to the objective's term (a hinge on a
      bias norm), already weighted;
    * ``scale() -> tensor | None``: a multiplier of the whole loss (BREP's PID weight), or None;
    * ``after_step()``: work after each optimizer step (a projection onto a norm ball);
    * ``group``: a class whose ``after_step_all(items)`` updates every modifier of that class in a
      model together (BREP's PID controller follows the mean norm over the sites), or None;
      ``items`` are the modifiers' ``shared_state()``.
    """

    group: Any

    def loss(self) -> dict[str, Tensor]: ...

    def scale(self) -> Tensor | None: ...

    def after_step(self) -> None: ...


def after_step(mods: Iterable[Intervention]) -> None:
    """After an optimizer step: each modifier's ``after_step`` (e.g. a norm projection), then the
    group-level updates: a modifier whose ``group`` is set is updated with every other modifier of
    that class in ``mods`` at once (``group.after_step_all``)."""
    shared: dict[type, list] = defaultdict(list)
    for mod in mods:
        for m in mod.modifiers():
            m.after_step()
            if m.group is not None:
                shared[m.group].append(m.shared_state())
    for cls, items in shared.items():
        cls.after_step_all(items)


class Intervention(nn.Module):
    """Base class of every primitive. Subclasses set ``Config`` and implement ``forward``.

    Optional extension points, all with harmless defaults:
      * ``modifiers()``: the :class:`Modifier` objects acting on this primitive (a parameter loss
        such as a norm penalty, a loss scale such as BREP's PID weight, work after each optimizer
        step such as a norm projection); the only way a primitive adds to the loss outside its
        forward (inside it: ``ctx.add_loss``);
      * ``no_decay_parameters()``: names of parameters to keep out of weight decay;
      * ``stack_key()`` / ``stacked_params()`` / ``forward_stacked()``: run with others of its kind at a
        site as one batch.
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, config: Any, dim: int):
        super().__init__()
        self.config = config
        self.dim = int(dim)

    def forward(self, h: Tensor, ctx: Context) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stack_key(self) -> Hashable | None:
        """Opt-in batching (reftx.engine.stacked): consecutive interventions of one site with equal,
        non-None keys may run together through ``forward_stacked``. None (the default): always alone."""
        return None

    def stacked_params(self, modules: list[Intervention]) -> tuple[Tensor, ...]:
        """The parameters of ``modules`` (all with this ``stack_key``, at any sites of the model; ``self``
        is ``modules[0]``) stacked along a new first dimension: tensors (N, ...). Called once per
        forward, so that the parameters of every layer are stacked together, not layer by layer."""
        raise NotImplementedError(f"{type(self).__name__} returns a stack_key but has no stacked_params")

    def forward_stacked(self, params: tuple[Tensor, ...], h: Tensor) -> Tensor:
        """h: (k, n, dim), block i the rows of the i-th of k interventions with this ``stack_key``;
        ``params``: their ``stacked_params``, each tensor sliced to those k (``self`` is the first of
        them) -> (k, n, dim) in h's dtype, equal to ``cast_call(modules[i], h[i], ctx)`` for every i.
        Never gets a ctx: a primitive that reads or writes one returns None from ``stack_key``."""
        raise NotImplementedError(f"{type(self).__name__} returns a stack_key but has no forward_stacked")

    def modifiers(self) -> list[Modifier]:
        """The modifiers acting on this primitive; the training loss (reftx.train.loss) and
        :func:`after_step` reach them only through this list."""
        return []

    def no_decay_parameters(self) -> set[str]:
        """Names (relative to this module) of parameters excluded from weight decay."""
        out = set()
        for mod_name, mod in self.named_modules():
            for p in getattr(mod, "no_decay", ()):
                out.add(f"{mod_name}.{p}" if mod_name else p)
        return out

    def decay_split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(parameters with weight decay, parameters without: ``no_decay_parameters``)."""
        skip = self.no_decay_parameters()
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if name in skip else decay).append(p)
        return decay, no_decay

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups of this primitive alone: orthonormal bases (and anything it lists) skip decay."""
        decay, no_decay = self.decay_split()
        return [g for g in ({"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}) if g["params"]]

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dim={self.dim}, config={self.config}"


def make_intervention(kind: str, options: dict[str, Any], dim: int, prefix: str = "") -> Intervention:
    cls = get_intervention(kind, f"{prefix}kind")
    config = build_config(cls, options, prefix)
    try:
        return cls(config, dim)
    except ConfigError as e:  # e.g. rank > width: re-root the field under the entry
        raise ConfigError(f"{prefix}{e.field}", str(e).split(": ", 1)[-1]) from None


def cast_call(module: Intervention, h: Tensor, ctx: Context) -> Tensor:
    """Run ``module`` in its parameter dtype and return in ``h``'s dtype."""
    p = next(module.parameters(), None)
    if p is None or p.dtype == h.dtype:
        return module(h, ctx)
    return module(h.to(p.dtype), ctx).to(h.dtype)


__all__ = [
    "Context",
    "INTERVENTIONS",
    "Intervention",
    "Modifier",
    "after_step",
    "available_interventions",
    "build_config",
    "cast_call",
    "defining_module",
    "get_intervention",
    "make_intervention",
    "register_intervention",
]

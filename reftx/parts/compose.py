"""Shared parts that primitives are composed from.

* ``OrthoBasis``: a rank-r basis R (r x d) with orthonormal rows.
* ``FreeBasis``: an unconstrained r x d projection.
* ``BiasSource`` / ``nn.Linear``: the "target" inside the subspace (b, or W h + b).
* ``Delta``: ``h + dropout(σ(g(h)) · Δ(h))``, the one composed primitive: parts, an edit rule
  Δ that reads them, and the shared modifiers (input gate, dropout, a bound on the edit's bias)
  configured by ``DeltaConfig``. Methods are registered compositions (``register_primitive``),
  never subclasses; options compose the same way (``compose_config``).
* ``subspace(...)``: Δ(h) = Rᵀ (s(h) ⊙ (act(source(h)) − [R h])), the whole ReFT family
  (LoReFT, DiReFT, NoReFT, ...) as parts and a rule chosen by three arguments, s a per-basis
  gate (BaFT), with hooks on s(h) and on the coordinates.
* ``scale_bias``: Δ(h) = (a − 1) ⊙ h + c, elementwise scale and bias (RED, BREP).
* ``BoundOn``: a bound on the edit's bias as a ``reftx.core.intervention.Modifier`` (``loss``,
  ``scale``, ``after_step``), the one protocol the training loss reaches modifiers through; a new
  modifier is a registration in ``BOUNDS``/``INPUT_GATES``/``BASIS_GATES``.

Orthonormality is kept by a QR parametrization: the parameter is a free d x r
matrix A, and R = Qᵀ where A = QU is its reduced QR with diag(U) > 0 (the sign
fix makes the map smooth and unique). This is the same constraint as torch's
Householder ``orthogonal`` parametrization with a different, cheaper map: all
bases of one model are orthonormalised together in one batched QR per forward
(``shared_rotations``), and weight decay only rescales A, which leaves R
unchanged, so R can never collapse to zero under AdamW.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reftx.core.convert import compose_config
from reftx.core.errors import ConfigError, unknown
from reftx.core.intervention import Context, Intervention
from reftx.core.registry import Registry
from reftx.engine.rotations import OrthoBasis, orthonormalize  # noqa: F401  (re-exported for primitives)
from reftx.parts.stacking import stacked_scale_bias, stacked_subspace

ACTIVATIONS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
Activation = Literal["identity", "relu", "gelu", "silu", "tanh", "sigmoid"]


class FreeBasis(nn.Module):
    """An unconstrained projection W in R^{r x d} (initialised like ``nn.Linear(d, r)``)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rank, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def matrix(self) -> Tensor:
        return self.weight


class BiasSource(nn.Module):
    """A learned constant b in R^r, the target of ConsReFT and LoBiReFT (zero at init)."""

    def __init__(self, rank: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(rank))

    def forward(self, h: Tensor) -> Tensor:
        return self.bias.expand(*h.shape[:-1], -1)


# -- modifiers: registries filled by reftx/parts/basis_gates.py, reftx/parts/input_gates.py, reftx/parts/norm_bounds.py ----------
BASIS_GATES: Registry[Callable[..., nn.Module]] = Registry("basis gate")
INPUT_GATES: Registry[Callable[..., nn.Module]] = Registry("input gate")
BOUNDS: Registry[Callable[..., nn.Module]] = Registry("bound")


def check_modifier(registry: Registry, name: str, field: str) -> None:
    """``name`` is "none" or a modifier registered in ``registry`` (installed plugins included):
    a new modifier is one registration, with no list of names to edit anywhere."""
    if name != "none" and name not in registry.names():
        raise unknown(field, name, ["none", *registry.names()], registry.what)


def _modifier(registry: Registry, name: str, field: str, *args: Any) -> nn.Module | None:
    return None if name == "none" else registry.get(name, field)(*args)


@dataclass(frozen=True)
class DeltaConfig:
    """Modifiers every edit accepts (all off by default).

    dropout: dropout probability on the edit Δ(h); never on h itself.
    input_gate: scale the edit by σ(g(h)), one scalar per row (GRUN): none | linear | mlp.
    gate_loss_weight: λ of the BCE loss pulling σ(g(h)) to each example's ``gate_label``
      (1 forget, 0 retain), summed over the sites; needs ``example_info["gate_label"]``.
    bound: restrain the edit's bias c: none | pid (loss multiplier, BREP's reference code) |
      project (onto ||c|| <= bound_tau after each step) | hinge (λ·max(0, ||c|| − τ)²).
    bound_tau: τ, the norm bound. bound_lambda: λ of the hinge penalty.
    """

    dropout: float = 0.0
    input_gate: str = "none"
    gate_loss_weight: float = 0.0
    bound: str = "none"
    bound_tau: float = 1.0
    bound_lambda: float = 1.0

    def __post_init__(self):
        check_modifier(INPUT_GATES, self.input_gate, "input_gate")
        check_modifier(BOUNDS, self.bound, "bound")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.gate_loss_weight < 0:
            raise ConfigError("gate_loss_weight", f"must be >= 0, got {self.gate_loss_weight}")
        if self.gate_loss_weight > 0 and self.input_gate == "none":
            raise ConfigError("gate_loss_weight", "needs an input_gate (linear or mlp)")
        if self.bound_tau <= 0:
            raise ConfigError("bound_tau", f"must be > 0, got {self.bound_tau}")


class BoundOn:
    """A bound acting on one bias, as the :class:`reftx.core.intervention.Modifier` protocol: the
    bound's hinge ``loss``, its ``scale`` (PID) and its ``after_step`` (projection), each given the
    bias it restrains."""

    __slots__ = ("module", "bias")

    def __init__(self, module: nn.Module, bias: nn.Parameter):
        self.module, self.bias = module, bias

    def loss(self) -> dict[str, Tensor]:
        return self.module.loss(self.bias)

    def scale(self) -> Tensor | None:
        return self.module.loss_scale()

    def after_step(self) -> None:
        self.module.after_step(self.bias)

    def shared_state(self) -> tuple[nn.Module, nn.Parameter]:
        return self.module, self.bias

    @property
    def group(self) -> Any:
        return type(self.module) if hasattr(type(self.module), "after_step_all") else None


EditRule = Callable[["Delta", Tensor, Context], Tensor]


class Delta(Intervention):
    """``h' = h + dropout(σ(g(h)) · Δ(h))``: the one composed primitive.

    Composed of *parts* (submodules, e.g. a basis and a source), an *edit rule* ``rule(self, h,
    ctx) -> Δ(h)`` that reads them, and the shared *modifiers* that ``DeltaConfig`` switches on
    (input gate, dropout, a bound on the parameter named ``bias``). Every method of the zoo is a
    ``Delta`` built by :func:`register_primitive`, not a subclass."""

    def __init__(self, config: Any, dim: int, kind: str, build: Callable[[Any, int], dict[str, Any]]):
        super().__init__(config, dim)
        self.kind = kind
        self.input_gate = _modifier(INPUT_GATES, config.input_gate, "input_gate", dim, config)
        spec = build(config, dim)  # after the input gate: the order parameters are initialised in
        for name, part in spec["parts"].items():
            setattr(self, name, part)
        self.rule: EditRule = spec["rule"]
        self.on_forward = spec.get("on_forward")
        self._bias: str | None = spec.get("bias")
        self.bound = None
        if config.bound != "none":
            if self._bias is None:
                raise ConfigError("bound", f"{kind!r} has no bias to bound")
            self.bound = _modifier(BOUNDS, config.bound, "bound", config)

    def bias(self) -> nn.Parameter | None:
        """The parameter a bound restrains (the edit's bias), or None."""
        return None if self._bias is None else self.get_parameter(self._bias)

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        if self.on_forward is not None:
            self.on_forward(self, ctx)
        d = self.rule(self, h, ctx)
        if self.input_gate is not None:
            d = self.input_gate(h, ctx) * d
        if self.config.dropout > 0:
            d = F.dropout(d, self.config.dropout, self.training)
        return h + d

    def modifiers(self) -> list[BoundOn]:
        return [] if self.bound is None else [BoundOn(self.bound, self.bias())]

    def stack_key(self) -> Any:
        """Edits of one composition and config stack at a site (reftx.engine.stacked) when the rule has a
        batched form (``rule.stacked``: reftx.parts.stacking) and nothing else acts in the forward (no
        input or basis gate, no dropout, no ``on_forward``); otherwise None: each runs alone."""
        batched = getattr(self.rule, "stacked", None)
        if (batched is None or self.input_gate is not None or self.has_basis_gate or self.config.dropout > 0
                or self.on_forward is not None):
            return None
        return batched, self.dim, self.config

    def stacked_params(self, modules: list[Intervention]) -> tuple[Tensor, ...]:
        return self.rule.stacked.params(modules)

    def forward_stacked(self, params: tuple[Tensor, ...], h: Tensor) -> Tensor:
        return self.rule.stacked.apply(self, params, h)

    @property
    def has_basis_gate(self) -> bool:
        return getattr(self, "basis_gate", None) is not None

    def gate_weights(self, h: Tensor) -> Tensor | None:
        """s(h), the per-basis weights of its basis gate on rows ``h`` (None without a gate):
        what BaFT's site-state losses read (reftx.recipes.edit.engine), without reaching into the parts."""
        gate = getattr(self, "basis_gate", None)
        return None if gate is None else gate(h, Context(torch.zeros(len(h), dtype=torch.long, device=h.device), 1))


class Primitive:
    """A registered composition: ``Primitive(config, dim)`` builds its ``Delta``. It carries what
    the registry and the docs read of a primitive: ``kind``, ``Config``, ``__doc__``, ``__module__``."""

    def __init__(self, kind: str, config: type, build: Callable[[Any, int], dict[str, Any]], doc: str, module: str):
        self.kind, self.Config, self.build, self.__doc__, self.__module__ = kind, config, build, doc, module

    def __call__(self, config: Any, dim: int) -> Delta:
        return Delta(config, dim, self.kind, self.build)

    def __repr__(self) -> str:
        return f"<primitive {self.kind!r} ({self.__module__})>"


def register_primitive(kind: str, config: type, build: Callable[[Any, int], dict[str, Any]], doc: str,
                       replace: bool = False) -> Primitive:
    """Register a composed primitive: ``build(config, dim)`` returns ``Delta``'s keyword arguments
    (``parts``, ``rule``, and optionally ``bias`` and ``on_forward``). ``config`` is a frozen
    dataclass holding the ``DeltaConfig`` modifier fields (``compose_config`` makes one). ``replace``:
    see ``reftx.core.registry.Registry`` (re-running the same cell replaces quietly anyway)."""
    import inspect

    from reftx.core.intervention import INTERVENTIONS

    missing = [f for f in ("dropout", "input_gate", "bound") if f not in {x.name for x in dataclasses.fields(config)}]
    if missing:
        raise TypeError(f"register_primitive({kind!r}): {config.__name__} lacks the modifier fields {missing} "
                        "(build it with compose_config(..., DeltaConfig, ...))")
    module = inspect.currentframe().f_back.f_globals.get("__name__", __name__)
    return INTERVENTIONS.register(kind, replace)(Primitive(kind, config, build, doc, module))


@dataclass(frozen=True)
class SubspaceOptions:
    """The subspace family's own options (see ``SubspaceConfig``)."""

    rank: int = 4
    activation: Activation = "identity"
    basis_gate: str = "none"
    basis_topk: int = 0
    basis_gate_input: Literal["raw", "unit"] = "raw"

    def __post_init__(self):
        check_modifier(BASIS_GATES, self.basis_gate, "basis_gate")
        if self.rank < 1:
            raise ConfigError("rank", f"must be >= 1, got {self.rank}")
        if not 0 <= self.basis_topk <= self.rank:
            raise ConfigError("basis_topk", f"must be in [0, rank={self.rank}], got {self.basis_topk}")


SubspaceConfig = compose_config("SubspaceConfig", DeltaConfig, SubspaceOptions, doc="""The subspace family: every DeltaConfig modifier, plus

    rank: r, the subspace dimension (1 <= r <= hidden width).
    activation: applied to the target ``W h + b`` (identity in the ReFT paper).
    basis_gate: per-basis weights s(h) in the subspace (BaFT): none | sigmoid | softmax | topk.
    basis_topk: k for the topk gate (0: rank // 2).
    basis_gate_input: what the gate's router reads: raw (h itself) | unit (h / ‖h‖₂, so the size of
      one optimiser step on the router does not grow with the norm of the hidden states).
    """)

Hook = Callable[[Delta, Tensor, Context], Tensor]


def subspace(orthogonal: bool = True, source: Literal["linear", "bias"] = "linear", subtract: bool = True,
             on_weights: Callable[[Delta, Tensor, Context], None] | None = None,
             on_coordinates: Hook | None = None) -> Callable[[Any, int], dict[str, Any]]:
    """The ReFT family as parts and a rule: ``Δ(h) = Bᵀ (s(h) ⊙ (act(T(h)) − [B h]))``.

    orthogonal: B has orthonormal rows (``OrthoBasis``, kept so under AdamW) or is free
    (``FreeBasis``); source: T(h) = W h + b ("linear") or the constant b ("bias"); subtract:
    whether the current coordinates B h are subtracted. s(h): the config's ``basis_gate`` (none:
    s ≡ 1). Hooks: ``on_weights(delta, s, ctx)`` sees s(h) (BaFT adds its losses there);
    ``on_coordinates(delta, z, ctx) -> z`` changes the (n, r) edit before it is mapped back (top-k)."""

    def rule(m: Delta, h: Tensor, ctx: Context) -> Tensor:
        basis = m.basis.matrix()
        z = m.act(m.source(h))
        if subtract:
            z = z - h @ basis.T
        if m.basis_gate is not None:
            s = m.basis_gate(h, ctx)
            if on_weights is not None:
                on_weights(m, s, ctx)
            z = z * s
        if on_coordinates is not None:
            z = on_coordinates(m, z, ctx)
        return z @ basis

    rule.stacked = stacked_subspace(source, subtract) if on_weights is None and on_coordinates is None else None

    def build(config: Any, dim: int) -> dict[str, Any]:
        if config.rank > dim:
            raise ConfigError("rank", f"rank {config.rank} is larger than the hidden width {dim} at this site")
        parts = {"basis": (OrthoBasis if orthogonal else FreeBasis)(dim, config.rank),
                 "source": nn.Linear(dim, config.rank) if source == "linear" else BiasSource(config.rank),
                 "act": ACTIVATIONS[config.activation](),
                 "basis_gate": _modifier(BASIS_GATES, config.basis_gate, "basis_gate", dim, config)}
        return {"parts": parts, "rule": rule, "bias": "source.bias"}

    return build


def scale_bias(config: Any, dim: int) -> dict[str, Any]:
    """Elementwise scale and bias (RED, BREP): ``Δ(h) = (a − 1) ⊙ h + c``, i.e. ``h' = a ⊙ h + c``;
    a starts at 1 and c at 0, so the edit starts as the identity. Width = the site's width."""

    def rule(m: Delta, h: Tensor, ctx: Context) -> Tensor:
        return (m.scale - 1) * h + m.shift

    rule.stacked = stacked_scale_bias
    parts = {"scale": nn.Parameter(torch.ones(dim)), "shift": nn.Parameter(torch.zeros(dim))}
    return {"parts": parts, "rule": rule, "bias": "shift"}


__all__ = [
    "ACTIVATIONS",
    "BASIS_GATES",
    "BOUNDS",
    "BiasSource",
    "Delta",
    "DeltaConfig",
    "FreeBasis",
    "INPUT_GATES",
    "BoundOn",
    "OrthoBasis",
    "Primitive",
    "SubspaceConfig",
    "SubspaceOptions",
    "check_modifier",
    "register_primitive",
    "scale_bias",
    "subspace",
]

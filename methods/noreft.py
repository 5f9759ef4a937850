"""NoReFT: LoReFT without the orthogonality constraint."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("noreft")
class NoReFT(SubspaceIntervention):
    """h' = h + W2ᵀ(W1 h + b − W2 h); trains W1, W2, b."""

    orthogonal = False
    source_kind = "linear"
    subtract = True

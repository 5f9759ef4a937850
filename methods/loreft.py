"""LoReFT (Wu et al. 2024): low-rank linear subspace ReFT."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("loreft")
class LoReFT(SubspaceIntervention):
    """h' = h + Rᵀ(W h + b − R h); R (r x d) has orthonormal rows; trains R, W, b."""

    orthogonal = True
    source_kind = "linear"
    subtract = True

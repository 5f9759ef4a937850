"""Tutorial: a new ReFT variant, end to end: define it, check it, train it, compare it with LoReFT.

The variant, KeepNorm-ReFT, is LoReFT whose edited state keeps the length of the state it edits:

    u  = h + Rᵀ(W h + b − R h)        LoReFT's edited state
    h' = ‖h‖ · u / ‖u‖                turned towards u, never resized

so the edit can change which way the residual stream points, never how large it is. It is a
question worth a quick experiment (does LoReFT need to change norms to teach a persona?) and small
enough to read in one sitting. The steps:

1. register it: a config, a build function (LoReFT's parts, one new rule) and one call;
2. look at it: build one, check the property the formula promises, see its parameter count;
3. run the contract suite on it, the same tests every shipped primitive passes;
4. train it and LoReFT on the same task with the same budget, through reftx.run;
5. compare their results.

    python docs/tutorial_new_variant.py                         # the default model: a few minutes on a CPU
    python docs/tutorial_new_variant.py --model PATH --steps 5 --out /tmp/tutorial

Importing this file only registers the variant (step 1), so the command line can use it too:
``reftx --import docs/tutorial_new_variant.py check keepnorm_reft``, or ``imports:
[docs/tutorial_new_variant.py]`` in an experiment YAML.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

import reftx
import reftx.testing
from reftx.core.errors import ConfigError
from reftx.core.intervention import Context, make_intervention
from reftx.parts import SubspaceConfig, register_primitive, subspace

KIND = "keepnorm_reft"


# Step 1: the variant. Its config extends SubspaceConfig, so it keeps rank, activation and every shared
# modifier (dropout on the edit, input gates, bounds on the bias) for free; it adds one validated
# option. Fields are frozen and YAML-safe: they are what reft_config.json saves and a YAML file sets.
@dataclass(frozen=True)
class KeepNormConfig(SubspaceConfig):
    """SubspaceConfig (rank, activation, dropout, gates, bound) plus
    eps: the smallest ‖u‖ divided by (keeps the rescaling finite when the edit cancels h)."""

    eps: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not self.eps > 0:
            raise ConfigError("eps", f"must be > 0, got {self.eps}")


# LoReFT itself is subspace(orthogonal=True, source="linear", subtract=True) (methods/loreft.py): its
# build function returns the parts (R, the linear source W h + b) and the rule Δ(h) = Rᵀ(W h + b − R h).
loreft = subspace(orthogonal=True, source="linear", subtract=True)


def build(config: KeepNormConfig, dim: int) -> dict:
    """LoReFT's parts, and a rule that rescales LoReFT's edited state to the length of h. A rule
    returns the edit Δ(h) (the engine adds it to h), so it returns h' − h."""
    spec = loreft(config, dim)
    edit = spec["rule"]

    def rule(delta, h, ctx):
        u = h + edit(delta, h, ctx)
        length = h.norm(dim=-1, keepdim=True) / u.norm(dim=-1, keepdim=True).clamp_min(config.eps)
        return u * length - h

    return {**spec, "rule": rule}


# One call registers it. Running it again (a re-run notebook cell) replaces it quietly; another
# definition under a taken name is refused unless replace=True.
register_primitive(KIND, KeepNormConfig, build,
                   "h' = ‖h‖ · u / ‖u‖ with u = h + Rᵀ(W h + b − R h): LoReFT's edit turns h, "
                   "never resizes it.")


def look_at_it() -> None:
    """Step 2: build one outside any model and check what the formula promises. A primitive sees only
    the scheduled rows of a batch, (n, d), and a small context (which example each row is from)."""
    torch.manual_seed(0)
    mod = make_intervention(KIND, {"rank": 4}, 64)  # what attach() builds at a 64-wide site
    h = 3.0 * torch.randn(10, 64)
    edited = mod(h, Context(torch.zeros(10, dtype=torch.long), 1))
    assert torch.allclose(edited.norm(dim=-1), h.norm(dim=-1), rtol=1e-5)  # the length is kept ...
    turned = torch.rad2deg(torch.arccos(torch.cosine_similarity(edited, h, dim=-1).clamp(-1, 1)))
    assert (turned > 0).all()  # ... and the direction is not (R, W and b start random)
    n_params = sum(p.numel() for p in mod.parameters())
    print(f"{KIND}: {n_params} parameters at width 64, rank 4 (as LoReFT); turns h by {turned.mean():.1f}° at init")


def experiment(kind: str, args: argparse.Namespace) -> dict:
    """Step 4's config: the quickstart's pirate persona (tasks/persona.py) with the given kind; the
    same dict a YAML file would hold, so the two runs differ in nothing else."""
    return {
        "schema": 1, "name": f"tutorial-{kind}", "output_dir": str(args.out), "seed": 0,
        "model": {"name": args.model},
        "task": {"name": "persona"},
        "interventions": [{"kind": kind, "rank": 4, "component": "block_output", "layers": [0.25, 0.5, 0.75],
                           "positions": {"first": 3, "last": 5}, "tie": "positions"}],
        "train": {"max_steps": args.steps, "batch_size": 8, "lr": 4e-3, "warmup": 0.1, "log_every": 5},
        "eval": {"max_new_tokens": 40, "repetition_penalty": 1.2},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        help="what reftx.load_model takes (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps of each training run")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the two run folders")
    args = parser.parse_args(argv)

    look_at_it()

    # Step 3: the contract suite (reftx.testing.contract), on this kind only: shape and dtype kept in
    # fp32 and bf16, gradients reach only intervention parameters, unscheduled and padded positions
    # untouched, save -> load identical, unknown options refused, and every shared modifier on every
    # component of four architectures. pytest's exit code: 0 when every test passed. From a shell:
    # `reftx --import docs/tutorial_new_variant.py check keepnorm_reft`.
    code = reftx.testing.check([KIND], ["-q"])
    if code != 0:
        raise SystemExit(f"the contract suite failed on {KIND} (pytest exit code {code}); see its report above")

    # Step 4: train both with the same budget, each a full run: its folder holds config.yaml, the
    # training curve (metrics.jsonl, loss.png), the intervention and results.json with the held-out
    # metrics. reft_config.json records which module defines each kind, here this script's __main__:
    # to reload the run in another process, import this file first, or move step 1 into a module on
    # sys.path (methods/README.md, "A method outside the repository").
    runs = {kind: reftx.run(experiment(kind, args)) for kind in (KIND, "loreft")}

    # Step 5: the results side by side. One seed and twelve held-out prompts say whether the idea is
    # worth more seeds, not which one wins: for that, run both over seeds and compare them pairwise
    # with `reftx report` (README, "Command line"). On the default model with the defaults, KeepNorm
    # gives persona_open 1.000, persona_close 0.667, distinct_2 0.996 and LoReFT 1.000, 0.750, 1.000,
    # both with 13,836 parameters: keeping norms costs little here, and twelve prompts cannot say more.
    rows = [*runs[KIND]["metrics"], "trainable_parameters"]
    print(f"{'':24s}{KIND:>16s}{'loreft':>16s}")
    for row in rows:
        values = [r["metrics"].get(row, r.get(row)) for r in runs.values()]
        print(f"{row:24s}" + "".join(f"{v:16.4f}" if isinstance(v, float) else f"{v:16d}" for v in values))
    return runs


if __name__ == "__main__":
    main()

"""Documentation cannot drift: the config reference is regenerated and compared, published hashes are derived
from their commands. The README's examples run in tests/integration/test_readme.py."""
from __future__ import annotations

import re
from pathlib import Path

from reftx.cli.docgen import config_reference

REPO = Path(__file__).resolve().parents[3]


def test_config_reference_is_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_reference(), "docs/config.md is stale: run python -m reftx.cli.docgen > docs/config.md"


def test_every_shipped_option_has_its_line_in_the_reference():
    """Every option of every shipped task, objective and recipe has a default and a comment in the
    source, so docs/config.md lists it (an option without a comment would silently be left out)."""
    import dataclasses
    import typing

    import reftx.tasks  # noqa: F401
    from reftx.cli.docgen import _comments
    from reftx.train.objectives.common import OBJECTIVES
    from reftx.recipes.registry import RECIPES
    from reftx.eval.task import TASKS

    options = {f"task {n}": TASKS.get(n).Options for n in TASKS.names()}
    options |= {f"objective {n}": OBJECTIVES.get(n).Options for n in OBJECTIVES.names()}
    options |= {f"recipe {n}": RECIPES.get(n).options for n in RECIPES.names()}
    reference = config_reference()
    for owner, cls in options.items():
        documented = _comments(cls)
        hints = typing.get_type_hints(cls)
        nested = {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}  # carft's contrastive
        assert {f.name for f in dataclasses.fields(cls)} - nested <= set(documented), owner
        assert all(f"`{name}=" in reference for name in documented), owner


def test_readme_names_the_locked_versions():
    """The README's "Tested versions" sentence names exactly the versions in requirements.lock."""
    root = REPO
    lock = dict(line.split("==") for line in (root / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    text = (root / "README.md").read_text()
    para = text[text.index("**Tested versions.**"):].split("\n\n")[0]
    for pkg in ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "tokenizers", "trl",
                "lm_eval", "tensorboard", "wandb"):
        named = re.search(rf"\b{pkg} (\d+(?:\.\w+)*)", para)
        assert named and named.group(1) == lock[pkg], f"README says {pkg} {named and named.group(1)}, lock {lock[pkg]}"


# Every config hash published in docs/results.md, as the command written beside it (file + overrides).
# A changed shipped experiment, or a change to what config_hash covers, fails here: re-derive the hash.
_KE, _F05 = "train.lr=5e-3 output_dir=runs/ke", "model.name=runs/tofu_finetune_forget05/model task.options.forget=forget05"
_SEQ = f"{_KE} recipe.mode=sequential task.n_eval=100"
_LOGS = "task.n_train=1342 train.max_length=256 eval.max_length=256"
_WARM = "docs/evidence/math-rl-warmup/warmup"  # issue 30 claim 7's warm-ups (sweeps/math_rl_dev.yaml starts from them)
_LOGS_EV = {"hdfs": "task.options.duplicates=drop_ignoring_counts task.options.eval_prevalence=0.0293 task.dev_size=64",
            "bgl": "task.dev_size=64"}  # issue 30's logs sweeps (sweeps/evidence_logs_*.yaml)
_R = ("0.001", "0.002", "0.004")
_EDIT_EV = {"loreft": ("loreft", ""), "loreft_kl": ("loreft", "recipe.locality_prompts=32 recipe.locality_kl_weight=1.0"),
            "baft_noloc": ("baft", "interventions.0.locality_weight=0.0 recipe.locality_prompts=0"),
            "baft": ("baft", "")}  # issue 30 claim 4's arms (sweeps/evidence_edit_*.yaml): experiment, overrides
_EVIDENCE_DEV = [  # issue 30's evidence_math sweep, stage 1 (dev): experiment, arm overrides, lr key, values
    ("loreft", "", "train.lr", (*_R, "0.008")), ("loreft", "interventions.0.kind=direft", "train.lr", (*_R, "0.008")),
    ("lora", "", "lora.lr", ("0.0003", "0.001", "0.003", "0.01")),
    ("lora_matched", "", "lora.lr", ("0.001", "0.003", "0.01", "0.03")), ("brep", "", "train.lr", (*_R, "0.008")),
    ("brep", "train.prefix_fraction=0.0", "train.lr", _R),
    *(("brep", arm, "train.lr", (*_R, "0.008")) for arm in ("interventions.0.positions=all_prompt",
                                                             "interventions.0.bound=none")),
]
_EVIDENCE_TEST = [  # issue 30's math test stage (sweeps/evidence_math_test.yaml): experiment, arm and its dev-chosen lr
    ("loreft", "train.lr=0.008"), ("loreft", "interventions.0.kind=direft train.lr=0.004"), ("lora", "lora.lr=0.003"),
    ("lora_matched", "lora.lr=0.03"), ("brep", "train.lr=0.004"), ("brep", "train.prefix_fraction=0.0 train.lr=0.002"),
    ("brep", "interventions.0.positions=all_prompt train.lr=0.008"), ("brep", "interventions.0.bound=none train.lr=0.004"),
]
PUBLISHED = [
    "quickstart", "quickstart eval.repetition_penalty=1.0", "quickstart seed=1", "quickstart seed=2",
    *(f"quickstart interventions.0.kind=direft seed={k}" for k in range(3)),
    *(f"sweeps/persona_lora seed={k}" for k in range(3)),
    *(f"math/rl/warmup seed={k}" for k in range(3)),
    *(f"math/rl/{arm} seed={k} train.init_from=runs/math_rl/warmup/warmup-{h}/intervention"
      for arm in ("ppo", "ppo_head", "grpo", "sft") for k, h in enumerate(("1fa8902c0572", "69a865cfd0fa", "702252f14060"))),
    *(f"math/rl/ppo seed=0 train.init_from=runs/math_rl/warmup/warmup-1fa8902c0572/intervention task.dev_size=100 "
      f"task.eval_split=dev train.objective_options.value_gradient=head train.lr={lr}" for lr in ("3e-4", "1e-3", "3e-3")), "math/math_grpo_loreft output_dir=runs/issue17",
    "math/math_nlft_change_loreft train.epochs=1 output_dir=runs/issue17",
    "math/math_carft_pooled_loreft output_dir=runs/issue17",
    "math/math_grpo_g8_loreft output_dir=runs/issue17", "math/math_sft_budget_loreft output_dir=runs/issue17",
    "math/math_grpo_synthetic_loreft output_dir=runs/issue17",
    "math/math_sft_synthetic_budget_loreft output_dir=runs/issue17",
    *(f"{f} output_dir=runs/issue5" for f in ("commonsense/boolq_loreft", "commonsense/boolq_direft",
                                              "commonsense/boolq_lora", "math/math_loreft", "math/math_brep")),
    "editing/counterfact_loreft task.n_eval=16 name=lr5e-4 output_dir=runs/probe",
    *(f"editing/{d}_{m} {_KE} {mode}" for d in ("counterfact", "zsre") for m in ("loreft", "baft")
      for mode in ("recipe.parallel=32", "recipe.mode=batch task.n_eval=50 recipe.parallel=5",
                   "recipe.mode=batch task.n_eval=200 recipe.parallel=20", "recipe.mode=sequential task.n_eval=100")),
    "editing/counterfact_baft train.lr=5e-3 recipe.mode=sequential task.n_eval=50 'recipe.checkpoints=[10, 50]' "
    "interventions.0.locality_weight=0.1",
    f"editing/counterfact_baft {_SEQ} interventions.0.locality_margin=0.1",
    f"editing/counterfact_baft {_SEQ} interventions.0.locality_margin=0.1 interventions.0.basis_gate_input=unit",
    f"editing/counterfact_baft {_SEQ} interventions.0.basis_gate_input=unit",
    f"editing/zsre_baft {_SEQ} interventions.0.locality_margin=0.1 interventions.0.basis_gate_input=unit",
    "unlearning/tofu_finetune model.name=default model.chat_template=true",
    "unlearning/tofu_finetune", "unlearning/tofu_finetune_forget05", "unlearning/tofu_finetune_retain01",
    *(f"unlearning/tofu_{m} {forget} {obj}" for m in ("grun", "loreft", "lora") for forget in ("", _F05)
      for obj in ("", "train.objective=gd", "train.objective=idk task.options.idk=true")),
    *(f"unlearning/tofu_grun {forget} model.name=runs/tofu_finetune_retain01/model" for forget in ("", _F05)),
    f"unlearning/tofu_grun {_F05} train.objective=gd task.options.n_retain=80",
    *(f"logs/{d}_{m}_{p}" for d in ("hdfs", "bgl") for m in ("minilm", "smollm") for p in ("loreft", "lora")),
    f"logs/hdfs_minilm_loreft {_LOGS}", f"logs/hdfs_minilm_lora {_LOGS}",
    f"logs/hdfs_minilm_loreft {_LOGS} train.epochs=2", f"logs/hdfs_minilm_lora {_LOGS} lora.epochs=2",
    *(f"evidence/math_{f} {arm} {key}={lr} task.eval_split=dev" for f, arm, key, lrs in _EVIDENCE_DEV for lr in lrs),
    *(f"evidence/math_{f} seed={k} {arm}" for f, arm in _EVIDENCE_TEST for k in range(3)),
    *(f"evidence/math_{f} seed={k} {arm}" for f, arm in (_EVIDENCE_TEST[0], *_EVIDENCE_TEST[2:4]) for k in (3, 4)),
    *(f"evidence/math_heft lora.lr={a} train.lr={b} task.eval_split=dev" for a in ("0.001", "0.003")
      for b in ("0.002", "0.004", "0.008")),
    *(f"evidence/math_heft seed={k} lora.lr=0.001 train.lr=0.002" for k in range(3)),
    *(f"math/rl/{arm} train.init_from={_WARM}-1fa8902c0572/intervention task.dev_size=100 train.lr={lr} "
      "task.eval_split=dev" for arm, lrs in (("grpo", _R), ("sft", (*_R, "0.008")), ("carft", _R)) for lr in lrs),
    *(f"math/rl/ppo_head seed={k} train.init_from={_WARM}-{h}/intervention"
      for k, h in enumerate(("1fa8902c0572", "69a865cfd0fa", "702252f14060"))),
    *(f"math/rl/{arm} train.lr={lr} seed={k} train.init_from={_WARM}-{h}/intervention task.dev_size=0"
      for arm, lr in (("grpo", "0.002"), ("sft", "0.004"), ("carft", "0.001"))
      for k, h in enumerate(("1fa8902c0572", "69a865cfd0fa", "702252f14060"))),
    *(f"math/rl/{arm} task.dev_size=100 train.lr={lr} task.eval_split=dev" for arm in ("nlft", "sft50") for lr in _R),
    *(f"math/rl/warmup seed={k}" for k in (3, 4)),  # claim 7's seeds 3, 4 (sweeps/evidence_rl_more_seeds.yaml)
    *(f"math/rl/{arm} task.dev_size=0 seed={k} train.init_from=docs/evidence/math-rl-warmup-more/warmup-{h}/intervention "
      f"train.lr={lr}" for arm, lr in (("grpo", "0.002"), ("carft", "0.001"), ("sft", "0.004"))
      for k, h in ((3, "eed007c2cb35"), (4, "6e9aef00b18b"))),
    *(f"math/rl/{arm} train.lr=0.004 seed={k} task.dev_size=0" for arm in ("nlft", "sft50") for k in range(3)),
    *(f"editing/{d}_{_EDIT_EV[arm][0]} seed={k} task.n_eval=100 {_EDIT_EV[arm][1]}".strip()
      for d in ("counterfact", "zsre") for arm in _EDIT_EV for k in range(3)),
    *(f"editing/counterfact_{m} seed={k} task.n_eval=50 recipe.mode=sequential 'recipe.checkpoints=[10, 50]' {arm}".strip()
      for m, arm in (("loreft", ""), ("baft", "interventions.0.basis_gate_input=unit")) for k in range(3)),
    *(f"logs/{d}_minilm_{m} {_LOGS_EV[d]} {key}={lr} task.eval_split=dev" for d in ("hdfs", "bgl")
      for m, key in (("loreft", "train.lr"), ("lora", "lora.lr")) for lr in ("0.001", "0.003", "0.01", "0.03")),
    *(f"logs/{d}_minilm_{m} {_LOGS_EV[d]} {lr} seed={k}" for d, m, lr in (
        ("hdfs", "loreft", "train.lr=0.01"), ("hdfs", "lora", "lora.lr=0.01"), ("bgl", "loreft", "train.lr=0.003"),
        ("bgl", "loreft", "train.lr=0.03"), ("bgl", "lora", "lora.lr=0.01")) for k in range(3)),
]


def _hash_of(command: str) -> str:
    import shlex

    from reftx.config.hashing import config_hash
    from reftx.config.schema import load_experiment

    file, *overrides = shlex.split(command)
    return config_hash(load_experiment(REPO / "experiments" / f"{file.removeprefix('experiments/').removesuffix('.yaml')}.yaml",
                                       overrides))


def test_every_published_config_hash_is_derived_from_its_command():
    text = (REPO / "docs" / "results.md").read_text()
    published = set(re.findall(r"\b[0-9a-f]{12}\b", text))
    derived = {_hash_of(c) for c in PUBLISHED}
    assert published - derived == set(), "a hash in docs/results.md that no command in PUBLISHED gives"
    assert derived - published == set(), "a command in PUBLISHED whose hash docs/results.md does not give"
    # where a table row holds the whole command, its hash is the one on that row
    rows = re.findall(r"^\|.*?`reftx (?:run|baseline) (experiments/[^`]+)`.*?\b([0-9a-f]{12})\b", text, re.M)
    assert len(rows) >= 20
    for command, chash in rows:
        assert _hash_of(command) == chash, command

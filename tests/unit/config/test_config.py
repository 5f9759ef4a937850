"""Tests of the strict config machinery (reftx.config) and the experiment schema (reftx.config.schema)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from reftx.core.convert import apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from reftx.config.hashing import config_hash
from reftx.core.errors import ConfigError
from reftx.config.schema import Experiment, TrainConfig, load_experiment


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "schema: 1\ntask:\n  name: toy\n"


# --------------------------------------------------------------------------- load_yaml / extends


def test_extends_chain_merges_child_wins_and_lists_replace(tmp_path: Path) -> None:
    write(tmp_path / "base" / "grand.yaml", "a: 1\nd: {x: 1, y: 2, z: {deep: 1}}\nl: [1, 2, 3]\n")
    write(tmp_path / "base" / "parent.yaml", "extends: grand.yaml\nb: 2\nd: {y: 20}\n")
    child = write(tmp_path / "child.yaml", "extends: base/parent.yaml\na: 10\nd: {z: {other: 2}}\nl: [9]\n")
    assert load_yaml(child) == {
        "a": 10,
        "b": 2,
        "d": {"x": 1, "y": 20, "z": {"deep": 1, "other": 2}},
        "l": [9],
    }


def test_extends_cycle_is_reported_with_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\ny: 1\n")
    with pytest.raises(ConfigError, match="extends cycle") as info:
        load_yaml(tmp_path / "a.yaml")
    assert info.value.field == "extends"
    assert re.search(r"a\.yaml -> .*b\.yaml -> .*a\.yaml", str(info.value))


def test_self_extension_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends cycle"):
        load_yaml(tmp_path / "a.yaml")


def test_missing_file_and_missing_parent_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    write(tmp_path / "c.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"^extends: config file not found: .*gone\.yaml \(extended by .*c\.yaml\)"):
        load_yaml(tmp_path / "c.yaml")


def test_yaml_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+") as info:
        load_yaml(path)
    path = write(tmp_path / "bad2.yaml", "a: 1\nb:\n  c: 1\n   d: 2\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml, line 4"):
        load_yaml(path)
    assert "invalid YAML" in str(info.value)


def test_duplicate_key_is_an_error_with_line(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml, line 3.*duplicate key 'a'"):
        load_yaml(path)


def test_top_level_must_be_a_mapping_and_empty_file_is_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    assert load_yaml(write(tmp_path / "empty.yaml", "")) == {}


def test_exponent_floats_in_files_and_dump_round_trip(tmp_path: Path) -> None:
    data = load_yaml(write(tmp_path / "f.yaml", "a: 1e-3\nb: 1.0e-3\nc: '1e-3'\nd: 2E+5\ne: 7\n"))
    assert data == {"a": 1e-3, "b": 1e-3, "c": "1e-3", "d": 2e5, "e": 7}
    assert type(data["a"]) is float and type(data["e"]) is int
    text = dump_yaml(data)
    assert yaml.load(text, Loader=yaml.SafeLoader)["c"] == "1e-3"  # the string stays quoted
    assert load_yaml(write(tmp_path / "g.yaml", text)) == data


# --------------------------------------------------------------------------- overrides


def test_dotted_overrides_with_list_index_and_floats() -> None:
    d = {"train": {"lr": 0.1}, "interventions": [{"rank": 4}, {"rank": 4}]}
    out = apply_overrides(d, ["train.lr=1e-3", "interventions.1.rank=8", "train.new.key=x", "name=run a=b"])
    assert out["train"]["lr"] == 1e-3 and isinstance(out["train"]["lr"], float)
    assert out["interventions"] == [{"rank": 4}, {"rank": 8}]
    assert out["train"]["new"] == {"key": "x"}
    assert out["name"] == "run a=b"
    assert d["train"]["lr"] == 0.1  # the input is not modified


def test_override_values_are_yaml() -> None:
    out = apply_overrides({}, ["a=8", "b=true", "c=[1, 2]", "d=null", "e=", "f=1.5"])
    assert out == {"a": 8, "b": True, "c": [1, 2], "d": None, "e": None, "f": 1.5}


@pytest.mark.parametrize(
    ("override", "field", "text"),
    [
        ("train.lr", "train.lr", "malformed override"),
        ("=3", "=3", "malformed override"),
        ("a..b=1", "a..b", "malformed override"),
        ("interventions.5.rank=8", "interventions.5", "no list item '5'"),
        ("interventions.x=8", "interventions.x", "no list item 'x'"),
        ("train.lr.sub=1", "train.lr", "cannot set 'sub' inside a float value"),
    ],
)
def test_bad_overrides(override: str, field: str, text: str) -> None:
    d = {"train": {"lr": 0.1}, "interventions": [{"rank": 4}]}
    with pytest.raises(ConfigError, match=re.escape(text)) as info:
        apply_overrides(d, [override])
    assert info.value.field == field


# --------------------------------------------------------------------------- from_dict


@dataclass
class Inner:
    rank: int = 1
    mode: Literal["add", "mul"] = "add"


@dataclass
class Outer:
    items: list[Inner] = field(default_factory=list)
    either: int | str = 0
    anything: int | float | str | list | dict = 0
    scale: float = 1.0
    maybe: Inner | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    raw: Any = None


def test_from_dict_nested_lists_and_unions() -> None:
    built = from_dict(
        Outer,
        {"items": [{"rank": 2}, {"mode": "mul"}], "either": "x", "anything": [1], "scale": 2, "raw": {"k": 1}},
    )
    assert built.items == [Inner(2, "add"), Inner(1, "mul")]
    assert built.either == "x" and built.anything == [1] and built.raw == {"k": 1}
    assert built.scale == 2.0 and isinstance(built.scale, float)
    assert from_dict(Outer, {"maybe": {"rank": 3}}).maybe == Inner(3)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"items": [{}, {"rank": "x"}]}, "items.1.rank: expected int, got str 'x'"),
        ({"items": [{}, {"rnak": 2}]}, "items.1.rnak: unknown key 'rnak' (did you mean 'rank'?)"),
        ({"items": [{"mode": "mull"}]}, "items.0.mode: invalid value 'mull' (did you mean 'mul'?); choices: 'add', 'mul'"),
        ({"either": 1.5}, "either: expected int | str, got float 1.5"),
        ({"either": None}, "either: expected int | str, got null"),
        ({"anything": None}, "anything: expected int | float | str | list | dict, got null"),
        ({"scale": True}, "scale: expected float, got bool True"),
        ({"maybe": {"rank": []}}, "maybe.rank: expected int, got list []"),
        ({"maybe": 3}, "maybe: expected a mapping | null, got int 3"),
        ({"extra": []}, "extra: expected dict[str, Any], got list []"),
        ({3: 1}, "3: keys must be strings"),
    ],
)
def test_from_dict_errors_name_the_full_dotted_path(d: dict[Any, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, d)
    assert message in str(info.value)


# --------------------------------------------------------------------------- the experiment schema


def experiment(tmp_path: Path, text: str = "", overrides: tuple[str, ...] = ()) -> Experiment:
    return load_experiment(write(tmp_path / "exp.yaml", MINIMAL + text), overrides)


def test_minimal_experiment_defaults_and_name_from_stem(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    assert exp.name == "exp" and exp.task.name == "toy" and exp.train == TrainConfig()
    assert exp.run_dir == Path("runs/exp")
    assert experiment(tmp_path, "name: mine\n").name == "mine"


def test_experiment_overrides_and_exponent_float(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        "train: {lr: 1e-4}\ninterventions: [{kind: a, rank: 4}, {kind: b}]\n",
        ("interventions.0.rank=8", "train.warmup=1e-1", "train.epochs=3"),
    )
    assert exp.train.lr == 1e-4 and exp.train.warmup == 0.1 and exp.train.epochs == 3
    assert exp.interventions == [{"kind": "a", "rank": 8}, {"kind": "b"}]
    assert experiment(tmp_path, overrides=("train.lr=1e-3",)).train.lr == 1e-3


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("", ("train.lrr=1",), "train.lrr: unknown key 'lrr' (did you mean 'lr'?); valid: batch_size,"),
        ("", ("trian.lr=1",), "trian: unknown key 'trian' (did you mean 'train'?)"),
        ("train:\n  batch_size: eight\n", (), "train.batch_size: expected int, got str 'eight'"),
        ("", ("train.batch_size=true",), "train.batch_size: expected int, got bool True"),
        ("", ("train.epochs=1.5",), "train.epochs: expected int, got float 1.5"),
        ("", ("train.scheduler=cosin",), "train.scheduler: invalid value 'cosin' (did you mean 'cosine'?); "
         "choices: 'linear', 'cosine', 'constant'"),
        ("", ("model.dtype=fp8",), "model.dtype: invalid value 'fp8'"),
        ("", ("interventions=[1]",), "interventions.0: expected dict[str, Any], got int 1"),
        ("", ("schema=2",), "schema: unsupported schema version 2"),
        ("", ("train.warmup=1",), "train.warmup: must satisfy 0 <= warmup < 1, got 1.0"),
        ("", ("train.lr=0",), "train.lr: must be > 0"),
        ("", ("train.batch_size=0",), "train.batch_size: must be >= 1, got 0"),
        ("", ("eval.num_beams=0",), "eval.num_beams: must be >= 1"),
        ("", ("task.n_train=0",), "task.n_train: must be >= 1"),
        ("", ("name=a/b",), "name: must be a plain folder name"),
        ("", ("task.name=???",), "task.name: required value is not set"),
    ],
)
def test_experiment_errors(tmp_path: Path, text: str, overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        experiment(tmp_path, text, overrides)
    assert message in str(info.value)


def test_missing_required_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^task\.name: missing required key 'name'"):
        load_experiment(write(tmp_path / "a.yaml", "schema: 1\ntask:\n  data_dir: x\n"))
    with pytest.raises(ConfigError, match=r"^task\.name: missing required key"):
        load_experiment(write(tmp_path / "b.yaml", "schema: 1\n"))
    with pytest.raises(ConfigError, match=r"^schema: missing required key"):
        load_experiment(write(tmp_path / "c.yaml", "task: {name: toy}\n"))


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    exp = experiment(tmp_path, "train:\nmethod:\nrecipe:\ninterventions:\n")
    assert exp.train == TrainConfig() and exp.recipe == {} and exp.interventions == []


def test_schema1_method_section_reads_as_the_edit_recipe_with_a_notice(tmp_path: Path, capsys) -> None:
    from reftx.config.hashing import config_hash

    exp = experiment(tmp_path, "method: {mode: batch}\n", overrides=("method.parallel=4",))
    assert exp.recipe == {"name": "edit", "mode": "batch", "parallel": 4}
    assert "`method:` is now `recipe: {name: edit, ...}`" in capsys.readouterr().err
    # hashed as schema 1 spelled it: a published hash of a method: config stays valid
    old = {**{k: v for k, v in exp.to_dict().items() if k != "recipe"}, "method": {"mode": "batch", "parallel": 4}}
    assert config_hash(exp.to_dict()) == config_hash(old)
    plain = experiment(tmp_path, "")
    assert config_hash(plain.to_dict()) == config_hash({**plain.to_dict(), "method": {}})


def test_dump_is_ordered_plain_and_round_trips(tmp_path: Path) -> None:
    exp = experiment(tmp_path, overrides=("task.options={z: 1, a: 2}", "train.lr=1e-5", "task.options.s='1e-3'"))
    text = dump_yaml(exp)
    assert "!!" not in text
    assert list(yaml.safe_load(text)) == [
        "schema", "name", "seed", "output_dir", "model", "task", "interventions", "train", "eval", "lora", "recipe",
        "imports",
    ]
    assert list(yaml.safe_load(text)["train"])[:3] == ["epochs", "max_steps", "batch_size"]
    again = load_experiment(write(tmp_path / "again.yaml", text))
    assert list(again.task.options) == ["z", "a", "s"] and again.task.options["s"] == "1e-3"
    assert again == exp and again.to_dict() == to_dict(exp)


def test_config_hash_is_stable_across_key_order() -> None:
    a = {"x": 1, "y": {"b": [1, 2], "a": "s"}}
    b = {"y": {"a": "s", "b": [1, 2]}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{12}", config_hash(a))
    assert config_hash(a) != config_hash({**a, "x": 2})


def test_config_hash_of_experiment_matches_its_dict(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    assert config_hash(exp) == config_hash(exp.to_dict())


def test_every_cli_argument_has_a_help_text() -> None:
    import argparse

    from reftx.cli.commands import build_parser

    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    missing = [f"{name} {a.dest}" for name, sub in [("reftx", parser), *subs.choices.items()]
               for a in sub._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []
    assert all(any(a.dest == "no_progress" for a in sub._actions) for name, sub in subs.choices.items()
               if name in ("run", "eval", "baseline", "edit", "tofu-finetune"))


QUICKSTART = Path(__file__).resolve().parents[3] / "experiments" / "quickstart.yaml"


def test_config_hash_is_only_of_what_determines_the_result() -> None:
    from reftx.config.hashing import NOT_HASHED, hash_differences

    base = load_experiment(QUICKSTART).to_dict()
    bookkeeping = ("output_dir=/elsewhere", "name=other", "train.log_every=7", "train.checkpoint_every=0",
                   "train.keep_checkpoints=5", "eval.show_examples=0", "imports=[]")
    moved = load_experiment(QUICKSTART, bookkeeping).to_dict()
    assert moved != base and config_hash(moved) == config_hash(base)
    # a key another change adds (train.log_with) is excluded already; excluding an absent key is harmless
    assert config_hash({**base, "train": {**base["train"], "log_with": "tensorboard"}}) == config_hash(base)
    assert "train.log_with" in NOT_HASHED and all(len(why) > 10 for why in NOT_HASHED.values())
    for change in ("train.lr=1e-3", "seed=1", "eval.batch_size=4", "train.max_length=64", "interventions.0.rank=8"):
        changed = load_experiment(QUICKSTART, [change]).to_dict()
        assert config_hash(changed) != config_hash(base), change
        assert hash_differences(base, changed) == [change.split("=")[0]], change
    assert hash_differences(base, moved) == []


def test_schema1_method_override_wins_over_the_files_recipe(tmp_path: Path) -> None:
    """`reftx edit FILE method.mode=batch` (the schema-1 spelling older docs use) runs batch mode, not
    the file's recipe: {mode: single}; it hashes as recipe.mode=batch does."""
    text = "recipe: {name: edit, mode: single, parallel: 16}\n"
    old = experiment(tmp_path, text, ("method.mode=batch", "method.parallel=5"))
    new = experiment(tmp_path, text, ("recipe.mode=batch", "recipe.parallel=5"))
    assert old.recipe == new.recipe == {"name": "edit", "mode": "batch", "parallel": 5}
    assert config_hash(old) == config_hash(new)


def test_resume_accepts_a_moved_folder_and_names_a_real_change(tmp_path: Path, capsys) -> None:
    from reftx.core.errors import ReftError
    from reftx.recipes.train import _check_resume

    saved = load_experiment(QUICKSTART, ["output_dir=runs", "train.log_every=2"]).to_dict()
    write(tmp_path / "config.yaml", dump_yaml(saved))
    moved = load_experiment(QUICKSTART, [f"output_dir={tmp_path.parent}", "train.log_every=5"]).to_dict()
    assert _check_resume(tmp_path, True, moved) is None  # no checkpoint yet: training starts from step 0
    assert "training starts from step 0" in " ".join(capsys.readouterr().err.split())
    changed = load_experiment(QUICKSTART, ["train.lr=1e-3", "seed=3"]).to_dict()
    with pytest.raises(ReftError, match=r"differs from the current config in seed, train\.lr; "):
        _check_resume(tmp_path, True, changed)


def test_eval_repetition_penalty_is_checked_hashed_when_set_and_reaches_generate() -> None:
    import torch

    from reftx.eval.generate import generate
    from reftx.config.schema import EvalConfig
    from reftx.data.examples import Example

    with pytest.raises(ConfigError, match=r"^eval\.repetition_penalty: must be > 0, got 0\.0"):
        load_experiment(QUICKSTART, ["eval.repetition_penalty=0.0"])
    plain = load_experiment(QUICKSTART, ["eval.repetition_penalty=1.0"]).to_dict()
    # added after results were published: at its default (1, off) it leaves every published hash as it was
    assert config_hash(plain) == config_hash({**plain, "eval": {k: v for k, v in plain["eval"].items()
                                                                  if k != "repetition_penalty"}})
    assert config_hash(load_experiment(QUICKSTART, ["eval.repetition_penalty=1.2"]).to_dict()) != config_hash(plain)

    class Model(torch.nn.Module):  # records what generate() is asked for
        def __init__(self) -> None:
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), {}

        def generate(self, input_ids, **kw):
            self.seen = kw
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), 7)], dim=1)

    class Tok:
        pad_token_id, eos_token_id = 0, 0

        def __call__(self, text, **kw):
            return {"input_ids": [1, 2, 3]}

        def decode(self, ids, **kw):
            return " ".join(map(str, ids.tolist()))

    model = Model()
    assert generate(model, Tok(), [Example("q")], EvalConfig(repetition_penalty=1.2), False, show_progress=False) == ["7"]
    assert model.seen["repetition_penalty"] == 1.2 and model.seen["do_sample"] is False

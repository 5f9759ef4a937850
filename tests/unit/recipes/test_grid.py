"""The sweep grid (reftx.recipes.grid): comma lists, the grid file's product, zip and method blocks,
and its one-line errors."""
from __future__ import annotations

import threading

import pytest
import yaml

from reftx.core.convert import parse_value
from reftx.core.errors import ConfigError
from reftx.recipes.grid import cli_axes, load_grid, spell, split_values
from reftx.recipes.sweep import read_index, update_index, upsert


def test_split_values_cuts_at_top_level_commas_only():
    assert split_values("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_values("{a: 1, b: 2},{a: 3}") == ["{a: 1, b: 2}", "{a: 3}"]
    assert split_values("'a,b.jsonl'") == ["'a,b.jsonl'"]
    assert split_values('"x,y",z') == ['"x,y"', "z"]
    assert split_values("") == [""]  # key= alone is one null value, as for reftx run
    with pytest.raises(ConfigError, match=r"^train\.lr: an empty value in the comma list '1e-3,'"):
        split_values("1e-3,", "train.lr")


def test_spell_round_trips_through_the_override_parser():
    assert spell("interventions.0.kind", "loreft") == "interventions.0.kind=loreft"
    assert spell("train.lr", 1e-3) == "train.lr=0.001"
    assert spell("interventions.0.layers", [1, 2]) == "interventions.0.layers=[1, 2]"
    assert spell("task.options.file", "a,b.jsonl") == 'task.options.file="a,b.jsonl"'
    assert spell("train.max_steps", None) == "train.max_steps=null"
    for value in ("loreft", "1e-3", "a,b", "yes", "", 0.001, 3, True, None, [1, [2]], {"a": "b c"}):
        assert parse_value(spell("k", value).partition("=")[2]) == value


def test_command_line_lists_give_their_product_last_key_fastest():
    (block,) = load_grid(None, ["train.lr=1e-3,3e-3", "seed=0,1", "train.max_steps=4"])
    assert block.cells() == [
        ["train.lr=1e-3", "seed=0", "train.max_steps=4"], ["train.lr=1e-3", "seed=1", "train.max_steps=4"],
        ["train.lr=3e-3", "seed=0", "train.max_steps=4"], ["train.lr=3e-3", "seed=1", "train.max_steps=4"]]
    assert block.origins == {"train.lr": "the command line", "seed": "the command line",
                             "train.max_steps": "the command line"}


def _grid(tmp_path, data) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_grid_file_zips_and_method_blocks(tmp_path):
    path = _grid(tmp_path, {
        "seed": [0, 1],
        "methods": [
            {"method": "loreft", "train.lr": [1e-3, 3e-3]},
            {"method": "lora", "experiment": "lora.yaml", "zip": {"lora.lr": [1e-4, 3e-4], "lora.r": [4, 8]},
             "train.max_steps": 2}]})
    loreft, lora = load_grid(path, ["train.batch_size=4"])
    assert (loreft.method, loreft.experiment, lora.method, lora.experiment) == ("loreft", None, "lora", tmp_path / "lora.yaml")
    assert loreft.cells() == [["train.batch_size=4", "seed=0", "train.lr=0.001"],
                              ["train.batch_size=4", "seed=0", "train.lr=0.003"],
                              ["train.batch_size=4", "seed=1", "train.lr=0.001"],
                              ["train.batch_size=4", "seed=1", "train.lr=0.003"]]
    assert lora.cells() == [["train.batch_size=4", "seed=0", "train.max_steps=2", "lora.lr=0.0001", "lora.r=4"],
                            ["train.batch_size=4", "seed=0", "train.max_steps=2", "lora.lr=0.0003", "lora.r=8"],
                            ["train.batch_size=4", "seed=1", "train.max_steps=2", "lora.lr=0.0001", "lora.r=4"],
                            ["train.batch_size=4", "seed=1", "train.max_steps=2", "lora.lr=0.0003", "lora.r=8"]]
    assert lora.origins["lora.lr"] == f"{path} methods.1.zip" and loreft.origins["seed"] == path
    assert "lora.lr" not in loreft.origins  # a block's keys are its own


@pytest.mark.parametrize("data, cli, message", [
    ({"zip": {"train.lr": [1, 2], "seed": [0]}}, [],
     r"^zip: zipped keys advance together, so their lists need one length: train.lr has 2, seed has 1$"),
    ({"metods": [{"method": "a"}]}, [], r"^metods: unknown grid key 'metods' \(did you mean 'methods'\?\)"),
    ({"methods": [{"method": "a", "experimnt": "x.yaml"}]}, [],
     r"^methods\.0\.experimnt: unknown grid key 'experimnt' \(did you mean 'experiment'\?\)"),
    ({"seed": [0, 1], "methods": [{"method": "a", "seed": [2]}]}, [],
     r"^seed: is given twice \(.*grid\.yaml and .*grid\.yaml methods\.0\): give it in one place$"),
    ({"seed": [0, 1]}, ["seed=2,3"], r"^seed: is given twice \(the command line and .*grid\.yaml\)"),
    ({"train.lr": []}, [], r"^train\.lr: an empty list sweeps nothing: give at least one value$"),
    ({"name": ["a", "b"]}, [], r"^name: is set by the sweep .*choose the sweep's folder with --out$"),
    ({"methods": [{"method": "a"}, {"method": "a"}]}, [], r"^methods\.1\.method: 'a' names two blocks"),
    ({"methods": [{"method": "a/b"}]}, [], r"^methods\.0\.method: names the block with a plain word"),
    ({"methods": {"method": "a"}}, [], r"^methods: .*a list of method blocks"),
])
def test_grid_mistakes_are_one_line_errors_naming_the_key(tmp_path, data, cli, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(_grid(tmp_path, data), cli)


def test_command_line_mistakes():
    with pytest.raises(ConfigError, match=r"^seed: is given twice on the command line"):
        cli_axes(["seed=0", "seed=1"])
    with pytest.raises(ConfigError, match=r"^train\.lr: malformed override 'train\.lr'"):
        cli_axes(["train.lr"])
    with pytest.raises(ConfigError, match=r"^trian\.lr: unknown grid key 'trian' \(did you mean 'train'\?\)"):
        cli_axes(["trian.lr=1,2"])


def test_sweep_index_takes_many_writers(tmp_path):
    """Threads updating one sweep.json (each under the folder's lock, read-merge-write) lose no cell."""
    def writer(w: int) -> None:
        for k in range(15):
            update_index(tmp_path, lambda d, k=k: upsert(d, {"hash": f"{w}-{k}", "status": "done"}))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c["hash"] for c in read_index(tmp_path)["cells"]) == sorted(f"{w}-{k}" for w in range(3) for k in range(15))
    update_index(tmp_path, lambda d: upsert(d, {"hash": "0-0", "status": "failed"}))
    assert [c["status"] for c in read_index(tmp_path)["cells"] if c["hash"] == "0-0"] == ["failed"]

"""Foreseeable failures outside reftx end in one line naming what failed and the fix (exit code 2 from
the CLI), never in a traceback: no network for `reftx push`, an lm-eval task whose dataset is not
cached offline, an installed plugin that raises, and a full disk while writing a checkpoint or saved
interventions (the earlier checkpoint and files stay usable). Each fault is the real exception type,
raised by the real client (an unreachable endpoint, offline mode) or injected where the library
raises it."""
from __future__ import annotations

import errno
import re
import socket
from pathlib import Path

import pytest
import safetensors.torch
from huggingface_hub import constants
from safetensors import SafetensorError

import reftx
import reftx.cli.commands as cli
from reftx.core import plugins
from reftx.core.errors import ReftError
from reftx.engine.serialization import CONFIG_NAME, WEIGHTS_NAME
from reftx.train import checkpoints
from tests.integration.test_faults import QUICKSTART, files, overrides
from tests.conftest import perturb, tiny_model
from tests.unit.models.test_share import SPECS, _model, _run_dir


@pytest.fixture
def err_line(monkeypatch, capsys):
    """The one ``error:`` line the CLI printed to stderr (unwrapped; progress output aside)."""
    monkeypatch.setattr(cli.console, "width", 2000)

    def line() -> str:
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, errors
        return errors[0]

    return line


def _closed_port() -> int:
    """A local port with nothing listening: a connection to it is refused at once, nothing leaves the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- reftx push without the Hub ---------------------------------------------------------------------
def test_push_without_network_names_the_endpoint_and_the_fix(tmp_path, monkeypatch, err_line):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    run = _run_dir(tmp_path, model_name="someone/base-model")
    _model().save_pretrained(run / "intervention")
    before = files(run)
    assert cli.main(["push", str(run), "user/run"]) == 2
    assert err_line() == (f"error: push: cannot reach the Hub at {endpoint} (ConnectError: [Errno 111] Connection "
                          f"refused); check the network or HF_ENDPOINT, or push later (nothing was uploaded; {run} "
                          "is unchanged)")
    assert files(run) == before


def test_push_in_offline_mode_says_to_unset_it(tmp_path, monkeypatch, err_line):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    run = _run_dir(tmp_path)
    _model().save_pretrained(run / "intervention")
    assert cli.main(["push", str(run), "user/run"]) == 2
    assert err_line() == ("error: push: HF_HUB_OFFLINE=1 is set; unset it to push to Hub repo 'user/run', or push "
                          f"later (nothing was uploaded; {run} is unchanged)")
    with pytest.raises(ReftError, match=re.escape(  # the Python call suggests saving locally
            "push: HF_HUB_OFFLINE=1 is set; unset it to push to Hub repo 'user/m', or save locally with "
            "model.save_pretrained(DIR) and push later (nothing was uploaded)")):
        _model().push_to_hub("user/m")


# -- reftx lm-eval on a task that is not cached -------------------------------------------------------
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face caches, so no task's dataset is cached."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return datasets


def test_lm_eval_offline_task_not_cached_names_the_task_and_the_fix(tiny_dir, tmp_path, monkeypatch, empty_caches,
                                                                     err_line):
    pytest.importorskip("lm_eval")
    from tests.integration.test_lm_eval import write_run

    for module, name in ((empty_caches.config, "HF_HUB_OFFLINE"), (empty_caches.config, "HF_DATASETS_OFFLINE"),
                         (constants, "HF_HUB_OFFLINE")):  # HF_DATASETS_OFFLINE=1, as datasets and the hub read it
        monkeypatch.setattr(module, name, True)
    run_dir = write_run(tiny_dir, tmp_path)
    assert cli.main(["lm-eval", str(run_dir), "--tasks", "arc_easy", "--limit", "2", "--no-progress"]) == 2
    assert err_line() == ("error: lm-eval task arc_easy: its dataset is not in the local datasets cache and offline "
                          "mode is on (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE) (ConnectionError: Couldn't reach "
                          "'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)); unset them and run it once online "
                          "to cache it, or give a local task YAML with --include-path DIR")
    assert not (run_dir / "lm_eval").exists()


def test_lm_eval_unreachable_hub_names_the_task_and_the_fix(monkeypatch, empty_caches):
    pytest.importorskip("lm_eval")
    from reftx.integrations.lm_eval import task_manager

    monkeypatch.setattr(empty_caches.config, "HF_HUB_OFFLINE", False)

    def unreachable(path, *a, **kw):  # what datasets.load_dataset raises when the Hub refuses the connection
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(empty_caches, "load_dataset", unreachable)
    manager = task_manager(["arc_easy"], None)
    with pytest.raises(ReftError) as info:
        manager.load(["arc_easy"])
    assert str(info.value) == ("lm-eval task arc_easy: its dataset is not in the local datasets cache and the Hub "
                               "cannot be reached (ConnectionError: Couldn't reach 'allenai/ai2_arc' on the Hub "
                               "(LocalEntryNotFoundError)); run it once with network access (check HF_ENDPOINT) to "
                               "cache it, or give a local task YAML with --include-path DIR")


# -- an installed plugin that raises ----------------------------------------------------------------
BROKEN = '''
import reftx

SETTINGS = {}


def register():
    return SETTINGS["tokenizer"]  # a bare KeyError, as a plugin with a bug raises it
'''


@pytest.mark.parametrize("value, step", [("broken_pkg:register", "calling"), ("broken_pkg.on_import", "importing")])
def test_a_plugin_that_raises_names_the_entry_point_and_the_fix(tmp_path, monkeypatch, err_line, value, step):
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text(BROKEN)
    (tmp_path / "broken_pkg" / "on_import.py").write_text("from broken_pkg import register\n\nregister()\n")
    info = tmp_path / "broken_pkg-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[reftx.plugins]\nbroken = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", False)  # load the entry points again, as a fresh process does
    assert cli.main(["ls", "interventions"]) == 2
    assert err_line() == (f"error: plugin entry point broken = {value} (group reftx.plugins, distribution broken-pkg "
                          f"0.3) failed when {step} it: KeyError: 'tokenizer'; fix the plugin or remove it (pip "
                          "uninstall broken-pkg)")


# -- a full disk while writing ----------------------------------------------------------------------
FULL = {"safetensors": lambda: SafetensorError("Error while serializing: I/O error: No space left on device "
                                               "(os error 28)"),
        "oserror": lambda: OSError(errno.ENOSPC, "No space left on device")}


def _fail_on_call(monkeypatch, n: int, error) -> list[int]:
    """safetensors' save_file raises ``error()`` on its ``n``-th call (the calls before it write)."""
    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(1)
        if len(calls) == n:
            raise error()
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return calls


@pytest.mark.parametrize("error", sorted(FULL))
def test_disk_full_in_a_checkpoint_names_the_file_and_keeps_the_previous(tiny_dir, tmp_path, monkeypatch, err_line,
                                                                        error):
    _fail_on_call(monkeypatch, 2, FULL[error])  # step-2's checkpoint is written, step-4's fails
    args = ["run", str(QUICKSTART), *overrides(tiny_dir, tmp_path), "--no-progress"]
    assert cli.main(args) == 2
    run_dir = tmp_path / "runs" / "quickstart"
    ckpts = run_dir / "checkpoints"
    line = err_line()
    assert re.fullmatch(
        rf"error: cannot write the checkpoint {ckpts}/step-4: {ckpts}/step-4/intervention/{WEIGHTS_NAME}: No space "
        rf"left on device; free space on that disk \([\d,]+ bytes free there\) or write to another one; the previous "
        rf"checkpoint {ckpts}/step-2 is untouched \(`reftx run \.\.\. --resume` continues from it\)", line), line
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"]  # no half-written folder, step-2 kept
    assert checkpoints.problem(ckpts / "step-2") is None  # it verifies against its manifest
    monkeypatch.undo()  # room again: --resume continues from step-2 and finishes
    assert cli.main([*args, "--resume"]) == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2", "step-4"]
    assert (run_dir / "results.json").is_file()


def _retrained():
    """Other weights than ``_model()``'s: a save that went through would change the files."""
    return perturb(reftx.attach(tiny_model("llama"), SPECS), seed=7).eval()


@pytest.mark.parametrize("error", sorted(FULL))
def test_disk_full_while_saving_interventions_keeps_the_saved_ones(tmp_path, monkeypatch, error):
    out = tmp_path / "saved"
    _model().save_pretrained(out)
    before = files(out)
    _fail_on_call(monkeypatch, 1, FULL[error])
    with pytest.raises(ReftError) as info:
        _retrained().save_pretrained(out)
    assert re.fullmatch(rf"cannot write {out}/{WEIGHTS_NAME}: No space left on device; free space on that disk "
                        rf"\([\d,]+ bytes free there\) or write to another one; the files already in {out} are "
                        r"unchanged", str(info.value)), str(info.value)
    assert files(out) == before  # the earlier pair, no temporary files


def test_disk_full_on_the_config_keeps_the_weights_that_match_it(tmp_path, monkeypatch):
    out = tmp_path / "saved"
    _model().save_pretrained(out)
    before = files(out)
    real = Path.write_text

    def write_text(self, *a, **kw):
        if self.name.startswith(f".{CONFIG_NAME}."):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(ReftError, match=rf"^cannot write {re.escape(str(out / CONFIG_NAME))}: No space left on device; "
                                        "free space on that disk"):
        _retrained().save_pretrained(out)
    assert files(out) == before  # neither file replaced: the new weights never went in without their config

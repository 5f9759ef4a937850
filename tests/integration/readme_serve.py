"""README's "Serving" blocks, run as test_readme runs every block, in the main environment: the
`reftx serve` line, on two adapters saved where it names them, reaches vLLM's server command with the
adapters named as the README says, on 127.0.0.1, runtime loading on; the OpenAI client block asks that
port for one of those adapters through ``vllm_xargs``. The server itself runs in .venv-vllm, where
tests/vllm/test_serve.py starts reftx serve and checks the tokens a request of this form gets."""
from __future__ import annotations

import ast
import shlex

from reftx.integrations.vllm import serve
from reftx.testing.tiny import tiny_model
from tests.integration.readme_env import REPO, Env, commands, handles
from tests.unit.integrations.test_vllm_serve import save_on_base

def _call(tree: ast.AST, attr: str) -> ast.Call:
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and attr in (getattr(n.func, "attr", None), getattr(n.func, "id", None))]
    return call


@handles(("bash", "reftx serve"), ("python", "from openai import OpenAI"))
def serving(env: Env, block: str, client: str):
    (line,) = commands(block.replace("\\\n", " "))
    argv = shlex.split(line)
    assert argv[0] == ".venv-vllm/bin/reftx" and argv[1] == "serve", line
    base = tiny_model("llama")
    base.save_pretrained(env.root / "base")
    for name in ("runs/persona-1a2b", "runs/pirate-3c4d/intervention"):  # a run folder and a save_pretrained one
        target = env.root / name / ("intervention" if name.endswith("1a2b") else "")
        save_on_base(base, target, str(env.root / "base"))
    started = []
    env.monkeypatch.setattr(serve, "vllm_version", lambda: "0.32.0")  # vLLM lives in .venv-vllm
    env.monkeypatch.setattr(serve, "launch", started.append)
    rc, out, err = env.reftx(shlex.join(["reftx", *argv[1:]]))
    assert rc == 0, err
    (plan,) = started
    assert sorted(plan.adapters) == ["persona-1a2b", "pirate"] and plan.base == str(env.root / "base")
    vllm = plan.argv
    assert vllm[vllm.index("--host") + 1] == "127.0.0.1" and vllm[vllm.index("--port") + 1] == "8000"
    assert vllm[-4:] == ["--max-model-len", "2048", "--gpu-memory-utilization", "0.2"]
    assert "reftx_adapters" in plan.env["VLLM_PLUGINS"].split(",")  # --allow-runtime-loading
    tree = ast.parse(client)
    (url,) = [k.value.value for k in _call(tree, "OpenAI").keywords if k.arg == "base_url"]
    assert url == "http://127.0.0.1:8000/v1"
    create = _call(tree, "create")
    (extra,) = [ast.literal_eval(k.value) for k in create.keywords if k.arg == "extra_body"]
    assert extra == {"vllm_xargs": {"reft": "pirate"}} and extra["vllm_xargs"]["reft"] in plan.adapters
    assert 'body["vllm_xargs"] = {"reft": adapter}' in (REPO / "tests" / "vllm" / "test_serve.py").read_text()

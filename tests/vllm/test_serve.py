"""``reftx serve``: vLLM's OpenAI server on a free loopback port, with saved adapters, asked through the
OpenAI client. An adapter's tokens equal ReftModel.generate's greedy tokens (exact), base requests
equal the plain engine's, and adapters load and unload at runtime: a request naming an unloaded one
gets a one-line error while the others are served."""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vllm.cases import PROMPTS, params, prompt, reference, save_adapter, served

LOREFT = {"kind": "loreft", "rank": 2, "layers": [1, 3], "positions": {"first": 2, "last": 2}}
GENERATED = {"kind": "direft", "rank": 2, "layers": [2], "positions": {"generated": 3, "prompt": True}}
# the conftest engine's settings (tests/vllm/conftest.py ENGINE), as vLLM server options
SERVER_ARGS = ("--skip-tokenizer-init --max-model-len 128 --seed 0 --block-size 32 --enable-prefix-caching "
               "--enable-chunked-prefill --max-num-batched-tokens 32 --max-num-seqs 8 --gpu-memory-utilization 0.05")
START_TIMEOUT = 600  # seconds: vLLM's engine process starts in ~30 s on an idle machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"reftx serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"reftx serve did not answer in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def folders(hf_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    save_adapter(hf_base, LOREFT, root / "run-a" / "intervention", seed=11)  # a run folder's layout
    save_adapter(hf_base, GENERATED, root / "b", seed=12)
    save_adapter(hf_base, LOREFT, root / "c", seed=13)  # loaded at runtime
    save_adapter(hf_base, LOREFT, root / "damaged", seed=14)
    weights = root / "damaged" / "interventions.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return {"run-a": root / "run-a", "b": root / "b", "c": root / "c", "damaged": root / "damaged"}


def _saved(folder: Path) -> Path:
    """The save_pretrained folder ReftModel.from_pretrained reads (a run folder's intervention/)."""
    return folder / "intervention" if (folder / "intervention").is_dir() else folder


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    """``reftx serve RUN_DIR --name b=DIR --allow-runtime-loading`` in its own process group."""
    port, log = _free_port(), tmp_path_factory.mktemp("serve_log") / "server.log"
    argv = [sys.executable, "-m", "reftx.cli", "serve", str(folders["run-a"]), "--name", f"b={folders['b']}",
            "--port", str(port), "--allow-runtime-loading", f"--vllm-args={SERVER_ARGS}"]
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 (conftest): the worker runs in the engine process (one process
    # fewer to start); the API server still runs the engine in its own process, as vLLM always does
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def _complete(client, ids: list[int], adapter: str | None, n: int = 6) -> list[int]:
    body = {"return_token_ids": True, "ignore_eos": True}
    if adapter is not None:
        body["vllm_xargs"] = {"reft": adapter}  # what vLLM copies into SamplingParams.extra_args
    model = client.models.list().data[0].id
    out = client.completions.create(model=model, prompt=ids, max_tokens=n, temperature=0.0, extra_body=body)
    return list(out.choices[0].token_ids)


def test_served_tokens_equal_generate_and_base_equals_the_plain_engine(client, folders, hf_base, llm):
    asks = [("long", "run-a"), ("short", "b"), ("long", None), ("short", "run-a"), ("short", None), ("long", "b")]
    with cf.ThreadPoolExecutor(len(asks)) as pool:  # concurrent clients: one mixed batch in the engine
        got = list(pool.map(lambda a: _complete(client, PROMPTS[a[0]], a[1]), asks))
    for (which, name), tokens in zip(asks, got):
        if name is None:
            plain = llm.generate([prompt(PROMPTS[which])], [params(None)], use_tqdm=False)[0]
            assert tokens == served(plain).tokens
        else:
            assert tokens == reference(hf_base, _saved(folders[name]), PROMPTS[which]).tokens


def _post(server: str, route: str, body: dict):
    import requests

    return requests.post(f"{server}/v1/{route}", json=body, timeout=120)


def test_runtime_load_request_unload_then_a_clear_error(server, client, folders, hf_base):
    import openai
    import requests

    bad = _post(server, "load_reft_adapter", {"name": "d", "path": str(folders["damaged"])})
    assert bad.status_code == 400
    assert "the file is damaged or truncated" in bad.json()["error"]["message"]
    missing = _post(server, "load_reft_adapter", {"name": "d", "path": str(folders["c"]) + "-nosuch"})
    assert missing.status_code == 400 and "not found" in missing.json()["error"]["message"]

    loaded = _post(server, "load_reft_adapter", {"name": "c", "path": str(folders["c"])})
    assert loaded.status_code == 200, loaded.text
    assert sorted(requests.get(f"{server}/v1/reft_adapters", timeout=30).json()["adapters"]) == ["b", "c", "run-a"]
    assert _complete(client, PROMPTS["long"], "c") == reference(hf_base, folders["c"], PROMPTS["long"]).tokens
    again = _post(server, "load_reft_adapter", {"name": "c", "path": str(folders["c"])})
    assert again.status_code == 400 and "already loaded" in again.json()["error"]["message"]

    assert _post(server, "unload_reft_adapter", {"name": "c"}).status_code == 200
    with pytest.raises(openai.BadRequestError, match=r"adapter 'c' was unloaded from this server"):
        _complete(client, PROMPTS["short"], "c")
    with pytest.raises(openai.BadRequestError, match=r"unknown adapter 'nosuch'"):
        _complete(client, PROMPTS["short"], "nosuch")
    assert _post(server, "unload_reft_adapter", {"name": "c"}).status_code == 404
    # the server keeps serving the others, exactly
    want = reference(hf_base, _saved(folders["run-a"]), PROMPTS["short"]).tokens
    assert _complete(client, PROMPTS["short"], "run-a") == want
    assert _complete(client, PROMPTS["short"], None) == reference(hf_base, None, PROMPTS["short"]).tokens

#!/usr/bin/env python
"""A bounded load test of ``reftx serve`` on 127.0.0.1: throughput and p50/p95 latency with K adapters in
flight, against the same requests all on one adapter and against the base model alone (README's
"Serving"; benchmarks/README.md "serving.py"). Run it in the vLLM environment:

    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/serving.py                # the default model
    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/serving.py --rounds 5 --requests 64

It saves 16 prompt-only adapters of one kind (LoReFT rank 4 at 4 layers on the first 5 and last 5 prompt
positions, weights moved off their initialization so every edit changes the state), starts one
server with all of them (``reftx serve``, prefix caching off so that repeated prompts cost the same
in every scenario), and then, in each round, runs every scenario once in a shuffled order:

* ``base``: every request without an adapter (vLLM alone: the plugin's hooks return at once);
* ``K=1``: every request on one adapter (the reference of the K rows);
* ``K=4`` / ``K=16``: the same requests, request i on adapter i mod K (K adapters in one batch).

A scenario sends ``--requests`` completions (the same token-id prompts in every scenario, greedy,
``--new-tokens`` each, ``ignore_eos``) from ``--clients`` concurrent clients and stops when all are
answered (or after ``--scenario-timeout`` seconds, a failure). Throughput is generated tokens per
second of the scenario's wall time; latency is each request's time from send to answer. The table
gives medians over rounds and each scenario's ratio to its reference measured in the same round
(K rows: ``K=1``; ``K=1`` itself: ``base``), the median of those paired ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SPEC = {"kind": "loreft", "rank": 4, "layers": [0.2, 0.4, 0.6, 0.8], "positions": {"first": 5, "last": 5}}
SCENARIOS = {"base": 0, "K=1": 1, "K=4": 4, "K=16": 16}  # name -> adapters in flight
REFERENCE = {"K=1": "base", "K=4": "K=1", "K=16": "K=1"}


def save_adapters(base: str, folder: Path, count: int) -> list[str]:
    """``count`` LoReFT adapters on ``base``, weights moved by N(0, 0.05) (seeded), saved as folders."""
    import torch
    from transformers import AutoModelForCausalLM

    from reftx.engine.model import attach

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = []
    for i in range(count):
        reft = attach(model, [SPEC])
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in reft.interventions.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        reft.save_pretrained(folder / f"a{i}")
        reft.detach()
        names.append(f"a{i}")
    return names


def start(folder: Path, names: list[str], port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "reftx.cli", "serve", *[f"{folder / n}" for n in names], "--port", str(port),
            "--no-check", "--vllm-args=--skip-tokenizer-init --no-enable-prefix-caching --max-model-len 512 "
            "--gpu-memory-utilization 0.15"]
    print("server:", shlex.join(argv), file=sys.stderr)
    # the worker in the engine process (as tests/vllm does): on the shared 2-core machine vLLM's engine
    # process died during start-up with a separate worker process, with or without the plugin
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import requests

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}):\n{_cause(log.read_text())}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(1)
    stop(proc)
    sys.exit(f"the server did not start in 900 s:\n{log.read_text()[-3000:]}")


def _cause(text: str) -> str:
    """The server log from its first traceback (the root cause, which vLLM's engine core prints first),
    up to 12,000 characters, and its last 1,500."""
    first = text.find("Traceback")
    head = text[first:first + 12000] if first >= 0 else ""
    return f"{head}\n...\n{text[-1500:]}" if head else text[-3000:]


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def scenario(url: str, model: str, prompts: list[list[int]], adapters: list[str | None], args) -> dict:
    """Send every prompt (prompt i with adapters[i]) from ``args.clients`` threads; wall time, latencies."""
    import requests

    session = requests.Session()
    deadline = time.monotonic() + args.scenario_timeout

    def one(i: int) -> float:
        body = {"model": model, "prompt": prompts[i], "max_tokens": args.new_tokens, "temperature": 0.0,
                "ignore_eos": True, "return_token_ids": True}
        if adapters[i] is not None:
            body["vllm_xargs"] = {"reft": adapters[i]}
        t0 = time.perf_counter()
        r = session.post(f"{url}/v1/completions", json=body, timeout=max(1.0, deadline - time.monotonic()))
        r.raise_for_status()
        assert len(r.json()["choices"][0]["token_ids"]) == args.new_tokens
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        latencies = list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - t0
    return {"tok_s": len(prompts) * args.new_tokens / wall, "latencies": latencies}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| scenario | adapters in flight | throughput tok/s (median) | ratio (paired median) | "
             "p50 latency s | p95 latency s |", "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        ref = REFERENCE.get(name)
        ratio = (f"{statistics.median(r['tok_s'] / q['tok_s'] for r, q in zip(runs, results[ref])):.3f}× {ref}"
                 if ref else "1 (reference)")
        lat = [x for r in runs for x in r["latencies"]]
        lines.append(f"| {name} | {SCENARIOS[name]} | {statistics.median(r['tok_s'] for r in runs):.1f} | {ratio} | "
                     f"{percentile(lat, 0.5):.3f} | {percentile(lat, 0.95):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="base model folder (default: reftx's default model, SmolLM2-135M-Instruct)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every scenario, shuffled (default 3)")
    ap.add_argument("--requests", type=int, default=32, help="requests per scenario (default 32)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (default 64)")
    ap.add_argument("--new-tokens", type=int, default=16, help="generated tokens per request (default 16)")
    ap.add_argument("--scenario-timeout", type=float, default=600, help="seconds before a scenario fails")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if args.model is None:
        from reftx.models.loading import default_model_path

        args.model = str(default_model_path())
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 20000) for _ in range(args.prompt_tokens)] for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        names = save_adapters(args.model, Path(tmp), max(SCENARIOS.values()))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start(Path(tmp), names, port, Path(tmp) / "server.log")
        try:
            url = f"http://127.0.0.1:{port}"
            import requests

            model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
            scenario(url, model, prompts[:args.clients], [None] * args.clients, args)  # warm-up
            results: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
            for r in range(args.rounds):
                order = list(SCENARIOS)
                rng.shuffle(order)
                for name in order:
                    k = SCENARIOS[name]
                    adapters = [None if k == 0 else names[i % k] for i in range(args.requests)]
                    results[name].append(scenario(url, model, prompts, adapters, args))
                    print(f"round {r + 1} {name}: {results[name][-1]['tok_s']:.1f} tok/s", file=sys.stderr)
        finally:
            stop(proc)
    print(table(results))
    print(f"\n{shlex.join(['python', 'benchmarks/serving.py', *sys.argv[1:]])}; vLLM 0.32.0 CPU, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()

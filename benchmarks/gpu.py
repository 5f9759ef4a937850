#!/usr/bin/env python
"""Paper-size costs on one GPU: a Llama-2-7B-architecture base with random weights in bf16 (nothing is
downloaded), for the tables of benchmarks/README.md ("GPU"). Called by benchmarks/gpu.sh.

    python benchmarks/gpu.py train --device cuda      # step time and peak memory per contestant
    python benchmarks/gpu.py generate --device cuda   # reftx generate against plain HF generate

``train``: one training step (forward + backward + AdamW) of each contestant, each in a fresh
subprocess (so its peak memory is its own): F0, floor and reftx as in benchmarks/overhead.py (LoReFT
rank 8 at the first and last 7 prompt positions of every layer), LoRA through peft (rank 8 on
q_proj and v_proj, peft's default targets for Llama), and reftx with gradient checkpointing
(reftx.engine.checkpointing.enable: the recomputed layers edit as the first forward did). Every step
runs under bf16 autocast, as ``train.precision: bf16`` does; the trained parameters stay fp32.
``--dry`` (what ``gpu.sh --device cpu`` runs) swaps the 7B shape for overhead.py's tiny Llama and a
small batch, so the whole path runs on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (benchmarks/overhead.py: the contestants F0, floor, reftx)

LLAMA7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000)  # Llama-2-7B's architecture (6.74B parameters)
SHAPES = {  # model, batch, sequence, timed steps
    "full": dict(model="llama7b", batch=4, seq=512, steps=8, warmup=2),
    "dry": dict(model="tiny", batch=2, seq=32, steps=2, warmup=1),
}
CONTESTANTS = ("F0", "floor", "reftx", "lora", "reftx+gc")
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def build(model: str, device: str):
    """The base with random weights, built directly on ``device``: in bf16 on a GPU (a 7B model made on
    the CPU first would take minutes), in fp32 on the CPU (the dry path: CPU bf16 is slow)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sizes = LLAMA7B if model == "llama7b" else overhead.MODELS[model]
    cfg = LlamaConfig(**sizes, max_position_embeddings=4096)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype(device))
    try:
        with torch.device(device):
            base = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return base.train()


def dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def contestant(name: str, base, s: dict):
    if name in ("F0", "floor", "reftx"):
        return overhead.make(name, base, s)
    if name == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(base, LoraConfig(**LORA))
        return overhead.Contestant(name, lambda b: model(**b).loss, [p for p in model.parameters() if p.requires_grad])
    c = overhead.make("reftx", base, s)  # reftx+gc
    from reftx.engine.checkpointing import enable

    enable(c.obj)
    return c


def child(args) -> None:
    """One contestant's step time and peak memory, as a JSON line."""
    print(json.dumps(measure(args.child, args)))


def measure(name: str, args) -> dict:
    """Build the base and contestant ``name``, time its steps, read its peak memory."""
    s = SHAPES[args.shape]
    cuda = args.device.startswith("cuda")
    base = build(s["model"], args.device)
    batch = overhead.make_batch(s, base.config.vocab_size, args.device)
    c = contestant(name, base, s)
    weights = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
        for i in range(s["warmup"] + s["steps"]):
            overhead.sync(args.device)
            t = time.perf_counter()
            c.step(batch)
            overhead.sync(args.device)
            if i >= s["warmup"]:
                times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms": 1e3 * statistics.median(times), "peak_gib": peak / 2**30,
            "above_weights_gib": (peak - weights) / 2**30 if cuda else None}


def run_child(name: str, args) -> dict:
    """``measure`` in a fresh subprocess (its peak memory its own); the dry shape runs in this process
    (a CPU's peak RSS says nothing, and five interpreters cost more than the steps)."""
    if args.shape == "dry":
        try:
            return measure(name, args)
        except Exception as e:  # noqa: BLE001  (reported in the table, as a subprocess's failure is)
            return {"error": f"{type(e).__name__}: {e}"[:160]}
    cmd = [sys.executable, __file__, "train", "--child", name, "--device", args.device, "--shape", args.shape]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:160]}


def fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def train_table(args) -> list[str]:
    s = SHAPES[args.shape]
    rows = {name: run_child(name, args) for name in CONTESTANTS}
    f0 = rows["F0"].get("ms")
    autocast = "bf16" if args.device.startswith("cuda") else "off"
    lines = [f"7B-architecture step ({s['model']}, {str(dtype(args.device))[6:]} weights, autocast {autocast}, "
             f"batch {s['batch']}x{s['seq']}, {args.device})", "",
             "| contestant | ms/step | x F0 | peak GiB | GiB above the weights |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = r["ms"] / f0 if "ms" in r and f0 else None
        lines.append(f"| {name} | {fmt(r.get('ms'), '.1f')} | {fmt(ratio, '.3f')} | {fmt(r.get('peak_gib'), '.2f')} | "
                     f"{fmt(r.get('above_weights_gib'), '.2f')} |")
    lines += [f"note {name}: {r['error']}" for name, r in rows.items() if "error" in r]
    return lines


@torch.no_grad()
def generate_table(args) -> list[str]:
    """reftx generate (LoReFT at the first/last 7 prompt positions of every layer; random edits made
    visible) against plain HF generate on the same base: greedy, fixed length, median of rounds."""
    import reftx

    s = SHAPES[args.shape]
    b, prompt, new = (8, 128, 64) if args.shape == "full" else (2, 16, 4)
    base = build(s["model"], args.device).eval()
    ids = torch.randint(3, base.config.vocab_size, (b, prompt), generator=torch.Generator().manual_seed(2))
    ids = ids.to(args.device)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
              do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(fn) -> float:
        overhead.sync(args.device)
        t = time.perf_counter()
        out = fn()
        overhead.sync(args.device)
        timed.out = out
        return time.perf_counter() - t

    plain_t = [timed(lambda: base.generate(**kw)) for _ in range(3)]
    plain = timed.out
    model = reftx.attach(base, [overhead.SPEC]).eval()
    for p in model.interventions.parameters():
        p.add_(0.5 * torch.randn_like(p))
    edited_t = [timed(lambda: model.generate(**kw)) for _ in range(3)]
    edited = timed.out
    with model.disabled():
        same = torch.equal(model.generate(**kw), plain)
    ratio = statistics.median(e / p for e, p in zip(edited_t[1:], plain_t[1:]))  # the first round warms up
    return [f"generation ({s['model']}, {str(dtype(args.device))[6:]}, batch {b}, prompt {prompt}, {new} new tokens greedy, {args.device})",
            "", "| | s/generate | x plain |", "|---|---|---|",
            f"| plain HF generate | {statistics.median(plain_t[1:]):.3f} | 1.000 |",
            f"| reftx (LoReFT f7+l7, every layer) | {statistics.median(edited_t[1:]):.3f} | {ratio:.3f} |", "",
            f"reftx disabled == plain HF generate: {same}; the edit changes the output: {not torch.equal(edited, plain)}"]


def compare(a: str, b: str, tol: float = 1e-4) -> int:
    """Two finished runs of one experiment: the largest weight difference and both runs' metrics;
    exit 1 when the weights differ by more than ``tol``."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(Path(d) / "intervention" / "interventions.safetensors")) for d in (a, b))
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) if wa.keys() == wb.keys() else None
    ma, mb = (json.loads((Path(d) / "results.json").read_text())["metrics"] for d in (a, b))
    print(f"max |weight difference| {diff if diff is not None else 'n/a (different keys)'}\n{a}: {ma}\n{b}: {mb}")
    return 0 if diff is not None and diff <= tol else 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("train", "generate", "compare"))
    ap.add_argument("runs", nargs="*", help="compare: two run folders")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (then use --shape dry)")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="full", help="full: the 7B shape; dry: tiny")
    ap.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)) if args.device.startswith("cuda") else 1)
    if args.what == "compare":
        sys.exit(compare(*args.runs))
    if args.child:
        return child(args)
    print("\n".join(train_table(args) if args.what == "train" else generate_table(args)), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Memory of a QReFT base (model.quantization) against the float32 base, MEASURED on the default model
(SmolLM2-135M-Instruct) on the CPU: README "QReFT".

    python benchmarks/quant_memory.py                 # float32, bnb-int8, bnb-nf4; a table
    python benchmarks/quant_memory.py --steps 3       # training steps in each (default 2)

Each scheme runs in a fresh process: load the base (reftx.load_model), attach the quickstart's LoReFT
(rank 4 at 3 layers, first 3 and last 5 positions), and train ``--steps`` AdamW steps on a batch of 8
rows of 128 tokens (a 96-token prompt, a 32-token answer). Columns:

* weights MiB: the base's parameters and buffers as stored, quantized weights packed with their
  scales (reftx.models.quantization.weight_bytes); ``get_memory_footprint`` is transformers' count,
  which leaves bitsandbytes' scales out;
* RSS after load / peak RSS: the process's resident memory once the base is loaded (current) and its
  peak over loading and training (ru_maxrss), including torch and transformers themselves (~0.5 GiB)
  and the float32 weights that bitsandbytes reads while it quantizes;
* step s: the median seconds of a training step (bitsandbytes dequantizes in every matmul on a CPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MIB = 2**20
SCHEMES = ("float32", "bnb-int8", "bnb-nf4")
SPEC = [{"kind": "loreft", "rank": 4, "layers": [0.25, 0.5, 0.75], "positions": {"first": 3, "last": 5},
         "tie": "positions"}]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def one(scheme: str, steps: int) -> dict:
    import torch

    import reftx
    from reftx.models.quantization import weight_bytes

    torch.manual_seed(0)
    base, _ = reftx.load_model("default", quantization=None if scheme == "float32" else scheme)
    out = {"scheme": scheme, "weights_mib": weight_bytes(base) / MIB,
           "footprint_mib": base.get_memory_footprint() / MIB, "rss_after_load_mib": rss_mib()}
    model = reftx.attach(base, SPEC)
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-3)
    ids = torch.randint(10, 1000, (8, 128))
    labels = ids.masked_fill(torch.arange(128) < 96, -100)  # a 96-token prompt, a 32-token answer
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    out.update(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               step_s=statistics.median(times), loss=float(loss))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", choices=SCHEMES, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return
    print("| base | weights MiB | get_memory_footprint MiB | RSS after load MiB | peak RSS MiB | step s | loss |")
    print("|---|---|---|---|---|---|---|")
    for scheme in SCHEMES:
        proc = subprocess.run([sys.executable, __file__, "--one", scheme, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{scheme} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {scheme} | {r['weights_mib']:.1f} | {r['footprint_mib']:.1f} | {r['rss_after_load_mib']:.0f} | "
              f"{r['peak_rss_mib']:.0f} | {r['step_s']:.2f} | {r['loss']:.3f} |", flush=True)


if __name__ == "__main__":
    main()

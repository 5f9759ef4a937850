#!/usr/bin/env python
"""Cost of one LoReFT training step (forward + backward + AdamW step) on a frozen base.

Contestants, each on its own copy of one randomly initialised base: F0 (the base alone, backward
through every layer), floor (minimal hand-written hooks, same math), reftx, and pyreft 0.1.0 if
importable. Paired timing: each round runs k steps of every contestant back to back, and ratios
are medians of the per-round ratios. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import reftx
from reftx.train.optim import adamw

RANK, FIRST, LAST = 8, 7, 7
NAMES = ("F0", "floor", "reftx", "pyreft")
MODELS = {
    "smollm2": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=32, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128, vocab_size=1000),
}
# k = steps per contestant per round; warmup/rounds/steps are defaults that the CLI overrides.
SETTINGS = {
    "a": dict(label="SmolLM2-135M 8x128", model="smollm2", batch=8, seq=128, warmup=1, steps=1, rounds=5),
    "b": dict(label="SmolLM2-135M 1x64", model="smollm2", batch=1, seq=64, warmup=2, steps=2, rounds=9),
    "c": dict(label="tiny 32-layer 1x32", model="tiny", batch=1, seq=32, warmup=5, steps=5, rounds=15),
}
SPEC = {"kind": "loreft", "rank": RANK, "component": "block_output", "layers": "all",
        "positions": {"first": FIRST, "last": LAST}, "tie": "none"}


def build_base(model: str, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**MODELS[model], max_position_embeddings=512)).to(device).train()


def make_batch(s: dict, vocab: int, device: str) -> dict:
    """Random tokens, no padding; the first half is the prompt (labels -100), the rest the answer."""
    ids = torch.randint(vocab, (s["batch"], s["seq"]), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, : s["seq"] // 2] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


ADAMW: dict = {}  # extra AdamW keyword arguments (--adamw foreach|fused); default: torch's own choice


class Contestant:
    def __init__(self, name: str, loss_fn, params, obj=None, optimizer=torch.optim.AdamW):
        """``optimizer``: the AdamW class or builder; reftx's is the one its training builds
        (reftx.train.optim.adamw: FlatAdamW), unless --adamw sets one implementation for everyone."""
        self.name, self.loss_fn, self.obj = name, loss_fn, obj
        self.opt = (optimizer if not ADAMW else torch.optim.AdamW)(params, lr=1e-3, weight_decay=0.0, **ADAMW)

    def step(self, batch: dict) -> None:
        self.loss_fn(batch).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def orthonormal_rows(a: torch.Tensor) -> torch.Tensor:
    """(n, d, r) free matrices -> (n, r, d) orthonormal rows: Q of the reduced QR, sign-fixed (diag U > 0)."""
    q, u = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(u, dim1=-2, dim2=-1))
    return (q * torch.where(sign == 0, 1.0, sign).unsqueeze(-2)).transpose(-1, -2)


class Floor:
    """Hand-written LoReFT, h' = h + Rᵀ((W − R) h + b), on the first/last prompt positions of every layer.

    Parameters stacked as (layer, part, ...); index tensors built once for the fixed batch.
    """

    def __init__(self, base: LlamaForCausalLM, batch: int, prompt_len: int):
        assert FIRST == LAST
        layers, d, dev = base.model.layers, base.config.hidden_size, base.device
        self.base, self.cur = base, None
        self.A = torch.empty(len(layers), 2, d, RANK, device=dev)
        for a in self.A.view(-1, d, RANK):
            nn.init.orthogonal_(a)
        self.W = torch.randn(len(layers), 2, RANK, d, device=dev) / d**0.5
        self.b = torch.zeros(len(layers), 2, 1, RANK, device=dev)
        self.params = [t.requires_grad_() for t in (self.A, self.W, self.b)]
        rows = torch.arange(batch).repeat_interleave(FIRST)
        first, last = torch.arange(FIRST).repeat(batch), torch.arange(prompt_len - LAST, prompt_len).repeat(batch)
        self.bi, self.pi = torch.cat([rows, rows]).to(dev), torch.cat([first, last]).to(dev)
        for i, layer in enumerate(layers):
            layer.register_forward_hook(self._hook(i))

    def loss(self, batch: dict) -> torch.Tensor:
        n = self.A.shape[0]
        R = orthonormal_rows(self.A.flatten(0, 1)).view(n, 2, RANK, -1)  # one batched QR per step
        self.cur = list(zip(R.unbind(0), (self.W - R).unbind(0), self.b.unbind(0)))
        try:
            return self.base(**batch).loss
        finally:
            self.cur = None

    def _hook(self, i: int):
        def hook(module, args, h):
            R, WmR, b = self.cur[i]
            x = h[self.bi, self.pi].view(2, -1, h.shape[-1])  # (part, rows, d)
            z = torch.baddbmm(b, x, WmR.transpose(1, 2))  # (W − R) h + b
            h.index_put_((self.bi, self.pi), (x + z @ R).flatten(0, 1))

        return hook

    @torch.no_grad()
    def copy_from(self, m: reftx.ReftModel) -> None:
        for g in m.groups:
            mod, layer, j = m.intervention(g.key), g.layers[0], ("first", "last").index(g.parts[0])
            self.A[layer, j], self.W[layer, j] = mod.basis.weight, mod.source.weight
            self.b[layer, j, 0] = mod.source.bias


def make(name: str, base: LlamaForCausalLM, s: dict) -> Contestant:
    """Wrap ``base`` (consumed) as one contestant; raises if pyreft is unusable."""
    if name == "F0":
        scale = nn.Parameter(torch.ones((), device=base.device))
        base.requires_grad_(False)
        base.get_input_embeddings().register_forward_hook(lambda mod, args, out: out * scale)
        return Contestant(name, lambda b: base(**b).loss, [scale])
    if name == "floor":
        base.requires_grad_(False)
        f = Floor(base, s["batch"], s["seq"] // 2)
        return Contestant(name, f.loss, f.params, f)
    if name == "reftx":
        m = reftx.attach(base, [SPEC])
        return Contestant(name, lambda b: m(**b).loss, m.param_groups(0.0), m, adamw)
    import pyreft  # noqa: PLC0415  (optional: lives in the separate benchmark venv)

    L, d = base.config.num_hidden_layers, base.config.hidden_size
    reps = [{"layer": layer, "component": "block_output", "low_rank_dimension": RANK,
             "intervention": pyreft.LoreftIntervention(embed_dim=d, low_rank_dimension=RANK, dtype=torch.float32)}
            for layer in list(range(L)) * 2]  # share_weights=False: one set for "first", one for "last"
    rm = pyreft.get_reft_model(base, pyreft.ReftConfig(representations=reps))
    one = pyreft.get_intervention_locations(last_position=s["seq"] // 2, positions=f"f{FIRST}+l{LAST}",
                                            num_interventions=2 * L, share_weights=False)
    locs = torch.tensor([one] * s["batch"])  # (batch, interventions, positions), as pyreft's collator yields

    def loss(b: dict) -> torch.Tensor:  # what pyreft's ReftTrainer.compute_loss does
        _, cf = rm({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                   unit_locations={"sources->base": (None, locs.permute(1, 0, 2).tolist())}, labels=b["labels"])
        return cf.loss

    return Contestant(name, loss, rm.get_trainable_parameters(), rm)


@torch.no_grad()
def copy_to_pyreft(rm, m: reftx.ReftModel, L: int) -> float:
    """Load reftx's weights into pyreft (intervention i: layer i % L, part i // L); return max |ΔR|."""
    err = 0.0
    for i, iv in enumerate(rm.interventions.values()):
        mod = m.intervention(f"L{i % L}.block_output.{('first', 'last')[i // L]}")
        R = orthonormal_rows(mod.basis.weight[None])[0]
        iv.rotate_layer.weight = R.T.contiguous()  # orthogonal parametrization's right_inverse
        iv.learned_source.weight.copy_(mod.source.weight)
        iv.learned_source.bias.copy_(mod.source.bias)
        err = max(err, (iv.rotate_layer.weight - R.T).abs().max().item())
    return err


def sync(device: str) -> None:
    torch.cuda.synchronize() if device.startswith("cuda") else None


def check(cs: dict, batch: dict, L: int, notes: dict) -> dict:
    """Same weights in reftx, floor (and pyreft): same loss. Also: the edit changes the loss vs F0."""
    cs["floor"].obj.copy_from(cs["reftx"].obj)
    if "pyreft" in cs:
        try:
            notes["pyreft_R_copy_err"] = copy_to_pyreft(cs["pyreft"].obj, cs["reftx"].obj, L)
        except Exception as e:  # noqa: BLE001
            notes["pyreft_copy"] = f"failed: {type(e).__name__}: {e}"
    with torch.no_grad():
        loss = {n: c.loss_fn(batch).item() for n, c in cs.items()}
    close = lambda x, y: abs(x - y) <= 1e-5 * abs(y) + 1e-6  # noqa: E731
    out = {"losses": loss, "floor_matches_reftx": close(loss["floor"], loss["reftx"]),
           "edit_changes_loss": not close(loss["reftx"], loss["F0"])}
    if "pyreft" in loss:
        out["pyreft_matches_reftx"] = close(loss["pyreft"], loss["reftx"])
    return out


def clock(args):
    """Wall time (synchronised on CUDA), or with --clock cpu this process's CPU time, which a
    busy machine disturbs far less than wall time (meaningful with --threads 1 only)."""
    if args.clock == "cpu":
        return time.process_time
    return lambda: (sync(args.device), time.perf_counter())[1]


def run_setting(key: str, args) -> dict:
    s = {**SETTINGS[key], **{k: getattr(args, k) for k in ("warmup", "steps", "rounds") if getattr(args, k)}}
    base0 = build_base(s["model"], args.device)
    batch, L = make_batch(s, base0.config.vocab_size, args.device), base0.config.num_hidden_layers
    cs, notes = {}, {"pyreft": "n/a (--no-pyreft)"} if args.no_pyreft else {}
    for name in NAMES[: 3 if args.no_pyreft else 4]:
        try:  # build and warm up; pyreft, missing or broken on this stack, is dropped with its reason
            cs[name] = make(name, copy.deepcopy(base0), s)
            for _ in range(max(s["warmup"], 1)):
                cs[name].step(batch)
        except Exception as e:  # noqa: BLE001
            if name != "pyreft":
                raise
            cs.pop(name, None)
            notes[name] = f"n/a ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})"
    del base0
    result = {"setting": key, **s, "notes": notes, "check": check(cs, batch, L, notes)}
    times, now = {n: [] for n in cs}, clock(args)
    for r in range(s["rounds"]):
        for n in list(cs)[r % len(cs):] + list(cs)[: r % len(cs)]:  # the order rotates
            gc.collect()
            t = now()
            for _ in range(s["steps"]):
                cs[n].step(batch)
            times[n].append((now() - t) / s["steps"])
    ratios = lambda a, b: [x / y for x, y in zip(times[a], times[b])]  # noqa: E731
    result["ms_per_step"] = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    result["x_F0"] = {n: statistics.median(ratios(n, "F0")) for n in cs}
    result["x_floor"] = {n: statistics.median(ratios(n, "floor")) for n in cs}
    rf = ratios("reftx", "floor")
    result["reftx_x_floor_quartiles"] = statistics.quantiles(rf, n=4) if len(rf) > 1 else rf * 3
    result["reftx_x_floor_of_minima"] = min(times["reftx"]) / min(times["floor"])  # best case vs best case
    if "pyreft" in cs:
        result["reftx_over_pyreft"] = statistics.median(ratios("reftx", "pyreft"))
    result["raw_s"] = times
    if args.memory:
        result["peak_mib"] = {n: memory(n, key, args) for n in NAMES if n in cs or n != "pyreft"}
    return result


def _status(field: str) -> int:  # bytes, from /proc/self/status (VmRSS, VmHWM)
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(field))


def memory(name: str, key: str, args) -> float | str:
    """Peak memory above the loaded model over 3 steps, measured in a fresh subprocess."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # big tensors mmapped: freed memory leaves RSS
    cmd = [sys.executable, __file__, "--child", name, "--settings", key, "--device", args.device,
           "--threads", str(args.threads), "--adamw", args.adamw]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])["peak_mib"]
    except (IndexError, ValueError, KeyError):
        return f"n/a ({(p.stderr.strip().splitlines() or ['no output'])[-1][:100]})"


def child(args) -> None:
    s = SETTINGS[args.settings]
    base = build_base(s["model"], args.device)
    batch, c = make_batch(s, base.config.vocab_size, args.device), make(args.child, base, s)
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(), torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        before = _status("VmRSS")
    for _ in range(3):
        c.step(batch)
    sync(args.device)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else _status("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 2**20}))


def fmt(x, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def report(results: list[dict]) -> list[str]:
    lines = ["| setting | ms/step F0 | floor xF0 | reftx xF0 | pyreft xF0 | reftx xfloor (quartiles; of minima) "
             "| pyreft xfloor | reftx/pyreft | loss check |", "|" + "---|" * 9]
    for r in results:
        x, xf, ck = r["x_F0"], r["x_floor"], r["check"]
        ok = "ok" if ck["floor_matches_reftx"] and ck["edit_changes_loss"] else "MISMATCH"
        if "pyreft_matches_reftx" in ck:
            ok += ", pyreft " + ("same" if ck["pyreft_matches_reftx"] else "differs")
        q1, _, q3 = r["reftx_x_floor_quartiles"]
        cells = [r["label"], fmt(r["ms_per_step"]["F0"], ".1f"), *(fmt(x.get(n)) for n in NAMES[1:]),
                 f"{fmt(xf['reftx'])} ({fmt(q1)}–{fmt(q3)}; {fmt(r['reftx_x_floor_of_minima'])})", fmt(xf.get("pyreft")), fmt(r.get("reftx_over_pyreft")), ok]
        lines.append("| " + " | ".join(cells) + " |")
    if any("peak_mib" in r for r in results):
        lines += ["", "| setting | peak MiB F0 | floor | reftx | pyreft |", "|---|---|---|---|---|"]
        for r in results:
            p = r.get("peak_mib", {})
            lines.append(f"| {r['label']} | " + " | ".join(fmt(p.get(n), ".1f") for n in NAMES) + " |")
    for r in results:
        for n, note in r["notes"].items():
            lines.append(f"note [{r['setting']}] {n}: {note}")
    for r in results:
        if r["setting"] == "a":
            v = r["x_floor"]["reftx"]
            lines.append(f"target reftx <= 1.05x floor at 8x128: {v:.3f} -> {'MET' if v <= 1.05 else 'NOT MET'}")
        else:
            v = r.get("reftx_over_pyreft")
            met = "n/a (no pyreft)" if v is None else ("MET" if v < 1 else "NOT MET")
            lines.append(f"target reftx faster than pyreft on ({r['setting']}): reftx/pyreft = {fmt(v)} -> {met}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="a,b,c", help="comma-separated subset of a, b, c")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--rounds", type=int, default=0, help="paired rounds per setting (0: the setting's default)")
    ap.add_argument("--steps", type=int, default=0, help="steps per contestant per round (0: the setting's default)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps per contestant first (0: setting's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what to time (cpu: process CPU time)")
    ap.add_argument("--adamw", choices=("default", "foreach", "fused"), default="default",
                    help="AdamW implementation for every contestant (default: torch's choice, a for-loop on CPU, "
                         "for F0, floor and pyreft; reftx's own, FlatAdamW, for reftx)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory, one subprocess per contestant")
    ap.add_argument("--no-pyreft", action="store_true", help="skip pyreft even if it is installed")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.adamw != "default":
        ADAMW[args.adamw] = True
    if args.child:
        return child(args)
    if args.device.startswith("cuda"):
        args.clock = "wall"
    results, meta = [], {"torch": torch.__version__, "argv": sys.argv[1:], "python": sys.version}
    for key in args.settings.split(","):
        t = time.perf_counter()
        results.append(run_setting(key, args))
        print(f"[{key}] {time.perf_counter() - t:.0f}s: " + report(results[-1:])[2], file=sys.stderr, flush=True)
        if args.out:  # rewritten after every setting, so a long run keeps what it has measured
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=2)
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()

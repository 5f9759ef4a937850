"""Train a tiny llama with reftx.train in a process of its own (launched by test_train.py).

    python _train_script.py RUN_DIR STEPS CKPT_EVERY [--kill-at N] [--kill-in-save N] [--sigint-at N]
                            [--resume] [--per-rank]

--kill-at N       SIGKILL this process from on_log once step N is logged (no clean-up of any kind).
--kill-in-save N  SIGKILL this process in the middle of writing checkpoint step-N (after its weights and
                  trainer state are in the temporary folder, before state.json and the rename).
--sigint-at N     send this process SIGINT (Ctrl-C) from on_log at step N; exits with code 42 if
                  ``train`` then raises ``reftx.train.run.Interrupted``.
--resume          continue from the latest checkpoint in RUN_DIR.
--per-rank        also write RUN_DIR/rank{r}.safetensors with this rank's final weights (distributed runs).

At the end the trained interventions are saved to RUN_DIR/intervention (main process).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.conftest

import torch  # noqa: E402

import reftx  # noqa: E402
from reftx.train import run as train_mod  # noqa: E402
from reftx.data.encoding import Encoded  # noqa: E402
from reftx.config.schema import TrainConfig  # noqa: E402
from tests.conftest import VOCAB, tiny_model  # noqa: E402

INTERVENTIONS = [{"kind": "loreft", "rank": 4, "layers": "all", "positions": "all", "dropout": 0.1}]
INTERRUPTED_EXIT = 42


def make_data(n: int = 8, prompt_len: int = 6, seed: int = 0) -> list[Encoded]:
    """Random prompts, always answered "7 7"; labels -100 on the prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (prompt_len,), generator=g).tolist()
        answer = [7, 7]
        out.append(Encoded(prompt + answer, [-100] * prompt_len + answer, prompt_len))
    return out


def make_model(dropout: float = 0.1) -> reftx.ReftModel:
    base = tiny_model("llama")
    with torch.no_grad():
        base.lm_head.weight.mul_(25)  # a random tiny llama's logits are too flat to learn anything visible
    torch.manual_seed(1234)  # the intervention initialisation: the same in every process and on every rank
    return reftx.attach(base, [{**INTERVENTIONS[0], "dropout": dropout}])


def config(steps: int, ckpt_every: int, **kw) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=2, grad_accum=2, lr=1e-2, warmup=0.25, scheduler="linear",
                       checkpoint_every=ckpt_every, keep_checkpoints=2, log_every=1, **kw)


def _kill_inside_save(step: int) -> None:
    """Make ``save_checkpoint`` die right after writing trainer_state.pt into its temporary folder."""
    real_save = torch.save

    def save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        if Path(f).parent.name.startswith(f".tmp-step-{step}-"):
            os.kill(os.getpid(), signal.SIGKILL)

    train_mod.torch.save = save  # torch.save, as train.py's save_checkpoint reaches it


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("steps", type=int)
    ap.add_argument("ckpt_every", type=int)
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--kill-in-save", type=int)
    ap.add_argument("--sigint-at", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--per-rank", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # two of these often run side by side on a small machine
    run_dir = Path(args.run_dir)

    def on_log(rec):
        print(f"step {rec['step']} loss {rec['loss']:.6f}", flush=True)
        if rec["step"] == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rec["step"] == args.sigint_at:
            os.kill(os.getpid(), signal.SIGINT)

    if args.kill_in_save is not None:
        _kill_inside_save(args.kill_in_save)
    model = make_model()
    try:
        train_mod.train(model, make_data(), config(args.steps, args.ckpt_every), run_dir, pad_id=0, seed=3,
                        resume=args.resume, on_log=on_log, show_progress=False)
    except train_mod.Interrupted:
        print("interrupted", flush=True)
        sys.exit(INTERRUPTED_EXIT)
    rank = int(os.environ.get("RANK", "0"))
    if args.per_rank:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.interventions.state_dict().items()},
                  str(run_dir / f"rank{rank}.safetensors"))
    if rank == 0:
        model.save_pretrained(run_dir / "intervention")


if __name__ == "__main__":
    main()

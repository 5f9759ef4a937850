"""ReftModel: a frozen base model plus scheduled interventions.

    model = reftx.attach(base, [{"kind": "loreft", "rank": 4, "layers": [2, 5],
                                 "positions": {"first": 3, "last": 3}}])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20)
    model.save_pretrained(d); again = ReftModel.from_pretrained(base, d)
    model.push_to_hub("user/repo"); again = ReftModel.from_pretrained(base, "user/repo")  # reftx.models.hub

``train_modules`` (e.g. ``["score"]``, a classifier head) names base-model modules that train with
the interventions; their weights are saved and loaded with them (keys ``modules.<name>.<param>``).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import StoppingCriteriaList

from reftx.models import hub as share
from reftx.engine import sites
from reftx.core.errors import ConfigError, ReftError
from reftx.engine.generation import open_generation
from reftx.engine.hooks import HookManager, Overrides
from reftx.engine.inputs import check_forward, check_real_weights, detached_error, gradient_checkpointing
from reftx.core.intervention import Intervention, after_step, defining_module, make_intervention
from reftx.engine.serialization import (CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, read_config,
                                        read_extras, write_extras, write_interventions)
from reftx.engine.plan_table import Plan, trainable_line
from reftx.engine.schedule import INTERVENTION_DTYPES, Group, InterventionSpec, plan
from reftx.core.version import __version__

CARRIED = "reftx_interventions"  # the base's submodule holding the interventions after carry()

_ATTACHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _slot(key: str) -> str:
    return key.replace(".", "|")  # nn.Module names cannot contain dots


class ReftModel(nn.Module):
    """A base model (frozen) with interventions applied through forward hooks."""

    def __init__(self, base: nn.Module, interventions: list[dict[str, Any]], train_modules: Any = ()):
        super().__init__()
        if base in _ATTACHED:
            raise ReftError("this base model already has reftx interventions attached; detach() them first")
        config = getattr(base, "config", None)
        if config is None:
            raise ReftError("reftx.attach needs a transformers model (with a .config)")
        check_real_weights(base)
        specs, groups = plan(interventions, config)
        param = next(base.parameters())
        modules: dict[str, Intervention] = {}
        for g in groups:
            spec = specs[g.spec_index]
            mod = make_intervention(spec.kind, spec.options, g.dim, f"interventions.{g.spec_index}.")
            modules[g.key] = mod.to(device=param.device, dtype=INTERVENTION_DTYPES[spec.dtype] or param.dtype)
        self.base = base
        self.specs: list[InterventionSpec] = specs
        self.groups: list[Group] = groups
        self.interventions = nn.ModuleDict({_slot(k): m for k, m in modules.items()})
        self.extras = nn.ModuleDict()  # modules an objective keeps with the interventions (add_extra)
        self._frozen = {n: p.requires_grad for n, p in base.named_parameters()}
        base.requires_grad_(False)
        self.train_modules = tuple(train_modules)
        self._token_labels = bool(getattr(base, "can_generate", bool)())  # an LM: labels are (B, T) like the ids
        for i, name in enumerate(self.train_modules):
            try:
                base.get_submodule(name).requires_grad_(True)
            except AttributeError:
                top = [n for n, _ in base.named_modules() if n and "." not in n]
                raise ConfigError(f"model.train_modules.{i}", f"{type(base).__name__} has no module {name!r}; "
                                                              f"its top-level modules: {', '.join(top)}") from None
        self._hooks = HookManager(base, groups, modules)
        _ATTACHED.add(base)
        # a wrapper dropped without detach() must not leave hooks editing the base: the finalizer
        # holds only the hooks, the base and the saved flags (never self), and runs once
        self._release = weakref.finalize(self, _release, self._hooks, base, self._frozen)

    # -- introspection -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def intervention(self, key: str) -> Intervention:
        return self.interventions[_slot(key)]

    def named_interventions(self) -> Iterator[tuple[str, Intervention]]:
        for g in self.groups:
            yield g.key, self.intervention(g.key)

    def plan(self, show: bool = True) -> Plan:
        """Every group (key, kind, component, layers, position parts, parameter count), as a list;
        printed as a table unless ``show`` is False (engine.plan_table.Plan: ``str()``, ``.table``)."""
        groups = Plan(self.groups)
        if show:
            print(groups, end="")
        return groups

    def print_trainable_parameters(self) -> None:
        """Trainable (interventions, train_modules, extras) and all parameters, as peft prints them."""
        print(trainable_line(self.count_parameters(), self.count_parameters(trainable_only=False)))

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Parameters of the interventions, train_modules and extras (trainable_only) or of everything."""
        if not trainable_only:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.interventions.parameters() if p.requires_grad) + \
            sum(t.numel() for _, t in self._module_params()) + sum(p.numel() for p in self._extra_params())

    def add_extra(self, name: str, module: nn.Module) -> nn.Module:
        """Keep ``module`` with the interventions (an objective's state: PPO's value head, the RL KL
        anchor): its trainable parameters join ``param_groups`` and ``count_parameters``; save_pretrained
        and load_trained carry its state in ``extras.safetensors`` (from_pretrained does not need it)."""
        self.extras[name] = module.to(self.device)
        return self.extras[name]

    def _extra_params(self) -> list[nn.Parameter]:  # the trained ones (an anchor holds only buffers)
        return [p for p in self.extras.parameters() if p.requires_grad]

    def _module_params(self) -> list[tuple[str, nn.Parameter]]:
        """(saved key, parameter) of every train_modules parameter."""
        return [(f"modules.{name}.{n}", p) for name in self.train_modules
                for n, p in self.base.get_submodule(name).named_parameters()]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: orthonormal bases (and anything a primitive lists) skip weight decay."""
        decay, no_decay = [], []
        for _, mod in self.named_interventions():
            d, n = mod.decay_split()
            decay += d
            no_decay += n
        head = [p for _, p in self._module_params()] + self._extra_params()
        return [g for g in ({"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0},
                            {"params": head, "weight_decay": weight_decay}) if g["params"]]

    def after_optimizer_step(self) -> None:
        """Every modifier's post-step work, then group-level updates of shared modifiers."""
        after_step(mod for _, mod in self.named_interventions())

    @contextmanager
    def collecting_aux_losses(self) -> Iterator[dict[str, Tensor]]:
        """Within the block, the auxiliary losses of every forward that runs (also forwards a trainer
        runs on the base directly, after ``carry()``) are summed per name into the yielded dict, which
        is filled when the block ends."""
        aux: dict[str, Tensor] = {}
        with self._hooks.collecting() as closed:
            yield aux
        for ctx in closed:
            for key, values in ctx.losses.items():
                total = torch.stack(values).sum()
                aux[key] = aux[key] + total if key in aux else total

    # -- running -------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, prompt_lengths: Tensor | None = None,
                intervention_positions: Tensor | None = None,
                example_info: dict[str, Tensor] | None = None, **kwargs: Any) -> Any:
        """The base model's forward with interventions applied.

        prompt_lengths: (B,) prompt length of each row, overriding the label-derived prompt.
        intervention_positions: (B, K) explicit positions for every prompt group (-1 = none).
        example_info: per-example tensors passed to primitives through ``ctx.example_info``.
        Returns the base model's output (``out.loss`` is the base's own loss when labels are given)
        plus ``out["aux_losses"]``: the auxiliary losses the primitives published (``ctx.add_loss``,
        summed per name over sites), and ``out["records"]``. Nothing is composed here: training
        adds them with the modifiers' terms in reftx.train.loss.compose.
        Shapes and dtypes are checked first (reftx.engine.inputs.check_forward: no device sync).
        """
        if not self._release.alive:
            raise detached_error("forward")
        check_forward(input_ids, kwargs.get("inputs_embeds"), labels, self._token_labels)
        call = Overrides(prompt_lengths, intervention_positions, example_info or {})
        with self._hooks.forward_call(call):
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        ctx = call.state.ctx if call.state is not None else None
        if ctx is not None and ctx.records:
            out["records"] = ctx.records
        if ctx is not None and ctx.losses:
            out["aux_losses"] = {k: torch.stack(v).sum() for k, v in ctx.losses.items()}
        return out

    @torch.no_grad()
    def generate(self, *args: Any, prompt_lengths: Tensor | None = None, **kwargs: Any) -> Any:
        """``base.generate`` with interventions: prompt positions while the prompt runs, and
        ``{generated: n}`` groups on exactly the forwards whose input is generated token i < n.

        Exact, with or without a KV cache, for greedy search, sampling, beam search,
        ``num_return_sequences``, chunked prefill and prompt-lookup / assisted decoding
        (see reftx.engine.generation for how each forward is placed without trusting keyword names).
        A user-supplied cache (``past_key_values=``) continues a sequence: pass the whole sequence
        as ``input_ids``; only the uncached tail is run, so prompt positions inside the cached
        prefix keep whatever states the cache was built with (build it with this same model).
        Prompts must be left-padded (``tokenizer.padding_side = "left"``): a right-padded
        ``attention_mask``, or one with a 0 between 1s, is a DataError (one check, one sync).
        """
        if not self._release.alive:
            raise detached_error("generate")
        state = open_generation(self.base, args, kwargs, prompt_lengths)
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(state.criterion())
        with self._hooks.generation_call(state):  # the class's generate: carry() may route base.generate here
            return type(self.base).generate(self.base, *args, stopping_criteria=criteria, **kwargs)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model with every intervention switched off (e.g. a reference model)."""
        with self._hooks.switched_off():
            yield

    def carry(self) -> nn.Module:
        """Make the base model carry these interventions, for a trainer that takes a plain
        transformers model (``reftx.integrations.trl``): they become its submodule ``reftx_interventions``
        (the trainer's optimizer, device moves and train/eval modes reach them; the base's own
        weights stay frozen) and ``base.generate`` becomes this model's exact ``generate``.
        Returns the base; ``detach()`` undoes both."""
        if not self._release.alive:
            raise detached_error("carry")
        base = self.base
        if base._modules.get(CARRIED) is None:
            base.add_module(CARRIED, self.interventions)
            base.generate = self.generate
        return base

    def detach(self) -> nn.Module:
        """Remove reftx's hooks and return the base model exactly as it was (also done
        automatically when the ReftModel is garbage-collected). The ReftModel is then spent: forward,
        generate, carry and save_pretrained raise (save first; attach again to use the base)."""
        self._release()
        return self.base

    # -- saving --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, push_to_hub: bool = False, repo_id: str | None = None,
                        card_info: Any = None, **hub_kw: Any) -> Path:
        """Write ``interventions.safetensors`` and ``reft_config.json`` atomically. With ``card_info``
        (a run folder or a dict, reftx.models.hub.card_info_from_run) also a ``README.md`` model card; with
        ``push_to_hub``, then upload them to ``repo_id`` (``private``, ``commit_message``, ``token``)."""
        if not self._release.alive:
            raise detached_error("save_pretrained")
        directory = Path(directory)
        tensors = {f"{key}.{n}": t.detach().contiguous().cpu()
                   for key, mod in self.named_interventions() for n, t in mod.state_dict().items()}
        tensors.update({k: p.detach().contiguous().cpu() for k, p in self._module_params()})
        entries = []
        for i, spec in enumerate(self.specs):
            mod = next(self.intervention(g.key) for g in self.groups if g.spec_index == i)
            entries.append({**spec.to_yaml(), **dataclasses.asdict(mod.config)})
        modules = {spec.kind: defining_module(spec.kind) for spec in self.specs}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "reftx_version": __version__,
            "model": {"model_type": self.config.model_type,
                      "name_or_path": getattr(self.config, "_name_or_path", ""),
                      "num_layers": sites.num_layers(self.config)},
            "interventions": entries,
            "modules": modules,  # where each kind is defined: from_pretrained imports it in a fresh process
            "groups": {g.key: {"kind": g.kind, "component": g.component, "layers": list(g.layers),
                               "positions": list(g.parts), "params": g.params} for g in self.groups},
        }
        if self.train_modules:
            meta["train_modules"] = list(self.train_modules)
        write_interventions(directory, tensors, meta)  # a failure (a full disk) names the file, cause and fix
        write_extras(directory, dict(self.extras))
        if push_to_hub and not repo_id:
            raise ReftError("save_pretrained(push_to_hub=True) needs repo_id='user/name'")
        if card_info is not None or push_to_hub:
            share.write_card(directory, meta, card_info, repo_id)
        if push_to_hub:
            share.upload(directory, repo_id, (CONFIG_NAME, WEIGHTS_NAME), **hub_kw)
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, commit_message: str | None = None,
                    token: str | None = None, card_info: Any = None) -> Any:
        """Save to a temporary folder with a model card (``card_info``: a run folder or a dict) and
        upload it to the Hub repo ``repo_id`` (created if missing); returns the commit info."""
        with tempfile.TemporaryDirectory(prefix="reftx-push-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, card_info=card_info or {})
            return share.upload(tmp, repo_id, (CONFIG_NAME, WEIGHTS_NAME), private=private,
                                commit_message=commit_message, token=token)

    def load_trained(self, directory: str | os.PathLike, allow_nonfinite: bool = False) -> None:
        """Load weights that ``save_pretrained(directory)`` wrote into these same groups (resume).
        Every tensor must have the shape these groups expect, and finite values unless
        ``allow_nonfinite`` (a NaN or inf weight is an error naming the tensor)."""
        path = Path(directory) / WEIGHTS_NAME
        try:
            tensors = load_file(path, device=str(self.device))
        except FileNotFoundError:
            raise ReftError(f"{path} not found: not a reftx intervention directory (or an incomplete one)") from None
        except Exception as e:  # safetensors reports truncation and bad headers with its own error type
            raise ReftError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or truncated") from None
        expected = {f"{k}.{n}": t for k, m in self.named_interventions() for n, t in m.state_dict().items()}
        expected |= {k: p for k, p in self._module_params()}
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise ReftError(f"{path} does not match these interventions: "
                            f"missing {missing}, unexpected {extra}")
        for name, want in expected.items():
            got = tensors[name]
            if got.shape != want.shape:
                raise ReftError(f"{path}: tensor {name!r} has shape {tuple(got.shape)}, but this model's interventions "
                                f"expect {tuple(want.shape)} (the file's {CONFIG_NAME} and the config given here differ, "
                                "e.g. in rank or in the width of the component)")
            if not allow_nonfinite and got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise ReftError(f"{path}: tensor {name!r} holds NaN or inf values (a diverged run?); pass "
                                "allow_nonfinite=True to load it anyway")
        for key, mod in self.named_interventions():
            mod.load_state_dict({n: tensors[f"{key}.{n}"] for n in mod.state_dict()})
        with torch.no_grad():
            for k, p in self._module_params():
                p.copy_(tensors[k])
        read_extras(directory, dict(self.extras), self.device)

    @classmethod
    def from_pretrained(cls, base: nn.Module, directory: str | os.PathLike, allow_nonfinite: bool = False, *,
                        revision: str | None = None, token: str | None = None, cache_dir: Any = None) -> ReftModel:
        """Rebuild the interventions saved in ``directory`` on ``base`` (its device and dtype).
        ``directory`` is a local folder or a Hub repo id ("user/name", at ``revision``), fetched through
        the Hugging Face cache (reftx.models.hub.resolve; HF_HUB_OFFLINE=1 reads the cache alone). Only JSON
        and safetensors are read: nothing is ever unpickled. A base without real weights (meta device)
        is refused before anything is read."""
        check_real_weights(base)
        directory = share.resolve(directory, (CONFIG_NAME, WEIGHTS_NAME), revision=revision, token=token,
                                  cache_dir=cache_dir)
        cfg_path = directory / CONFIG_NAME
        meta = read_config(cfg_path)
        saved_type = meta["model"]["model_type"]
        if saved_type != base.config.model_type:
            raise ConfigError("model", f"interventions were trained on model_type {saved_type!r}, "
                                       f"not {base.config.model_type!r}")
        from reftx.core.intervention import INTERVENTIONS
        from reftx.core.plugins import ensure_kind

        for kind, module in (meta.get("modules") or {}).items():
            ensure_kind(INTERVENTIONS, kind, module)
        try:
            model = cls(base, meta["interventions"], meta.get("train_modules", ()))
        except ConfigError as e:
            raise ReftError(f"{cfg_path}: {e}") from None
        try:
            model.load_trained(directory, allow_nonfinite)
        except Exception:
            model.detach()
            raise
        return model


def _release(hooks: HookManager, base: nn.Module, frozen: dict[str, bool]) -> None:
    hooks.remove()
    base._modules.pop(CARRIED, None)  # what carry() added
    base.__dict__.pop("generate", None)
    for n, p in base.named_parameters():
        p.requires_grad_(frozen.get(n, p.requires_grad))
    _ATTACHED.discard(base)


def unwrap(model: Any) -> Any:
    """The ReftModel inside a DistributedDataParallel (``.module``) or ``model`` itself: the one DDP
    unwrap (a reference pass, a sampling call or a config read needs no gradient sync)."""
    return getattr(model, "module", model)


def attach(base: nn.Module, interventions: list[dict[str, Any]], train_modules: Any = ()) -> ReftModel:
    """Freeze ``base`` (except ``train_modules``) and attach the scheduled interventions."""
    return ReftModel(base, interventions, train_modules)


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ReftModel", "attach", "gradient_checkpointing", "unwrap"]

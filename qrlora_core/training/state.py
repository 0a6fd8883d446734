"""What a checkpoint keeps so that training can continue exactly where it stopped.

ΔR itself is the adapter. Beyond it, an exact continuation needs the
optimizer's per-layer state (AdamW: the step count and both moments), the
state of the run's random generator (which images, timesteps and noise come
next), the number of steps done, and the settings the run used. All of it
goes into the checkpoint's safetensors file: tensors as tensors under
`train_state.` (never pickled), the rest as JSON in one metadata entry.
The optimizer's hyperparameters are not restored from the file: a continued
run takes them from its own inputs, and `differences` says where those
differ from the recorded ones.
"""

import json
from dataclasses import dataclass, field

import torch

from ..errors import AdapterError, clipped
from ..formats import TRAINING_STATE_PREFIX as PREFIX
from ..formats import all_finite, read_safetensors

SQUARED = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")  # the optimizers' averages of squared gradients: they take their square root
META_KEY = "train_state"  # outside qrlora.*, which is the adapter's own metadata (copied on every save)
VERSION = 1


@dataclass
class TrainingState:
    step: int  # optimizer steps done in total
    optimizer: str  # its name, a key of session.OPTIMIZERS
    layers: dict  # layer name -> {state key: tensor or JSON value}
    generators: dict  # name -> torch.Generator state (uint8 tensor)
    settings: dict = field(default_factory=dict)  # what the run was trained with

    def pack(self) -> tuple[dict, dict]:
        """(tensors, metadata) for the checkpoint file."""
        tensors, scalars = {}, {}
        for name, entries in self.layers.items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{PREFIX}optimizer.{name}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(name, {})[key] = value
        for name, state in self.generators.items():
            tensors[f"{PREFIX}rng.{name}"] = state.to("cpu")
        facts = {"version": VERSION, "step": self.step, "optimizer": self.optimizer, "layers": list(self.layers),
                 "scalars": scalars, "settings": self.settings}
        return tensors, {META_KEY: json.dumps(facts)}

    @classmethod
    def unpack(cls, tensors: dict, metadata: dict, source: str) -> "TrainingState | None":
        """The state a file keeps, or None for a plain adapter (no training state)."""
        if META_KEY not in metadata:
            return None
        try:
            facts = json.loads(metadata[META_KEY])
            if int(facts["version"]) > VERSION:
                raise AdapterError(f"{source} keeps its training state in a newer layout (version {facts['version']}) than this pack reads: update comfyui-qrlora.")
            layers = {name: dict(facts["scalars"].get(name, {})) for name in facts["layers"]}
            for key, value in tensors.items():
                if key.startswith(PREFIX + "optimizer."):
                    name, entry = key[len(PREFIX + "optimizer."):].rsplit(".", 1)
                    layers[name][entry] = value
            generators = {key[len(PREFIX + "rng."):]: value for key, value in tensors.items() if key.startswith(PREFIX + "rng.")}
            return cls(int(facts["step"]), str(facts["optimizer"]), layers, generators, dict(facts.get("settings", {})))
        except AdapterError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:  # int(Infinity), JSON nested too deep
            raise AdapterError(f"{source}: its training state is damaged ({clipped(repr(e))}); continue from an earlier checkpoint, or load it as a plain adapter.") from None

    @classmethod
    def capture(cls, step: int, optimizer_name: str, optimizer: torch.optim.Optimizer, names: list[str],
                generator_states: dict, settings: dict) -> "TrainingState":
        """The state of a run after `step` steps; `names[i]` is the layer of the optimizer's i-th parameter,
        `generator_states` the states (Generator.get_state()) of the run's generators after that step."""
        per_param = optimizer.state_dict()["state"]
        layers = {name: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in per_param.get(i, {}).items()}
                  for i, name in enumerate(names)}
        return cls(step, optimizer_name, layers, {k: s.clone() for k, s in generator_states.items()}, dict(settings))

    def restore(self, optimizer: torch.optim.Optimizer, names: list[str], generators: dict, source: str = "The checkpoint") -> None:
        """Put the optimizer's per-layer state and the generators back; hyperparameters stay the optimizer's own.

        Every entry is checked against what it replaces first (a layer keeps the keys its optimizer keeps, a
        moment is a tensor of its layer's shape, a generator state one a spare generator takes), so a damaged
        state is refused in a sentence here, with nothing restored, rather than failing at the next step."""
        missing = [n for n in names if n not in self.layers]
        if missing:
            raise AdapterError(f"The checkpoint's training state lacks {len(missing)} of the layers being trained (e.g. {missing[0]}).")
        damaged = f"{source}: its training state is damaged"
        advice = "continue from an earlier checkpoint, or load it as a plain adapter (its ΔR is unaffected)."
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for name, param, keys in zip(names, params, _state_keys(optimizer)):
            given = {key for key, value in self.layers[name].items() if value is not None}
            if self.layers[name] and given != keys:  # an empty state is a layer not stepped yet
                raise AdapterError(f"{damaged} (layer {name} keeps {clipped(sorted(given))} where {type(optimizer).__name__} keeps {sorted(keys)}): {advice}")
            for key, value in self.layers[name].items():
                if key != "step" and value is not None and not isinstance(value, torch.Tensor):
                    raise AdapterError(f"{damaged} ({key} of layer {name} is {clipped(repr(value))}, not a tensor): {advice}")
                if isinstance(value, torch.Tensor) and (value.dim() > 0 or key != "step") and (value.shape != param.shape or not value.is_floating_point()):
                    raise AdapterError(f"{damaged} ({key} of layer {name} is {tuple(value.shape)} {value.dtype}, the layer {tuple(param.shape)}): {advice}")
                if isinstance(value, torch.Tensor) and not all_finite(value):
                    raise AdapterError(f"{damaged} ({key} of layer {name} holds NaN or infinite values): {advice}")
                if key == "step" and not _whole_number_within(value, self.step):
                    raise AdapterError(f"{damaged} (layer {name} counts {clipped(str(value.tolist() if isinstance(value, torch.Tensor) else value))} optimizer steps, not a whole number from 0 "
                                       f"to the {self.step} the run took): {advice}")
                if key in SQUARED and isinstance(value, torch.Tensor) and bool((value < 0).any()):
                    raise AdapterError(f"{damaged} ({key} of layer {name}, an average of squares, holds negative values): {advice}")
        for key, generator in generators.items():
            saved, own = self.generators.get(key), generator.get_state()
            if saved is not None and (saved.shape != own.shape or saved.dtype != own.dtype):
                raise AdapterError(f"{damaged} (the random generator's state {key} is {tuple(saved.shape)} {saved.dtype}, not {tuple(own.shape)} {own.dtype}): {advice}")
            if saved is not None:
                try:  # on a spare generator: nothing is restored until every part of the state has passed
                    torch.Generator(device=generator.device).set_state(saved)
                except RuntimeError as e:
                    raise AdapterError(f"{damaged} (the random generator's state {key} is not one it can take: {clipped(str(e))}): {advice}") from None
        current = optimizer.state_dict()
        state = {i: dict(self.layers[name]) for i, name in enumerate(names) if self.layers[name]}
        optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
        for key, generator in generators.items():
            if key in self.generators:
                generator.set_state(self.generators[key])

    def differences(self, settings: dict) -> list[str]:
        """Settings of a continued run that differ from the ones this state was trained with."""
        return [f"{k} {self.settings[k]!r} -> {settings[k]!r}" for k in sorted(settings)
                if k in self.settings and self.settings[k] != settings[k]]


def _whole_number_within(value, most: int) -> bool:
    """Whether an optimizer's step count is one whole number from 0 to `most`: Adam divides by 1 - beta^(step + 1),
    which a count of -1 turns into a division by zero."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):  # Adam cannot add 1 to a bool tensor
        return False
    try:
        count = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return count.is_integer() and 0 <= count <= most


def _state_keys(optimizer: torch.optim.Optimizer) -> list[set]:
    """For each parameter of `optimizer`, the state keys one step of a fresh optimizer of its class and group settings
    gives it; those kept as None are left out (SGD without momentum keeps momentum_buffer None or nothing, by torch version)."""
    probes = [torch.zeros(1, dtype=group["params"][0].dtype, device=group["params"][0].device, requires_grad=True) for group in optimizer.param_groups]
    fresh = type(optimizer)([{**group, "params": [probe]} for group, probe in zip(optimizer.param_groups, probes)])
    for probe in probes:
        probe.grad = torch.zeros_like(probe)
    fresh.step()
    kept = [{key for key, value in fresh.state[probe].items() if value is not None} for probe in probes]
    return [keys for group, keys in zip(optimizer.param_groups, kept) for _ in group["params"]]


def steps_trained(adapter) -> int:
    """The steps an adapter says it was trained for (0 where it does not say): a count a continued run adds to."""
    text = str(adapter.metadata.get("steps", 0) or 0)
    if not (text.isascii() and text.isdigit() and len(text) < 19):  # no sign, fraction or exponent; at most what an int64 holds
        raise AdapterError(f"{adapter.source or 'The adapter'} says it was trained for {clipped(text)!r} steps, not a whole number: "
                           "its metadata is damaged; continue from another checkpoint of its run, or train a new adapter.")
    return int(text)


def read_training_state(path: str, source: str) -> TrainingState | None:
    """The training state a checkpoint file keeps (None for a plain adapter), without reading its adapter tensors."""
    tensors, metadata = read_safetensors(path, lambda header: [k for k in header.keys() if k.startswith(PREFIX)], name=source)
    return TrainingState.unpack(tensors, metadata, source)

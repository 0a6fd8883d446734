"""A grid of content x style mixes sampled as one batch on a clone of the model (qrlora_core/grid.py's math).

The clone carries two pieces of ComfyUI's patcher machinery and no weight
patch:
- an injection (PatcherInjection): when ComfyUI loads the clone it puts a
  forward hook on each target layer that adds the cell's own
  s·Q·(a·ΔR_content + b·ΔR_style)·x to the layer's output; unloading takes
  the hooks off again, so the shared model is left as it was;
- an APPLY_MODEL wrapper that, for each model call, tells the hooks which
  cell each batch row is. calc_cond_batch concatenates whole copies of the
  batch (cond, uncond, ... as memory allows: it never splits the batch
  itself), so row j is cell j mod (number of cells) whatever it batched.

Each cell starts from the same noise (and an ancestral or SDE sampler
draws the same noise for each cell), so a cell is what one KSampler run of
a batch of one at the same seed gives on the model patched with that mix.
"""

import inspect

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.grid import MixFactors, mix_factors, mix_output
from . import keymap
from .targets import resolve_targets

WRAPPER_KEY = "qrlora_grid"


def _layer_output(module, x: torch.Tensor, factors: MixFactors, coefficients: torch.Tensor) -> torch.Tensor:
    """mix_output for a linear layer, or for a 1x1 convolution (channels in dim 1) moved to features-last and back."""
    if module.weight.dim() == 2:
        return mix_output(x, factors, coefficients)
    return mix_output(x.movedim(1, -1), factors, coefficients).movedim(-1, 1)


def _check_pointwise(module, key: str) -> None:
    """A 1x1 convolution is the matrix the adapter holds only without stride, padding, dilation or groups."""
    if module.weight.dim() == 2:
        return
    plain = all(s == 1 for s in module.stride) and all(p == 0 for p in module.padding) and getattr(module, "groups", 1) == 1
    if not plain:
        raise AdapterError(f"The grid cannot mix into {key}: it is a strided or padded convolution; leave it out of the adapter.")


class GridMix:
    """Per-cell mixes of `adapters` (content, style) on a clone of `model`, cell i weighting them by `weights[i]`."""

    def __init__(self, model, adapters: list, weights: list[tuple[float, ...]]):
        self.weights = torch.tensor(weights, dtype=torch.float32)  # (cells, adapters)
        self.layers = self._layers(model, adapters)  # module path -> [(row slice or None, factors)]
        self.rows = None  # {dtype: (batch rows, adapters)} while the model runs, else None
        self._hooks = []

    @staticmethod
    def _layers(model, adapters: list) -> dict:
        per_target: dict = {}
        for index, adapter in enumerate(adapters):
            found, _ = resolve_targets(model, adapter)
            for name, where in found.items():
                per_target.setdefault(where, [None] * len(adapters))[index] = adapter.targets[name]
        if not per_target:
            raise AdapterError("Neither adapter has a layer in this model.")
        layers: dict = {}
        for where, targets in per_target.items():
            key, offset = keymap.split_target(where)
            if offset is not None and offset[0] != 0:
                raise AdapterError(f"The grid cannot mix into {key}: its adapter layer is a slice of columns, not rows.")
            if not key.endswith(".weight"):
                raise AdapterError(f"The grid cannot mix into {key}: it is not a layer's weight.")
            factors = mix_factors(targets, [a.scale for a in adapters], [a.shared_basis for a in adapters])
            convert = keymap.convert_of(where)
            if convert is not None:  # the model stores these rows in another order (SD3's swapped scale/shift): Q's rows follow
                factors.q = convert(factors.q)
            layers.setdefault(key[: -len(".weight")], []).append((offset, factors))
        return layers

    # -------------------------------------------------------- ComfyUI's machinery

    def patched(self, model):
        """A clone of `model` that mixes per cell; the model itself is not changed."""
        for path in self.layers:
            _check_pointwise(comfy.utils.get_attr(model.model, path), path)
        clone = model.clone()
        clone.set_injections(WRAPPER_KEY, [comfy.patcher_extension.PatcherInjection(inject=self._inject, eject=self._eject)])
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, self._apply_model)
        return clone

    def _inject(self, patcher) -> None:
        self._eject(patcher)
        device = patcher.load_device
        for path, slices in self.layers.items():
            module = comfy.utils.get_attr(patcher.model, path)
            self._hooks.append(module.register_forward_hook(self._hook([(offset, f.to(device)) for offset, f in slices])))

    def _eject(self, patcher) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _hook(self, slices: list):
        in_dtype: dict = {}  # the factors cast to the dtype the layer computes in, once per dtype

        def add_mix(module, args, output):
            if self.rows is None:
                return output  # a call outside the grid's sampling: the plain model
            x = args[0]
            if x.dtype not in in_dtype:
                in_dtype[x.dtype] = [(offset, f.to(dtype=x.dtype)) for offset, f in slices]
            rows = self.rows.get(x.dtype)
            if rows is None:
                rows = self.rows[x.dtype] = next(iter(self.rows.values())).to(x.dtype)
            for offset, factors in in_dtype[x.dtype]:
                delta = _layer_output(module, x, factors, rows)
                if offset is None:
                    output += delta
                else:
                    output.narrow(-1 if module.weight.dim() == 2 else 1, offset[1], offset[2]).add_(delta)
            return output

        return add_mix

    def _apply_model(self, executor, x, *args, **kwargs):
        cells = self.weights.shape[0]
        if x.shape[0] % cells:
            raise AdapterError(f"The model was called with a batch of {x.shape[0]}, not whole copies of the grid's {cells} cells.")
        rows = self.weights.to(x.device).repeat(x.shape[0] // cells, 1)
        self.rows = {rows.dtype: rows}
        try:
            return executor(x, *args, **kwargs)
        finally:
            self.rows = None


def _same_noise_per_cell(sampler, sampler_name: str, shape, seed: int, sigmas: torch.Tensor, device):
    """The sampler, drawing for every cell the noise a batch of one would draw at `seed` (a sampler that draws
    none is returned as it is). The draws are the ones the sampler's own default would make: the k-diffusion
    SDE samplers (dpmpp_*sde*) a Brownian tree, the others plain seeded normal draws."""
    if len(sigmas) <= 1 or "noise_sampler" not in inspect.signature(sampler.sampler_function).parameters:
        return sampler  # no step to take (denoise 0: no sigmas): ComfyUI returns the latent as it is, drawing nothing
    one = torch.zeros((1, *shape[1:]), device=device)
    if sampler_name.startswith("dpmpp_") and "sde" in sampler_name:
        positive = sigmas[sigmas > 0]
        draw = comfy.k_diffusion.sampling.BrownianTreeNoiseSampler(one, positive.min(), sigmas.max(), seed=seed, cpu=not sampler_name.endswith("_gpu"))
    else:
        draw = comfy.k_diffusion.sampling.default_noise_sampler(one, seed=seed)
    cells = shape[0]
    sampler.extra_options = {**sampler.extra_options, "noise_sampler": lambda sigma, sigma_next: draw(sigma, sigma_next).repeat(cells, *(1,) * (len(shape) - 1))}
    return sampler


def sample(mix: GridMix, model, positive, negative, latent: dict, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0) -> torch.Tensor:
    """Every cell of the grid in one sampling run, as KSampler samples (its sigmas, sampler and progress):
    the cells' latents, (cells, C, H, W), all from the first latent of `latent` and the same noise."""
    cells = mix.weights.shape[0]
    patched = mix.patched(model)
    first = comfy.sample.fix_empty_latent_channels(patched, latent["samples"][:1])
    repeat = (cells, *(1,) * (first.dim() - 1))
    noise = comfy.sample.prepare_noise(first, seed).repeat(repeat)
    start = first.repeat(repeat)
    sigmas = comfy.samplers.KSampler(patched, steps=steps, device=patched.load_device, sampler=sampler_name, scheduler=scheduler,
                                     denoise=denoise, model_options=patched.model_options).sigmas
    sampler = _same_noise_per_cell(comfy.samplers.sampler_object(sampler_name), sampler_name, start.shape, seed, sigmas, patched.load_device)
    samples = comfy.samplers.sample(patched, noise, positive, negative, cfg, patched.load_device, sampler, sigmas, patched.model_options,
                                    latent_image=start, denoise_mask=latent.get("noise_mask"), callback=latent_preview.prepare_callback(patched, steps),
                                    disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())

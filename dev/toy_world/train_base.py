"""Train the world's base model from scratch: a TAESD autoencoder, then an SD1.5-architecture UNet.

Runs on the GPU machine (bench-style, through the `run` tool); `--tiny`
runs every step at toy scale on the CPU, to check the script before a GPU
call. Everything the stock nodes will later do to an image or a caption is
done here with ComfyUI's own code, so the UNet is trained on exactly what a
user's graph feeds it:
- captions go through the stock CLIP loader and CLIPTextEncode's calls
  (toy_world.text_encoder's CLIP-L, fp16 weights, fp32 compute);
- images go through comfy.sd.VAE.encode (VAE Encode) in fp32 and the
  model's process_latent_in (SD1.5's 0.18215);
- the noise follows the model's own sampling object (ModelSamplingDiscrete,
  eps prediction): x = latent + σ·ε fed as x / sqrt(σ² + 1) at timestep t(σ),
  which is DDPM's sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε; the loss is MSE on ε, t uniform.
TF32 is off while encoding, so the GPU's numbers match a CPU server's.

The autoencoder's vae_scale / vae_shift buffers are set after its training
so that what the UNet sees (0.18215 · VAE Encode's output) has mean 0 and
standard deviation 1 over the world.

Writes into --out: taesd.safetensors, unet.safetensors (fp16, with the
EMA weights), samples.png (base prompts sampled through comfy.sample, the
KSampler's code path), and a log with the losses and scores.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from devkit.host import import_comfy  # noqa: E402
from toy_world import model_files, scores, text_encoder, world  # noqa: E402


def log(*parts):
    print(*parts, flush=True)


# ------------------------------------------------------------------ data


def world_images(items) -> torch.Tensor:
    """(N, H, W, 3) float in [0, 1], the IMAGE layout LoadImage gives."""
    return torch.from_numpy(np.stack([world.render(i) for i in items])).float() / 255.0


def generic_images(count: int, seed: int) -> torch.Tensor:
    """(count, H, W, 3) float in [0, 1]: generic pictures for the autoencoder, which is an image codec, not the world.

    A real latent diffusion model's autoencoder is trained on far more than
    its UNet ever learns to draw; trained on the base world alone, ours could
    not even encode a pattern the world holds out (a checkered heart came back
    from Encode -> Decode with its checker gone, pattern score 0.0), so no
    adapter on the UNet could ever draw one. These pictures are not the
    world: random regions (ellipses, rectangles, triangles, half-planes) in
    random RGB colours, filled solid, with stripes at any angle and period,
    with dots, or with a mosaic of random colour cells of 8 or 16 px laid on
    the codec's 8 px grid, so every latent cell learns to carry its own colours.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:world.SIZE, 0:world.SIZE].astype(np.float32) + 0.5
    out = np.empty((count, world.SIZE, world.SIZE, 3), dtype=np.uint8)

    def texture():
        colours = rng.integers(0, 256, size=(3, 3)).astype(np.float32)
        kind = rng.integers(4)
        if kind == 0:
            return np.broadcast_to(colours[0], (world.SIZE, world.SIZE, 3))
        if kind == 1:  # stripes
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
            phase = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform()
            return colours[(np.floor(phase) % 2).astype(np.int64)]
        if kind == 2:  # dots
            grid = rng.uniform(8, 24)
            radius = rng.uniform(1.5, grid / 2.2)
            ox, oy = rng.uniform(0, grid, size=2)
            inside = np.hypot((x + ox) % grid - grid / 2, (y + oy) % grid - grid / 2) <= radius
            return colours[inside.astype(np.int64)]
        cell = int(rng.choice([8, 16]))  # mosaic on the codec's own 8 px grid (one latent cell per 8x8 pixels)
        ox, oy = 8 * rng.integers(0, cell // 8, size=2)
        cells = rng.integers(0, int(rng.integers(2, 4)), size=(world.SIZE // cell + 2, world.SIZE // cell + 2))
        return colours[cells[((y + oy) // cell).astype(np.int64), ((x + ox) // cell).astype(np.int64)]]

    for n in range(count):
        image = texture().copy()
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(16, 112, size=2)
            a, b = rng.uniform(12, 60, size=2)
            kind = rng.integers(4)
            if kind == 0:
                region = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
            elif kind == 1:
                region = (np.abs(x - cx) <= a) & (np.abs(y - cy) <= b)
            elif kind == 2:
                region = (y - cy <= b) & (np.abs(x - cx) <= (y - cy + b) * a / (2 * b))
            else:
                angle = rng.uniform(0, 2 * np.pi)
                region = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle) > 0
            image[region] = texture()[region]
        out[n] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return torch.from_numpy(out).float() / 255.0


def codec_images(args, images: torch.Tensor) -> torch.Tensor:
    """What the autoencoder trains on: the world's images, then the generic pictures."""
    generic = generic_images(60 if args.tiny else args.generic_images, seed=4)
    log(f"[data] {len(generic)} generic images for the autoencoder (generic_images)")
    return torch.cat([images, generic])


HELD_OUT = (world.Item(world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, world.CHECKER_COLOURS),
            world.Item("circle", world.HELD_OUT_STYLE, world.CHECKER_COLOURS))


def held_out_roundtrip(vae, label: str) -> list[dict]:
    """Scores of the held-out checkered heart and circle through VAE Encode -> VAE Decode (can the codec carry them?)."""
    with torch.no_grad():
        back = vae.decode(vae.encode(world_images(HELD_OUT)))
    rows = []
    for item, image in zip(HELD_OUT, back):
        s = scores.score(image.clamp(0, 1).mul(255).round().byte().cpu().numpy(), item.shape, item.style, item.rgb())
        rows.append({"item": f"{item.shape} in {item.style}", **s})
        log(f"[{label}] {item.shape} in {item.style} through Encode -> Decode: shape IoU {s['shape_iou']:.3f}, pattern {s['pattern']:.3f}")
    return rows


def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    """CLIPTextEncode's two calls per caption: (N, 77, 768)."""
    out = []
    for text in captions:
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        out.append(cond[0][0][0].float().cpu())
    return torch.stack(out)


# ------------------------------------------------------------------ autoencoder


def train_vae(images: torch.Tensor, device, seconds: float, batch: int, log_every: int, probe: int = 20, world_count: int | None = None,
              steps: int | None = None):
    """TAESD trained on `images`; its latent scale and shift are set from the first `world_count` of them (the world)."""
    import comfy.taesd.taesd

    torch.manual_seed(0)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    for m in vae.modules():  # ComfyUI's layers skip their initialisation: do PyTorch's default
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.Conv2d.reset_parameters(m) if isinstance(m, torch.nn.Conv2d) else torch.nn.Linear.reset_parameters(m)
    vae.to(device)
    params = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    x_all = (images.permute(0, 3, 1, 2) * 2 - 1).to(device)  # [-1, 1], as VAE Encode's process_input
    generator = torch.Generator(device="cpu").manual_seed(1)
    start, step, losses = time.time(), 0, []
    total = steps
    while True:
        elapsed = time.time() - start
        if total is None and step == probe:  # time a few steps, then fit the run into `seconds`
            total = max(2 * probe, int(seconds / (elapsed / probe)))
            log(f"[vae] {elapsed / probe * 1000:.1f} ms/step -> {total} steps")
        if total is not None and step >= total:
            break
        lr = 1e-3 * (0.5 * (1 + math.cos(math.pi * step / total)) if total else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(x_all), (batch,), generator=generator).to(device)
        x = x_all[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            raw = vae.taesd_encoder(x * 0.5 + 0.5)
            noisy = raw + 0.1 * torch.randn_like(raw)  # robust to what a sampler leaves in the latent
            out = vae.taesd_decoder(noisy).sub(0.5).mul(2)
        rec = (out.float() - x).square().mean() + 0.5 * (out.float() - x).abs().mean()
        reg = 1e-3 * raw.float().square().mean()
        loss = rec + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(rec.item())
        if step % log_every == 0:
            log(f"[vae] step {step} reconstruction loss {np.mean(losses[-log_every:]):.5f} latent rms {raw.float().square().mean().sqrt().item():.3f}")
    with torch.no_grad():
        world_x = x_all[:world_count]
        raws = torch.cat([vae.taesd_encoder(world_x[i:i + 256] * 0.5 + 0.5).float() for i in range(0, len(world_x), 256)])
        mean, std = raws.mean().item(), raws.std().item()
        scale_factor = 0.18215  # SD1.5's latent_format
        vae.vae_scale.fill_(scale_factor * std)
        vae.vae_shift.fill_(-mean / (scale_factor * std))
    log(f"[vae] {step} steps in {time.time() - start:.0f} s; raw latent mean {mean:.4f} std {std:.4f}; "
        f"vae_scale {vae.vae_scale.item():.5f} vae_shift {vae.vae_shift.item():.5f}")
    return vae.cpu(), {"steps": step, "seconds": time.time() - start, "final_loss": float(np.mean(losses[-50:]))}


def sharpen_decoder(vae_path: str, images: torch.Tensor, device, steps: int, batch: int, log_every: int = 250):
    """Train the decoder of a written TAESD further, its encoder frozen: sharper images, the same latents.

    The UNet and every adapter see only the encoder's latents, so this
    changes nothing they learned; it only lets VAE Decode draw what the
    latents already say (an 8 px checker's edges, not a blur between them).
    """
    import comfy.taesd.taesd
    import safetensors.torch

    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    vae.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(vae_path).items()})
    vae.to(device)
    opt = torch.optim.AdamW(vae.taesd_decoder.parameters(), lr=3e-4, weight_decay=0.0)
    x_all = (images.permute(0, 3, 1, 2) * 2 - 1).to(device)
    generator = torch.Generator(device="cpu").manual_seed(5)
    start, losses = time.time(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-4 * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = x_all[torch.randint(len(x_all), (batch,), generator=generator).to(device)]
        with torch.no_grad():
            raw = vae.taesd_encoder(x * 0.5 + 0.5)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = vae.taesd_decoder(raw + 0.05 * torch.randn_like(raw)).sub(0.5).mul(2)
        loss = (out.float() - x).square().mean() + 0.5 * (out.float() - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            log(f"[decoder] step {step + 1} reconstruction loss {np.mean(losses[-log_every:]):.5f}")
    log(f"[decoder] {steps} steps in {time.time() - start:.0f} s")
    return vae.cpu(), {"steps": steps, "seconds": time.time() - start, "final_loss": float(np.mean(losses[-50:]))}


# ------------------------------------------------------------------ UNet


def init_unet(unet: torch.nn.Module, seed: int) -> None:
    """PyTorch's default initialisation (ComfyUI's layers skip it), norms at 1 / 0, output layers zero as in SD."""
    torch.manual_seed(seed)
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.Conv2d.reset_parameters(m)
        elif isinstance(m, torch.nn.Linear):
            torch.nn.Linear.reset_parameters(m)
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            if m.weight is not None:
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)
    for name, m in unet.named_modules():
        if name.endswith(("out_layers.3", "proj_out")) or name == "out.2":
            for p in m.parameters():
                torch.nn.init.zeros_(p)


def train_unet(base_model, latents, embeds, empty, item_caption_index, device, seconds, batch, log_every, lr, probe=30, steps=None):
    """eps-prediction training of base_model.diffusion_model; returns the EMA weights."""
    unet = base_model.diffusion_model
    init_unet(unet, seed=2)
    unet.to(device).train()
    ema = {k: v.detach().clone().float() for k, v in unet.state_dict().items()}
    ema_values = list(ema.values())
    sampling = base_model.model_sampling
    sigmas_all = sampling.sigmas.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    latents, embeds, empty = latents.to(device), embeds.to(device), empty.to(device)
    with_colours, without = item_caption_index
    with_colours, without = with_colours.to(device), without.to(device)
    generator = torch.Generator(device="cpu").manual_seed(3)
    start, step, losses, total = time.time(), 0, [], steps
    while True:
        elapsed = time.time() - start
        if total is None and step == probe:
            total = max(2 * probe, int(seconds / (elapsed / probe)))
            log(f"[unet] {elapsed / probe * 1000:.1f} ms/step -> {total} steps")
        if total is not None and step >= total:
            break
        warm = min(1.0, (step + 1) / 200)
        decay = 0.5 * (1 + math.cos(math.pi * step / total)) if total else 1.0
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.05 + 0.95 * decay)
        idx = torch.randint(len(latents), (batch,), generator=generator).to(device)
        choice = torch.rand(batch, generator=generator).to(device)
        # 70 %: the caption with colours, 20 %: without, 10 %: empty (for classifier-free guidance)
        caption = torch.where(choice < 0.7, with_colours[idx], without[idx])
        context = torch.where((choice >= 0.9)[:, None, None], empty[None], embeds[caption])
        x0 = latents[idx]
        t = torch.randint(0, len(sigmas_all), (batch,), generator=generator).to(device)
        sigma = sigmas_all[t]
        eps = torch.randn(x0.shape, generator=generator).to(device)
        noisy = sampling.noise_scaling(sigma, eps, x0)  # x0 + σ ε
        xc = sampling.calculate_input(sigma, noisy)  # / sqrt(σ² + 1)
        timestep = sampling.timestep(sigma).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = unet(xc, timestep, context=context)
        loss = (pred.float() - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_values, [v.float() for v in unet.state_dict().values()], 1 - d)
        losses.append(loss.item())
        if step % log_every == 0:
            log(f"[unet] step {step} loss {np.mean(losses[-log_every:]):.5f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - start:.0f} s)")
    log(f"[unet] {step} steps in {time.time() - start:.0f} s, batch {batch}; loss (last 100 steps) {np.mean(losses[-100:]):.5f}")
    return ema, {"steps": step, "batch": batch, "seconds": time.time() - start, "final_loss": float(np.mean(losses[-100:])),
                 "loss_curve": [float(np.mean(losses[i:i + log_every])) for i in range(0, len(losses), log_every)]}


# ------------------------------------------------------------------ check: sample through ComfyUI


def sample_check(unet_path, vae_sd, clip, prompts, device, steps, out_png):
    """Load the written UNet with the stock loader's function, sample each prompt with KSampler's code, score it."""
    import comfy.sample
    import comfy.sd

    model = comfy.sd.load_diffusion_model(unet_path)
    log(f"[check] the stock loader reads {os.path.basename(unet_path)} as {type(model.model.model_config).__name__} "
        f"({type(model.model).__name__}, {type(model.model.model_sampling).__name__})")
    vae = comfy.sd.VAE(sd=vae_sd)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    rows, results = [], []
    for n, (prompt, item) in enumerate(prompts):
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        latent = torch.zeros(1, 4, world.SIZE // 8, world.SIZE // 8)
        noise = comfy.sample.prepare_noise(latent, seed=n)
        samples = comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, seed=n)
        image = vae.decode(samples)[0].clamp(0, 1).mul(255).round().byte().cpu().numpy()
        s = scores.score(image, item.shape, item.style, item.rgb())
        results.append({"prompt": prompt, **s})
        log(f"[check] {prompt!r}: shape IoU {s['shape_iou']:.3f} (best match {s['best_shape']}), pattern {s['pattern']:.3f}")
        rows.append(np.concatenate([world.render(item), image], axis=1))
    from PIL import Image

    grid = np.concatenate([np.concatenate(rows[i:i + 4], axis=1) for i in range(0, len(rows) - len(rows) % 4 or len(rows), 4)], axis=0) if len(rows) >= 4 else np.concatenate(rows, axis=0)
    Image.fromarray(grid).save(out_png)
    return results


# ------------------------------------------------------------------ main

REFERENCE_CAPTIONS = ["", "a red and blue circle in horizontal stripes style", "a ring in dots style", "a <c> shape",
                      "a square in <s> style", "a <c> shape in <s> style"]


def write_reference(out: str, path: str) -> int:
    """CLIPTextEncode's output for a few captions on this (CPU) machine, for the GPU run to compare with."""
    import safetensors.torch

    clip_path = os.path.join(out, "clip_l_regenerated.safetensors")
    text_encoder.save(clip_path)
    import comfy.sd

    clip = comfy.sd.load_clip(ckpt_paths=[clip_path], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    embeddings = encode_captions(clip, REFERENCE_CAPTIONS)
    names = torch.frombuffer(bytearray(json.dumps(REFERENCE_CAPTIONS).encode()), dtype=torch.uint8)
    safetensors.torch.save_file({"embeddings": embeddings.contiguous(), "captions": names}, path)
    os.remove(clip_path)
    log(f"[reference] {len(REFERENCE_CAPTIONS)} caption embeddings written to {path}")
    return 0



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True, help="ComfyUI's source folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="toy scale on the CPU (checks the script)")
    parser.add_argument("--vae-seconds", type=float, default=90)
    parser.add_argument("--generic-images", type=int, default=2000, help="generic pictures the autoencoder trains on besides the world")
    parser.add_argument("--unet-seconds", type=float, default=300)
    parser.add_argument("--vae-steps", type=int, help="train the autoencoder this many steps (instead of --vae-seconds)")
    parser.add_argument("--unet-steps", type=int, help="train the UNet this many steps (instead of --unet-seconds)")
    parser.add_argument("--vae", metavar="VAE_FILE", help="keep this written TAESD (no autoencoder training): a new UNet on the same codec")
    parser.add_argument("--sharpen-decoder", metavar="VAE_FILE", help="only train this TAESD's decoder further (encoder frozen) and write it to --out")
    parser.add_argument("--decoder-steps", type=int, default=4000)
    parser.add_argument("--unet-batch", type=int, default=256)
    parser.add_argument("--unet-lr", type=float, default=3e-4)
    parser.add_argument("--reference", help="caption embeddings computed on a CPU (--write-reference), to compare with")
    parser.add_argument("--write-reference", action="store_true", help="only write --reference here, on the CPU")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cpu = args.tiny or args.write_reference or not torch.cuda.is_available()
    import_comfy(args.comfyui, cpu=cpu)
    import comfy.sd
    import comfy.supported_models
    import safetensors.torch

    if args.write_reference:
        return write_reference(args.out, args.reference)

    device = torch.device("cpu" if cpu else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name() if not cpu else "cpu", "torch": torch.__version__}
    t0 = time.time()

    items = list(world.base_items())
    if args.tiny:
        items = items[::50]
    images = world_images(items)
    log(f"[data] {len(items)} base images ({len(world.BASE_SHAPES)} shapes x {len(world.BASE_STYLES)} styles x colours)")

    if args.sharpen_decoder:
        return sharpen(args, images, device, report)

    # text encoder: the file setup writes, loaded as CLIPLoader does
    clip_path = os.path.join(args.out, "clip_l_regenerated.safetensors")
    text_encoder.save(clip_path)
    clip = comfy.sd.load_clip(ckpt_paths=[clip_path], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    captions = sorted({c for i in items for c in (i.caption(True), i.caption(False))})
    index = {c: n for n, c in enumerate(captions)}
    t = time.time()
    embeds = encode_captions(clip, captions)
    empty = encode_captions(clip, [""])[0]
    log(f"[clip] {len(captions)} captions encoded in {time.time() - t:.1f} s")
    if args.reference:
        ref = safetensors.torch.load_file(args.reference)
        texts = json.loads(ref.pop("captions").numpy().tobytes().decode())
        mine = encode_captions(clip, texts)
        diff = (mine - ref["embeddings"]).abs().max().item()
        report["clip_max_abs_diff_vs_cpu"] = diff
        log(f"[clip] max |GPU - CPU server| over {len(texts)} reference captions: {diff:.3g}")

    # autoencoder: trained here, or a written one kept (--vae: the codec stays, only the UNet's world changes)
    if args.vae:
        vae_path, report["vae"] = args.vae, {"kept": os.path.basename(args.vae)}
    else:
        vae_model, report["vae"] = train_vae(codec_images(args, images), device, 5 if args.tiny else args.vae_seconds, 4 if args.tiny else 64,
                                             5 if args.tiny else 200, 2 if args.tiny else 20, world_count=len(images),
                                             steps=None if args.tiny else args.vae_steps)
        vae_path = os.path.join(args.out, model_files.VAE_FILE)
        safetensors.torch.save_file({k: v.detach().to(torch.float16).contiguous() for k, v in vae_model.state_dict().items()}, vae_path)
    vae_sd = safetensors.torch.load_file(vae_path)
    vae = comfy.sd.VAE(sd=dict(vae_sd), dtype=torch.float32)  # as VAELoader, fp32 as on a CPU
    with torch.no_grad():
        vae_latents = torch.cat([vae.encode(images[i:i + 128]) for i in range(0, len(images), 128)])
        decoded = torch.cat([vae.decode(vae_latents[i:i + 128]) for i in range(0, len(images), 128)])
    report["vae"]["roundtrip_mean_abs_error_255"] = (decoded - images).abs().mean().item() * 255
    log(f"[vae] VAE Encode -> VAE Decode through comfy.sd.VAE: mean |error| {report['vae']['roundtrip_mean_abs_error_255']:.2f} / 255")
    report["vae"]["held_out_roundtrip"] = held_out_roundtrip(vae, "vae")
    report["vae_latents_of_first_items"] = vae_latents[:4].tolist()  # compared with a CPU VAE Encode after download

    # UNet: SD1.5 architecture, the file the stock UNETLoader detects
    config = comfy.supported_models.SD15(dict(model_files.UNET_CONFIG))
    base_model = config.get_model({})
    latents = base_model.process_latent_in(vae_latents)
    log(f"[unet] latents as the model sees them: mean {latents.mean():.4f} std {latents.std():.4f}; "
        f"{sum(p.numel() for p in base_model.diffusion_model.parameters()) / 1e6:.2f}M parameters")
    with_colours = torch.tensor([index[i.caption(True)] for i in items])
    without = torch.tensor([index[i.caption(False)] for i in items])
    ema, report["unet"] = train_unet(
        base_model, latents, embeds, empty, (with_colours, without), device,
        5 if args.tiny else args.unet_seconds, 4 if args.tiny else args.unet_batch, 5 if args.tiny else 250, args.unet_lr,
        2 if args.tiny else 30, steps=None if args.tiny else args.unet_steps,
    )
    unet_path = os.path.join(args.out, model_files.UNET_FILE)
    safetensors.torch.save_file({k: v.to(torch.float16).contiguous() for k, v in ema.items()}, unet_path)
    del base_model

    prompts = []
    rng = np.random.default_rng(7)
    for shape in world.BASE_SHAPES:
        item = world.random_item(rng, (shape,), world.BASE_STYLES)
        prompts.append((item.caption(True), item))
    for style in world.BASE_STYLES[1:]:
        item = world.random_item(rng, world.BASE_SHAPES, (style,))
        prompts.append((item.caption(False), item))
    prompts = prompts[:2] if args.tiny else prompts
    results = sample_check(unet_path, vae_sd, clip, prompts, device, 3 if args.tiny else 30, os.path.join(args.out, "samples.png"))
    report["check"] = results
    report["check_mean_shape_iou"] = float(np.mean([r["shape_iou"] for r in results]))
    report["check_mean_pattern"] = float(np.mean([r["pattern"] for r in results]))
    report["seconds"] = time.time() - t0
    log(f"[done] mean shape IoU {report['check_mean_shape_iou']:.3f}, mean pattern {report['check_mean_pattern']:.3f}, {report['seconds']:.0f} s")
    os.remove(clip_path)
    with open(os.path.join(args.out, "train_base.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


def sharpen(args, images, device, report) -> int:
    """--sharpen-decoder: the decoder trained further on the same pictures; round trips reported before and after."""
    import comfy.sd
    import safetensors.torch

    def roundtrip(path, label):
        vae = comfy.sd.VAE(sd=safetensors.torch.load_file(path), dtype=torch.float32)
        with torch.no_grad():
            world_back = torch.cat([vae.decode(vae.encode(images[i:i + 128])) for i in range(0, len(images), 128)])
        error = (world_back - images).abs().mean().item() * 255
        log(f"[decoder] {label}: world round trip mean |error| {error:.2f} / 255")
        return {"world_roundtrip_mean_abs_error_255": error, "held_out_roundtrip": held_out_roundtrip(vae, f"decoder, {label}")}

    report["before"] = roundtrip(args.sharpen_decoder, "before")
    vae, report["decoder"] = sharpen_decoder(args.sharpen_decoder, codec_images(args, images), device,
                                             5 if args.tiny else args.decoder_steps, 4 if args.tiny else 64)
    path = os.path.join(args.out, model_files.VAE_FILE)
    safetensors.torch.save_file({k: v.detach().to(torch.float16).contiguous() for k, v in vae.state_dict().items()}, path)
    report["after"] = roundtrip(path, "after")
    with open(os.path.join(args.out, "sharpen_decoder.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

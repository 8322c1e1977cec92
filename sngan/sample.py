"""What sngan-sample and sngan-eval do, callable without the CLI: a checkpoint's generator at work.

``load_generator`` rebuilds G (or G_ema) from a checkpoint alone, through the config saved in it;
``sample`` writes a grid or a folder of PNG files; ``evaluate_checkpoint`` scores it against the
images its run trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from sngan import checkpoint
from sngan.build import build_networks, resolve_device, training_images
from sngan.config import EvalConfig, SampleConfig
from sngan.evaluation import check_inception, evaluate, reference_name
from sngan.models.latent import sample_z
from sngan.resume import saved_config


def load_generator(
    path: str | Path, ema: bool, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """G_ema (or G) of a checkpoint, in eval mode on ``device``, and the checkpoint itself."""
    state = checkpoint.load(path, map_location="cpu")
    cfg = saved_config(Path(path), state)
    G, _ = build_networks(cfg)
    key = "G_ema" if ema else "G"
    try:
        G.load_state_dict(state[key])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise checkpoint.CheckpointError(
            f"{path}: its {key} weights do not fit the {cfg.model.name} generator of its own "
            f"config (saved by sngan {state.get('sngan_version')}): {detail[:400]}"
        ) from e
    return G.to(device).eval(), state


@torch.no_grad()
def generate(
    G: nn.Module, n: int, *, seed: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """``n`` images of G as (n, 3, H, W) uint8 on the CPU, z (and labels) from ``seed``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        z, y = sample_z(min(batch_size, n - start), G.z_dim, G.num_classes, gen, device)
        chunks.append(((G(z, y).float() + 1) * 127.5).round().clamp(0, 255).byte().cpu())
    return torch.cat(chunks)


def write_images(images: torch.Tensor, out: Path) -> None:
    """A square-ish grid if ``out`` is a .png file, else one PNG per image in the folder ``out``."""
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = torchvision.utils.make_grid(images, nrow=max(1, int(len(images) ** 0.5)))
        torchvision.io.write_png(grid, str(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        torchvision.io.write_png(img, str(out / f"{i:06d}.png"))


def sample(args: SampleConfig) -> int:
    """sngan-sample: write ``args.n`` images of the checkpoint's generator; return its iteration."""
    device = resolve_device(args.device)
    G, state = load_generator(args.checkpoint, args.ema, device)
    images = generate(G, args.n, seed=args.seed, batch_size=args.batch_size, device=device)
    write_images(images, Path(args.out))
    return state["iteration"]


def evaluate_checkpoint(args: EvalConfig) -> dict[str, Any]:
    """sngan-eval: IS/FID of the checkpoint's generator against the images its run trained on."""
    device = resolve_device(args.device)
    check_inception(args.metrics)  # before any other work
    G, state = load_generator(args.checkpoint, args.ema, device)
    cfg = saved_config(Path(args.checkpoint), state)
    if args.data_root is not None:
        cfg.data.root = args.data_root
    reference, _ = training_images(cfg)
    result = evaluate(
        G,
        reference,
        args.metrics,
        reference_name=reference_name(cfg),
        device=device,
        seed=args.seed,
    )
    return {
        "checkpoint": str(args.checkpoint),
        "iteration": state["iteration"],
        "protocol": args.metrics.protocol,
        "generator": "G_ema" if args.ema else "G",
        **result,
    }

"""What sngan-sample does, callable without the CLI: a checkpoint's generator at work.

``sample`` draws the checkpoint's G_ema (or G) as evaluation scores it
(``sngan.resume.load_generator``: the run's ``optim.ema_bn_stats`` unless ``ema_bn_stats=``
says otherwise) and writes one grid image or a folder of PNG files.

Layouts are row-major lists of latents that ``render`` turns into images: ``per_class`` (every z
under every label, from ``sngan.models.latent``, as the training grids) and ``interpolation``
(rows of ``slerp`` between two z).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from sngan import atomic
from sngan.build import resolve_device
from sngan.config import BN_STATS, ConfigError, SampleConfig
from sngan.models.latent import per_class, sample_z
from sngan.resume import load_generator

GRIDS = ("square", "per_class")
# What an error suggests for a grid file (any extension Pillow writes is taken).
COMMON_EXTENSIONS = (".png", ".jpg", ".webp")


# -- latents --------------------------------------------------------------------------------------


def slerp(
    a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float, eps: float = 1e-6
) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1) along the last dimension.

    slerp(a, b, t) = sin((1 - t) W) / sin W * a + sin(t W) / sin W * b, where
    cos W = <a, b> / (|a| |b|): the great circle through a and b, so two z of equal norm give
    z of that norm all the way (a straight line would cut through the low-density centre of
    N(0, I)). Parallel or antiparallel a and b (sin W < ``eps``) have no one great circle: lerp,
    (1 - t) a + t b. Shapes broadcast: a, b (..., D), t (...) or (..., 1).
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() == a.dim() - 1 or t.dim() == 0:
        t = t.unsqueeze(-1)  # (..., 1)
    cos = (a * b).sum(-1, keepdim=True) / (
        a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)
    )
    omega = torch.acos(cos.clamp(-1.0, 1.0))  # (..., 1)
    sin = torch.sin(omega)
    degenerate = ~(sin.abs() >= eps)  # NaN too: a zero vector has no direction
    safe = torch.where(degenerate, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(degenerate, (1 - t) * a + t * b, spherical)


def interpolation(
    rows: int,
    steps: int,
    z_dim: int,
    num_classes: int,
    gen: torch.Generator,
    device: torch.device,
    label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rows`` slerps of ``steps`` z each (endpoints included), row-major.

    From ``gen``, in this order: the rows' start z (rows, z_dim), their end z (rows, z_dim), and
    for a conditional model one uniform label per row (unless ``label`` fixes it), kept along
    the row. Returns (rows * steps, z_dim) z and (rows * steps,) labels (None if unconditional).
    """
    start = torch.randn(rows, z_dim, generator=gen, device=device)
    end = torch.randn(rows, z_dim, generator=gen, device=device)
    t = torch.linspace(0, 1, steps, device=device)
    z = slerp(start[:, None], end[:, None], t[None, :])  # (rows, steps, z_dim)
    y = None
    if num_classes:
        if label is None:
            y = torch.randint(0, num_classes, (rows,), generator=gen, device=device)
        else:
            y = torch.full((rows,), label, device=device)
        y = y.repeat_interleave(steps)
    return z.reshape(rows * steps, z_dim), y


# -- images ---------------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """G's output in [-1, 1] as uint8 in [0, 255], on the CPU."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).byte().cpu()


@torch.no_grad()
def render(G: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """G(z, y) as (n, 3, H, W) uint8 on the CPU, ``batch_size`` images at a time."""
    chunks = []
    for start in range(0, len(z), batch_size):
        stop = start + batch_size
        chunks.append(to_uint8(G(z[start:stop], None if y is None else y[start:stop])))
    return torch.cat(chunks)


@torch.no_grad()
def generate(
    G: nn.Module,
    n: int,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    label: int | None = None,
) -> torch.Tensor:
    """``n`` images of G as (n, 3, H, W) uint8 on the CPU, z (and labels) from ``seed``.

    Per batch, z then uniform labels are drawn; ``label`` replaces the labels (the z stay the
    same, so two classes are drawn from the same z).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        z, y = sample_z(min(batch_size, n - start), G.z_dim, G.num_classes, gen, device)
        if y is not None and label is not None:
            y = torch.full_like(y, label)
        chunks.append(to_uint8(G(z, y)))
    return torch.cat(chunks)


def grid_format(out: str | Path) -> str | None:
    """The Pillow format of the one grid image ``out`` names (by its extension), or None when
    ``out`` is a folder (it ends with a slash, or has no extension).

    Raises ConfigError for an extension Pillow cannot write, so that a name like ``grid.jpg``
    never becomes a folder and a typo fails before any image is drawn.
    """
    text = str(out)
    suffix = Path(text).suffix.lower()
    if text.endswith(("/", os.sep)) or not suffix:
        return None
    Image.init()  # every plugin registered, not only the common ones
    writable = {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if suffix not in writable:
        common = [ext for ext in COMMON_EXTENSIONS if ext in writable]
        raise ConfigError(
            f"out={text} is not valid: Pillow cannot write {suffix} images; end it with "
            f"{', '.join(common)} for one grid image, or with / for a folder of one PNG per image"
        )
    return writable[suffix]


def save_image(image: torch.Tensor, path: Path, image_format: str, durable: bool = True) -> None:
    """A (3, H, W) uint8 tensor as an RGB image file in ``image_format``, written atomically."""
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    # Grids are looked at: JPEG's and WebP's default quality 75 smears 32-pixel samples.
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    atomic.write_atomic(path, lambda f: pil.save(f, format=image_format, **options), fsync=durable)


def write_images(images: torch.Tensor, out: Path, nrow: int | None = None) -> None:
    """A grid ``nrow`` wide (default: square-ish) if ``out`` names an image file, else one PNG
    per image in the folder ``out``."""
    image_format = grid_format(out)
    if image_format is not None:
        import torchvision  # for its grid layout; imported where a grid is made

        nrow = nrow or max(1, int(len(images) ** 0.5))
        grid = torchvision.utils.make_grid(images, nrow=nrow)  # 2-pixel padding
        save_image(grid, out, image_format)
        return
    out.mkdir(parents=True, exist_ok=True)
    # Each file whole or absent; 50,000 of them are not fsynced one by one (minutes on a
    # network disk): a crash of the machine may lose the last ones, never leave half a file.
    for i, img in enumerate(images):
        save_image(img, out / f"{i:06d}.png", "PNG", durable=False)


# -- sngan-sample ---------------------------------------------------------------------------------


def _invalid(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}={value} is not valid: {why}")


def check_sample_args(args: SampleConfig) -> None:
    """Reject values and combinations that cannot work, before the checkpoint is read."""
    for key, value in (("n", args.n), ("batch_size", args.batch_size)):
        if value < 1:
            raise _invalid(key, value, "must be an integer >= 1")
    if args.grid not in GRIDS:
        raise _invalid("grid", args.grid, f"choose one of {', '.join(GRIDS)}")
    if args.interpolate < 0 or args.interpolate == 1:
        raise _invalid(
            "interpolate",
            args.interpolate,
            "must be 0 (off) or >= 2 images per row (endpoints included)",
        )
    grid_file = grid_format(args.out) is not None
    if args.interpolate and not grid_file:
        raise ConfigError(
            f"interpolate={args.interpolate} draws rows of a grid: give out=<file>.png, not the "
            f"folder out={args.out}"
        )
    if args.interpolate and args.grid != "square":
        raise ConfigError(
            f"interpolate={args.interpolate} and grid={args.grid} cannot be combined: "
            "interpolate lays out its own rows (one class each: random, or class=<k>)"
        )
    if args.grid == "per_class" and not grid_file:
        raise ConfigError(
            f"grid=per_class draws a grid: give out=<file>.png, not the folder out={args.out} "
            "(class=<k> writes one class's images)"
        )
    if args.grid == "per_class" and args.class_ is not None:
        raise ConfigError(
            f"class={args.class_} and grid=per_class cannot be combined: per_class draws every "
            "class, class=<k> one"
        )
    if args.ema_bn_stats is not None and args.ema_bn_stats not in BN_STATS:
        raise _invalid("ema_bn_stats", args.ema_bn_stats, f"choose one of {', '.join(BN_STATS)}")


def check_labels(args: SampleConfig, num_classes: int) -> None:
    """The label options fit the checkpoint's generator (``num_classes`` 0: unconditional)."""
    unconditional = "the checkpoint's generator is unconditional (model.num_classes=0)"
    if num_classes == 0 and args.class_ is not None:
        raise _invalid("class", args.class_, unconditional)
    if num_classes == 0 and args.grid == "per_class":
        raise _invalid("grid", args.grid, unconditional + "; use grid=square")
    if num_classes and args.class_ is not None and not 0 <= args.class_ < num_classes:
        raise _invalid(
            "class",
            args.class_,
            f"the checkpoint's generator has {num_classes} classes: 0..{num_classes - 1}",
        )


def sample(args: SampleConfig) -> tuple[int, int]:
    """sngan-sample: write images of the checkpoint's generator; return its iteration and how
    many images were written."""
    check_sample_args(args)
    device = resolve_device(args.device)
    # G_ema as evaluation scores it (the run's ema_bn_stats unless overridden).
    G, state = load_generator(args.checkpoint, args.ema, device, args.ema_bn_stats)
    check_labels(args, G.num_classes)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    nrow = None
    if args.interpolate:
        z, y = interpolation(
            args.n, args.interpolate, G.z_dim, G.num_classes, gen, device, label=args.class_
        )
        images, nrow = render(G, z, y, args.batch_size), args.interpolate
    elif args.grid == "per_class":
        z, y = per_class(torch.randn(args.n, G.z_dim, generator=gen, device=device), G.num_classes)
        images, nrow = render(G, z, y, args.batch_size), args.n
    else:
        images = generate(
            G, args.n, seed=args.seed, batch_size=args.batch_size, device=device, label=args.class_
        )
    write_images(images, Path(args.out), nrow)
    return state["iteration"], len(images)

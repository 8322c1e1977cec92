"""The training loop: read it top to bottom in ``train``.

Per generator iteration: ``n_dis`` D steps, each on a fresh real batch and fresh z, then
one G step on ``g_batch_size`` fresh z; then the EMA of G, then the learning-rate
schedules; maintenance (logs, samples, evaluation, checkpoints) is gated on the iteration
count. (The official Chainer updater runs its G step first inside each iteration; over a
run the two orders differ only in the first and the last update.)
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from sngan import checkpoint, distributed
from sngan.config import ConfigError, TrainConfig, to_dict, validate
from sngan.data import BatchStream, load_images
from sngan.losses import get_loss
from sngan.models import build_models
from sngan.spectral_norm import exact_sigmas, no_power_iteration, sigma_tensors, sigmas


class NonFiniteError(RuntimeError):
    """A loss, gradient or sigma became NaN or inf; the message names the step and the value."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint at the current iteration was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; a CUDA request without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name!r} is not valid: torch.cuda.is_available() is False here "
                "(no CUDA device, or a CPU-only torch build); use device=cpu or device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name!r} is not valid: only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def load_training_images(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.data``'s images, uint8 (N, 3, H, W), and labels (N,); bad data is a ConfigError."""
    d = cfg.data
    try:
        return load_images(
            d.source,
            root=d.root,
            image_size=d.image_size,
            download=d.download,
            num_images=d.num_images,
            seed=cfg.seed,
        )
    except (OSError, ValueError) as e:  # no such folder, no images in it, CIFAR-10 not there
        raise ConfigError(str(e)) from e


def build_networks(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    m = cfg.model
    return build_models(
        m.name,
        z_dim=m.z_dim,
        g_channels=m.g_channels,
        d_channels=m.d_channels,
        bottom_width=m.bottom_width,
        num_classes=m.num_classes,
    )


def sample_z(
    n: int, z_dim: int, num_classes: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z ~ N(0, I) of shape (n, z_dim), and uniform class labels (n,) for conditional models."""
    z = torch.randn(n, z_dim, generator=gen, device=device)
    y = torch.randint(0, num_classes, (n,), generator=gen, device=device) if num_classes else None
    return z, y


def grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@dataclass
class BadUpdate:
    """The first update with a NaN or inf since the guard's last report."""

    iteration: int  # 0-based: the update belongs to iteration ``iteration + 1``
    phase: str  # "D step 1 of 5", "G step"
    values: dict[str, float]  # the non-finite values by tag (loss, gradient norm, sigmas)
    count: int = 1  # bad updates since the last report, this one included


class UpdateGuard:
    """Finds NaN or inf in an update (loss, gradient norm, D's sigmas) before it is applied.

    Training forwards change buffers in place before the loss exists: D's power iteration
    advances u, v and the logged sigma, G's BatchNorm its running statistics.
    ``before_forward`` keeps a copy of every buffer of G and D, so that an update that is then
    rejected leaves both exactly as they were: for a skipped step and for the last good state
    saved on a stop.

    Two ways to act, chosen by the optimisers. Plain (for-each) Adam, the CPU default: ``check``
    reads one bool per update (a host sync, cheap on a CPU) and returns the bad values, so the
    caller stops or skips at that very update. Fused Adam, the CUDA default, can skip a step on
    the device (its ``found_inf`` tensor, the hook torch's GradScaler uses): ``check`` then
    never waits for the device; a bad update is skipped and its buffers restored there, and
    ``report``, called where the loop syncs anyway (its log steps), says what happened. With
    ``halt_on_bad`` (nan_policy=stop) every update after a bad one is skipped too, so the
    networks and optimisers stay as they were before it until the loop notices.
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        optimizers: dict[nn.Module, torch.optim.Optimizer],
        on_device: bool,
        halt_on_bad: bool,
    ) -> None:
        self.D = D
        self.optimizers = optimizers
        self.on_device = on_device
        named_sigmas = sigma_tensors(D)
        self.sigma_names = [f"sigma/{k}" for k in named_sigmas]
        self.sigmas = list(named_sigmas.values())
        self.buffers = [*G.buffers(), *D.buffers()]
        self.saved = [buf.clone() for buf in self.buffers]
        device = self.buffers[0].device if self.buffers else torch.device("cpu")
        # Device-side record of the updates since the last report.
        self.pending: list[tuple[int, str, str]] = []  # (iteration, phase, loss tag) per update
        # Only the device-side check halts (the host check stops the loop at once).
        halts = on_device and halt_on_bad
        self.halted = torch.zeros((), dtype=torch.bool, device=device) if halts else None
        self.bad_count = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # into pending
        self.first_values = torch.zeros(2 + len(self.sigmas), device=device)

    def before_forward(self) -> None:
        torch._foreach_copy_(self.saved, self.buffers)

    def _values(self, loss: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """(loss, gradient norm of ``net``, every sigma of D) as one float vector."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = grad_norm(net) if grads else loss.new_zeros(())
        return torch.cat(
            [loss.detach().reshape(1).float(), norm.reshape(1).float()]
            + [s.reshape(1).float() for s in self.sigmas]
        )

    def _named(self, loss_name: str, values: list[float]) -> dict[str, float]:
        suffix = loss_name.rsplit("/", 1)[-1]
        names = [loss_name, f"grad_norm/{suffix}", *self.sigma_names]
        return {k: v for k, v in zip(names, values, strict=True) if not math.isfinite(v)}

    def check(
        self, iteration: int, phase: str, loss: torch.Tensor, net: nn.Module
    ) -> dict[str, float]:
        """The non-finite values of the update ``net`` (G or D) is about to make; {} if none (or
        if the check runs on the device, where a bad update is skipped without telling the host)."""
        loss_name = "loss/d" if net is self.D else "loss/g"
        values = self._values(loss, net)
        if self.on_device:
            self._check_on_device(iteration, phase, loss_name, values, net)
            return {}
        # One host sync per update: the price of stopping at the very step that failed.
        if bool(torch.isfinite(values).all()):
            return {}
        torch._foreach_copy_(self.buffers, self.saved)  # undo the forwards of this update
        return self._named(loss_name, values.tolist())

    def _check_on_device(
        self, iteration: int, phase: str, loss_name: str, values: torch.Tensor, net: nn.Module
    ) -> None:
        bad = ~torch.isfinite(values).all()
        skip = bad
        if self.halted is not None:
            self.halted |= bad
            skip = self.halted.clone()
        self.optimizers[net].found_inf = skip.float()  # fused Adam skips its step on the device
        for buf, saved in zip(self.buffers, self.saved, strict=True):
            buf.copy_(torch.where(skip, saved, buf))
        first = bad & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(first, len(self.pending), self.first_bad))
        self.first_values.copy_(torch.where(first, values, self.first_values))
        self.bad_count += bad
        self.pending.append((iteration, phase, loss_name))

    def report(self) -> BadUpdate | None:
        """The first bad update checked on the device since the last report (one host sync)."""
        if not self.pending:
            return None
        count, index = torch.stack([self.bad_count, self.first_bad]).tolist()
        pending, self.pending = self.pending, []
        if not count:
            return None
        iteration, phase, loss_name = pending[index]
        values = self._named(loss_name, self.first_values.tolist())
        self.bad_count.zero_()
        self.first_bad.fill_(-1)
        return BadUpdate(iteration, phase, values, count)


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    real_y: torch.Tensor,
    z: torch.Tensor,
    fake_y: torch.Tensor | None,
    autocast: Any,
    check: Callable[[torch.Tensor], bool],
    joint: bool = True,
) -> dict[str, torch.Tensor]:
    """One D update on a real batch and as many generated images; returns device tensors.

    ``joint``: real and fake go through D in one forward of 2B images (fewer, larger kernels:
    the GPU default); otherwise in two forwards of B (the CPU default: 1-5 % faster on ours
    side by side, smaller activations). D has no batch statistics and u, v advance once per
    step either way, so the two compute the same update.
    """
    real_y = real_y if fake_y is not None else None  # labels only for conditional models
    with autocast:
        with torch.no_grad():
            fake = G(z, fake_y).to(real.dtype)  # (B, 3, H, W)
        if joint:
            y = torch.cat([real_y, fake_y]) if fake_y is not None else None
            logits = D(torch.cat([real, fake]), y).float()  # (2B,)
            real_logits, fake_logits = logits.chunk(2)
        else:
            real_logits = D(real, real_y).float()  # (B,)
            with no_power_iteration(D):
                fake_logits = D(fake, fake_y).float()
    loss = d_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    if check(loss):
        opt_d.step()
    return {"loss/d": loss.detach(), "d/real": real_logits.mean(), "d/fake": fake_logits.mean()}


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    g_loss: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    y: torch.Tensor | None,
    autocast: Any,
    check: Callable[[torch.Tensor], bool],
) -> dict[str, torch.Tensor]:
    """One G update against the current D (D's parameters get no gradient)."""
    D.requires_grad_(False)
    try:
        with autocast:
            logits = D(G(z, y), y).float()  # (B,)
        loss = g_loss(logits)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        D.requires_grad_(True)
    if check(loss):
        opt_g.step()
    return {"loss/g": loss.detach()}


@torch.no_grad()
def update_ema(
    G_ema: nn.Module, G: nn.Module, decay: float, hold: torch.Tensor | None = None
) -> None:
    """G_ema <- decay * G_ema + (1 - decay) * G; BatchNorm statistics are copied from G.

    ``hold``: a bool tensor; where true, G_ema stays as it is (decided on the device).
    """
    ema_p, p = list(G_ema.parameters()), list(G.parameters())
    ema_b, b = list(G_ema.buffers()), list(G.buffers())
    if hold is not None:
        weight = (~hold).float() * (1.0 - decay)
        torch._foreach_lerp_(ema_p, p, [weight] * len(p))
        for e, x in zip(ema_b, b, strict=True):
            e.copy_(torch.where(hold, e, x))
        return
    if decay == 0.0:
        torch._foreach_copy_(ema_p, p)
    else:
        torch._foreach_lerp_(ema_p, p, 1.0 - decay)
    torch._foreach_copy_(ema_b, b)


@dataclass(frozen=True)
class FastPaths:
    """The speed switches of the training step, as resolved for one device."""

    amp: bool  # bf16 autocast
    compile: bool  # torch.compile of G and D
    channels_last: bool  # networks and batches in channels_last memory format
    fused_adam: bool  # Adam(fused=True)
    joint_d_forward: bool  # real and fake through D in one forward (see d_step)

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> FastPaths:
        """The config's switches; null means on for CUDA and off for the CPU.

        (On CPUs bf16 autocast and compile do not pay everywhere, one D batch of 2B was 1-5 %
        slower than two of B on ours, and fused Adam no faster: docs/benchmarks.md.)
        """
        on_cuda = device.type == "cuda"
        names = cls.__dataclass_fields__
        return cls(**{k: on_cuda if getattr(cfg, k) is None else getattr(cfg, k) for k in names})


@dataclass
class Step:
    """What one generator iteration reads and updates, built by ``build_step``.

    ``G_run``/``D_run`` are the networks as run without an update (compiled when asked), and
    ``G_train``/``D_train`` as run for their own update (also wrapped in DDP under torchrun);
    all share their parameters with ``G`` and ``D``, which checkpoints save.
    """

    cfg: TrainConfig
    device: torch.device
    ctx: distributed.Context
    fast: FastPaths
    stream: BatchStream
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor], torch.Tensor]
    z_gen: torch.Generator
    G_run: nn.Module
    G_train: nn.Module
    D_run: nn.Module
    D_train: nn.Module
    autocast: Any
    guard: UpdateGuard


def build_step(
    cfg: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    ctx: distributed.Context | None = None,
) -> Step:
    """Networks, optimisers, schedules, data stream and fast paths, as ``cfg`` says."""
    ctx = ctx or distributed.Context()
    fast = FastPaths.resolve(cfg, device)
    o = cfg.optim
    memory_format = torch.channels_last if fast.channels_last else torch.preserve_format
    stream = BatchStream(
        images, labels, device=device, seed=cfg.seed, channels_last=fast.channels_last
    )
    torch.manual_seed(cfg.seed)  # the networks' initial weights
    G, D = build_networks(cfg)
    G.to(device, memory_format=memory_format)
    D.to(device, memory_format=memory_format)
    if cfg.sync_bn and ctx.enabled:
        distributed.convert_sync_batchnorm(G)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    fused = {"fused": True} if fast.fused_adam else {}
    opt_g = torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=o.betas, **fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=o.betas, **fused)

    def lr_factor(it: int) -> float:
        return max(0.0, 1.0 - it / cfg.iterations) if o.lr_decay == "linear" else 1.0

    # The updated network runs under DDP (gradients averaged over ranks; its buffers, D's u
    # and v among them, broadcast from rank 0 at each forward); the other one runs as the
    # plain module.
    def wrap(net: nn.Module) -> tuple[nn.Module, nn.Module]:
        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module, mode=cfg.compile_mode) if fast.compile else module

        if not ctx.enabled:
            plain = compiled(net)
            return plain, plain
        ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        return compiled(net), compiled(ddp)

    G_run, G_train = wrap(G)
    D_run, D_train = wrap(D)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if fast.amp else nullcontext()
    d_loss, g_loss = get_loss(cfg.loss.name)
    return Step(
        cfg=cfg,
        device=device,
        ctx=ctx,
        fast=fast,
        stream=stream,
        G=G,
        D=D,
        G_ema=G_ema,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor),
        sched_d=torch.optim.lr_scheduler.LambdaLR(opt_d, lr_factor),
        d_loss=d_loss,
        g_loss=g_loss,
        z_gen=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        G_run=G_run,
        G_train=G_train,
        D_run=D_run,
        D_train=D_train,
        autocast=autocast,
        guard=UpdateGuard(
            G,
            D,
            {G: opt_g, D: opt_d},
            on_device=fast.fused_adam,
            halt_on_bad=cfg.nan_policy == "stop",
        ),
    )


CheckFactory = Callable[[int, str, nn.Module], Callable[[torch.Tensor], bool]]


def generator_iteration(
    s: Step, it: int, check_factory: CheckFactory, eager: bool = False
) -> dict[str, torch.Tensor]:
    """Iteration ``it`` (0-based): n_dis D steps, one G step, the EMA, the schedules.

    ``check_factory(it, step_name, net)`` gives the check run between each backward and its
    optimiser step (train()'s NaN/inf policy). ``eager``: run the plain G and D, neither
    compiled nor under DDP (for counting FLOPs). Returns the last step's stats as device
    tensors.
    """
    m, o, ctx = s.cfg.model, s.cfg.optim, s.ctx
    G_run, G_train, D_run, D_train = (
        (s.G, s.G, s.D, s.D) if eager else (s.G_run, s.G_train, s.D_run, s.D_train)
    )
    s.G.train()
    s.D.train()

    # D steps: n_dis of them, each on a fresh real batch and fresh z. Every rank draws the same
    # global batch and keeps its own slice (so the run does not depend on the number of ranks'
    # random streams, and rank 0's checkpoint resumes them all).
    for j in range(o.n_dis):
        real, real_y = map(ctx.shard, s.stream.next(o.d_batch_size))
        z, fake_y = sample_z(o.d_batch_size, m.z_dim, m.num_classes, s.z_gen, s.device)
        z, fake_y = ctx.shard(z), fake_y if fake_y is None else ctx.shard(fake_y)
        s.guard.before_forward()
        check = check_factory(it, f"D step {j + 1} of {o.n_dis}", s.D)
        stats = d_step(
            G_run,
            D_train,
            s.opt_d,
            s.d_loss,
            real,
            real_y,
            z,
            fake_y,
            s.autocast,
            check,
            joint=s.fast.joint_d_forward,
        )

    # G step: g_batch_size fresh z (128 in the official ResNet config, twice D's).
    z, fake_y = sample_z(o.g_batch_size, m.z_dim, m.num_classes, s.z_gen, s.device)
    z, fake_y = ctx.shard(z), fake_y if fake_y is None else ctx.shard(fake_y)
    s.guard.before_forward()
    check = check_factory(it, "G step", s.G)
    stats.update(g_step(G_train, D_run, s.opt_g, s.g_loss, z, fake_y, s.autocast, check))

    # EMA of G: a plain copy until ema_start, then an exponential average.
    update_ema(s.G_ema, s.G, 0.0 if it + 1 <= o.ema_start else o.ema_decay, s.guard.halted)

    # Schedules: linear decay to 0 at the last iteration.
    s.sched_g.step()
    s.sched_d.step()
    return stats


def reference_name(cfg: TrainConfig) -> str:
    """A cache key for the reference statistics of the training images."""
    d = cfg.data
    if d.source == "cifar10":
        return "cifar10-train"
    if d.source == "folder":
        return "folder-" + "".join(c if c.isalnum() else "_" for c in str(Path(d.root).resolve()))
    return f"synthetic-{cfg.seed}-{d.num_images}-{d.image_size}"


@torch.no_grad()
def sample_grid(G: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """A (3, H', W') image grid of G(z) in [0, 1], drawn in eval mode."""
    was_training = G.training
    G.eval()
    images = G(z, y).float()
    G.train(was_training)
    return torchvision.utils.make_grid(images, nrow=8, normalize=True, value_range=(-1, 1))


def _record_iteration(line: str) -> int | None:
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
        return None


def _truncate_jsonl(path: Path, last_iteration: int) -> None:
    """Drop records past ``last_iteration`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if (i := _record_iteration(line)) is not None and i <= last_iteration
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def _flat_hparams(cfg: TrainConfig) -> dict[str, Any]:
    out = {}
    for section, values in to_dict(cfg).items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            name = f"{section}.{key}" if key else section
            if isinstance(value, list):
                value = str(value)
            if value is None:
                value = "null"
            out[name] = value
    return out


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks once per iteration.

    The first signal restores the previous handlers, so a second one stops at once
    (KeyboardInterrupt for Ctrl-C) without waiting for the checkpoint.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave the default handlers
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self._restore()
        print(
            f"sngan-train: {signal.Signals(signum).name} received, saving a checkpoint at the "
            "end of this iteration (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def resume_hint(run_dir: Path, extra: str = "") -> str:
    """How to continue ``run_dir`` from its newest checkpoint, or that there is none."""
    extra = f" {extra}" if extra else ""
    try:
        path = checkpoint.find_latest(run_dir)
    except checkpoint.CheckpointError:
        return f"no checkpoint of this run was saved yet; start it again{extra and ' with' + extra}"
    return f"the newest checkpoint is {path}; resume with: sngan-train resume={run_dir}{extra}"


def _resume_checkpoint(
    cfg: TrainConfig, run_dir: Path, device: torch.device
) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint ``cfg.resume`` continues from, checked against ``cfg``; (None, None) if new.

    A new run refuses a directory that already holds checkpoints, which it would overwrite.
    """
    if not cfg.resume:
        try:
            existing = checkpoint.find_latest(run_dir)
        except checkpoint.CheckpointError:
            return None, None
        raise ConfigError(
            f"{run_dir} already holds the checkpoints of a run ({existing}); continue it with "
            f"resume={run_dir}, or start this run in another directory (hydra.run.dir=...)"
        )
    path = checkpoint.find_latest(cfg.resume)
    state = checkpoint.load(path, map_location=device)
    missing = [k for k in ("sched_g", "sched_d", "stream", "rng", "best_fid") if k not in state]
    if missing:
        raise checkpoint.CheckpointError(
            f"{path} cannot be resumed: it has no {', '.join(missing)} (a checkpoint made for "
            "sampling and evaluation, not by a training run)"
        )
    saved, current = state["config"].get("model", {}), to_dict(cfg)["model"]
    if saved != current:
        keys = [k for k in current if saved.get(k) != current[k]]
        raise checkpoint.CheckpointError(
            f"{path} was saved by model {', '.join(f'{k}={saved.get(k)}' for k in keys)} but the "
            f"config has model {', '.join(f'{k}={current[k]}' for k in keys)}"
        )
    if state["iteration"] > cfg.iterations:
        raise ConfigError(
            f"iterations={cfg.iterations} is not valid: {path} is already at iteration "
            f"{state['iteration']}"
        )
    return state, path


def _metrics_evaluate(cfg: TrainConfig) -> Callable[..., dict[str, float]]:
    """sngan.metrics.evaluate_with, once the Inception weights are there (or fetched)."""
    from sngan import metrics  # torch-fidelity is imported only when used

    try:
        metrics.inception_weights_file(cfg.metrics.inception_weights)
    except (OSError, RuntimeError) as e:  # missing file; offline without a cached copy
        raise ConfigError(str(e)) from e
    return metrics.evaluate_with


def train(cfg: TrainConfig, run_dir: str | Path) -> dict[str, float]:
    """Train as ``cfg`` says, writing everything under ``run_dir``; return the last logs."""
    validate(cfg)
    run_dir = Path(run_dir)
    # Under torchrun every rank runs this function on its share of each batch.
    ctx, device = distributed.setup(resolve_device(cfg.device))
    run_dir = distributed.main_run_dir(ctx, run_dir)
    on_cuda = device.type == "cuda"
    o, m = cfg.optim, cfg.model
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Checks that need files, before any time is spent on data or networks.
    state, path = _resume_checkpoint(cfg, run_dir, device)
    if state is not None and state["iteration"] == cfg.iterations:
        print(f"sngan: {path} is at iteration {cfg.iterations} already; nothing to train")
        return {}
    evaluate = _metrics_evaluate(cfg) if cfg.metrics.enabled else None

    # Data: the whole training set as one uint8 tensor (BatchStream moves it to the device).
    images, labels = load_training_images(cfg)
    ctx.split(o.d_batch_size, "optim.d_batch_size")  # each rank takes an equal share
    ctx.split(o.g_batch_size, "optim.g_batch_size")
    if cfg.sync_bn and ctx.enabled and not on_cuda:
        raise ConfigError("sync_bn=true is not valid here: SyncBatchNorm needs CUDA devices")
    if o.d_batch_size > len(images):
        raise ConfigError(
            f"optim.d_batch_size={o.d_batch_size} is not valid: the data has only "
            f"{len(images)} images"
        )

    # Networks, optimisers, schedules, the batch stream, the fast paths.
    step = build_step(cfg, images, labels, device, ctx)
    G, D, G_ema, opt_g, opt_d = step.G, step.D, step.G_ema, step.opt_g, step.opt_d
    fixed_z, fixed_y = sample_z(
        64, m.z_dim, m.num_classes, torch.Generator(device=device).manual_seed(cfg.seed + 2), device
    )
    if fixed_y is not None:
        fixed_y = torch.arange(64, device=device) % m.num_classes  # each row of the grid a class

    # Resume: every piece of state, so that the continued run equals an uninterrupted one.
    start, best_fid, skipped = 0, math.inf, 0
    if state is not None:
        try:
            for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema")):
                module.load_state_dict(state[key])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            step.sched_g.load_state_dict(state["sched_g"])
            step.sched_d.load_state_dict(state["sched_d"])
            step.stream.load_state_dict(state["stream"])
            step.z_gen.set_state(state["rng"]["z"].cpu())
            torch.set_rng_state(state["rng"]["torch"].cpu())
        except (KeyError, RuntimeError, ValueError) as e:
            detail = " ".join(str(e).split())
            raise checkpoint.CheckpointError(
                f"{path} does not fit the networks and data of its own config "
                f"(saved by sngan {state.get('sngan_version')}): {detail[:400]}"
            ) from e
        start, best_fid = state["iteration"], state["best_fid"]
        skipped = state.get("skipped", 0)
        checkpoint.remove_temporary_files(run_dir)
        print(f"resuming {run_dir} from {path} at iteration {start}")
    _truncate_jsonl(run_dir / "metrics.jsonl", start)

    def snapshot(iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": to_dict(cfg),
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "sched_g": step.sched_g.state_dict(),
            "sched_d": step.sched_d.state_dict(),
            "stream": step.stream.state_dict(),
            "rng": {"z": step.z_gen.get_state(), "torch": torch.get_rng_state()},
            "best_fid": best_fid,
            "skipped": skipped,
        }

    def on_bad_update(bad: BadUpdate, noticed: int) -> None:
        """nan_policy for an update with NaN or inf: count it as skipped, or save and stop."""
        nonlocal skipped
        where = f"iteration {bad.iteration + 1} ({bad.phase})"
        values = ", ".join(f"{k}={v}" for k, v in bad.values.items())
        if cfg.nan_policy == "skip":
            skipped += bad.count
            more = f" (and {bad.count - 1} more by iteration {noticed})" if bad.count > 1 else ""
            if ctx.is_main:
                message = f"sngan-train: skipped the update of {where}: {values}{more}"
                tqdm.write(message, sys.stderr)
            return
        # The networks and optimisers as they were just before this update (checked on the
        # device, every later update was skipped too until the loop noticed).
        path = checkpoint.checkpoint_dir(run_dir) / checkpoint.LAST_GOOD
        if ctx.is_main:
            checkpoint.save(snapshot(bad.iteration), path)
            writer.close()  # the curves up to the failure stay readable
        hint = resume_hint(run_dir, "nan_policy=skip")
        raise NonFiniteError(
            f"non-finite value in {where}: {values}; the state before this update is saved "
            f"as {path}. To skip such updates instead: {hint}"
        )

    def check_factory(iteration: int, phase: str, net: nn.Module) -> Callable[[torch.Tensor], bool]:
        """The check d_step/g_step run between backward and the optimiser step."""

        def check(loss: torch.Tensor) -> bool:
            values = step.guard.check(iteration, phase, loss, net)
            if values:
                on_bad_update(BadUpdate(iteration, phase, values), iteration + 1)
            return not values

        return check

    # Logging.
    # Events logged after the checkpoint we resume from (steps > start) are purged, and so are
    # those of an earlier attempt in this directory that was killed before its first checkpoint.
    # Only rank 0 writes logs, samples, metrics and checkpoints.
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1) if ctx.is_main else None
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    imgs_per_it = 2 * o.n_dis * o.d_batch_size + o.g_batch_size
    last: dict[str, float] = {}
    t_start = t_log = time.perf_counter()
    it_log = start
    bar = tqdm(
        total=cfg.iterations,
        initial=start,
        disable=not (cfg.progress and ctx.is_main),
        unit="it",
        dynamic_ncols=True,
    )

    with _StopRequest() as stop:
        for it in range(start, cfg.iterations):
            done = it + 1
            stats = generator_iteration(step, it, check_factory)
            bar.update(1)

            # NaN/inf checked on the device (fused Adam): read back where the loop syncs anyway.
            log_now = done % cfg.log_every == 0 or done == cfg.iterations
            save_now = done % cfg.checkpoint_every == 0 or done == cfg.iterations
            if log_now or save_now or stop.signal is not None:
                bad = step.guard.report()
                if bad is not None:
                    on_bad_update(bad, done)

            # Maintenance (rank 0 only), each gated on the iteration count.
            if not ctx.is_main:
                if stop.signal is not None and done < cfg.iterations:
                    raise Interrupted(f"rank {ctx.rank} stopped at iteration {done}", stop.signal)
                continue
            if log_now:
                stats["grad_norm/d"] = grad_norm(D)
                stats["grad_norm/g"] = grad_norm(G)
                keys = list(stats)
                values = torch.stack([stats[k].float() for k in keys]).tolist()  # one sync
                now = time.perf_counter()
                it_per_s = (done - it_log) / max(now - t_log, 1e-9)
                t_log, it_log = now, done
                last = dict(zip(keys, values, strict=True))
                last["lr/g"] = opt_g.param_groups[0]["lr"]
                last["lr/d"] = opt_d.param_groups[0]["lr"]
                last["perf/it_per_s"] = it_per_s
                last["perf/img_per_s"] = it_per_s * imgs_per_it
                if skipped:
                    last["nonfinite/skipped"] = float(skipped)
                last.update({f"sigma/{k}": v for k, v in sigmas(D).items()})
                for key, value in last.items():
                    writer.add_scalar(key, value, done)
                bar.set_postfix(
                    {"loss/d": f"{last['loss/d']:.3f}", "loss/g": f"{last['loss/g']:.3f}"}
                )
            if done % cfg.log_exact_every == 0:
                for key, value in exact_sigmas(D).items():
                    writer.add_scalar(f"sigma_exact/{key}", value, done)
            if done % cfg.sample_every == 0 or done == cfg.iterations:
                for name, net in (("G_ema", G_ema), ("G", G)):
                    grid = sample_grid(net, fixed_z, fixed_y)
                    writer.add_image(f"samples/{name}", grid, done)
                    torchvision.utils.save_image(
                        grid, run_dir / "samples" / f"{name}_{done:07d}.png"
                    )
            is_best = False
            eval_due = cfg.metrics.eval_every and done % cfg.metrics.eval_every == 0
            if evaluate is not None and (eval_due or done == cfg.iterations):
                t_eval = time.perf_counter()
                e = cfg.metrics
                result = evaluate(
                    G_ema,
                    images,
                    cfg.metrics,
                    reference_name=reference_name(cfg),
                    device=device,
                    seed=cfg.seed,
                )
                result["perf/eval_s"] = time.perf_counter() - t_eval
                for key, value in result.items():
                    writer.add_scalar(key, value, done)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    record = {"iteration": done, "protocol": e.protocol, **result}
                    f.write(json.dumps(record) + "\n")
                last.update(result)
                if result["metrics/fid"] < best_fid:
                    best_fid, is_best = result["metrics/fid"], True
            if save_now or is_best or stop.signal is not None:
                # Logs first: a checkpoint on disk means every log up to it is on disk too, so a
                # resume from it (which purges later steps) leaves no gap.
                writer.flush()
                path = checkpoint.save_snapshot(snapshot(done), run_dir, cfg.keep_checkpoints)
                if is_best:
                    checkpoint.link(path, checkpoint.BEST)
            if stop.signal is not None and done < cfg.iterations:
                bar.close()
                writer.close()
                name = signal.Signals(stop.signal).name
                raise Interrupted(
                    f"{name} received: saved {path} at iteration {done}; "
                    f"resume with: sngan-train resume={run_dir}",
                    stop.signal,
                )

    bar.close()
    mismatched = distributed.replica_mismatches(
        ctx, G, D, G_ema, skip=() if cfg.sync_bn else distributed.BATCHNORM_STATISTICS
    )
    if mismatched:
        raise RuntimeError(f"ranks diverged: {', '.join(mismatched[:10])} differ from rank 0")
    distributed.teardown(ctx)
    if not ctx.is_main:
        return last
    if ctx.enabled:
        print(
            f"sngan: G, D and G_ema (u and v included) are identical on {ctx.world_size} ranks"
            + ("" if cfg.sync_bn else "; G's BatchNorm statistics are rank 0's")
        )
    elapsed = time.perf_counter() - t_start
    final = {k: v for k, v in last.items() if k.startswith(("loss/", "metrics/"))}
    writer.add_hparams(
        _flat_hparams(cfg),
        {f"hparam/{k}": v for k, v in final.items()},
        run_name="hparams",
        global_step=cfg.iterations,
    )
    writer.close()
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items())
    print(
        f"sngan: {cfg.iterations - start} iterations in {elapsed:.1f} s "
        f"({(cfg.iterations - start) / max(elapsed, 1e-9):.2f} it/s); {summary}; run_dir={run_dir}"
    )
    return last

"""The training loop: read it top to bottom in ``train``.

Per generator iteration: ``n_dis`` D steps, each on a fresh real batch and fresh z, then
one G step on ``g_batch_size`` fresh z; then the EMA of G, then the learning-rate
schedules; maintenance (logs, samples, evaluation, checkpoints) is gated on the iteration
count. (The official Chainer updater runs its G step first inside each iteration; over a
run the two orders differ only in the first and the last update.)

Where the pieces live: the outside world is checked once by ``sngan.job``, the config becomes
objects in ``sngan.build``, updates are checked by ``sngan.guard``, checkpoints hold what
``sngan.resume`` says, logs go through ``sngan.runlog``, G_ema is drawn and scored as
``sngan.standing_stats.as_evaluated`` gives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from sngan import build, checkpoint, distributed, evaluation, resume
from sngan.build import TrainState, build_train_state, configure_backends
from sngan.config import TrainConfig
from sngan.guard import NonFiniteError, grad_norm
from sngan.interrupt import Interrupted, StopRequest
from sngan.job import Job, prepare_job
from sngan.models.latent import grid_latents, sample_z
from sngan.runlog import RunLog
from sngan.spectral_norm import exact_sigmas, no_power_iteration, sigmas
from sngan.standing_stats import as_evaluated


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    real_y: torch.Tensor,
    z: torch.Tensor,
    fake_y: torch.Tensor | None,
    autocast: AbstractContextManager[Any],
    check: Callable[[torch.Tensor], bool],
    joint: bool = True,
) -> dict[str, torch.Tensor]:
    """One D update on a real batch and as many generated images; returns device tensors.

    ``joint``: real and fake go through D in one forward of 2B images (fewer, larger kernels:
    the GPU default); otherwise in two forwards of B (the CPU default: 1-5 % faster on ours
    side by side, smaller activations). D has no batch statistics and u, v advance once per
    step either way, so the two compute the same update. ``check(loss)`` runs between the
    backward and the optimiser step; False skips the step.
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
    autocast: AbstractContextManager[Any],
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


def generator_iteration(s: TrainState, it: int, eager: bool = False) -> dict[str, torch.Tensor]:
    """Iteration ``it`` (0-based): n_dis D steps, one G step, the EMA, the schedules.

    Each update is checked by ``s.guard`` between its backward and its optimiser step (the
    NaN/inf policy). ``eager``: run the plain G and D, neither compiled nor under DDP (for
    counting FLOPs). Returns the last step's stats as device tensors.
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
        real, real_y = s.stream.next(o.d_batch_size, (ctx.rank, ctx.world_size))
        z, fake_y = sample_z(o.d_batch_size, m.z_dim, m.num_classes, s.z_gen, s.device)
        z, fake_y = ctx.shard(z), fake_y if fake_y is None else ctx.shard(fake_y)
        s.guard.before_forward()
        check = s.guard.checker(it, f"D step {j + 1} of {o.n_dis}", s.D)
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
    check = s.guard.checker(it, "G step", s.G)
    stats.update(g_step(G_train, D_run, s.opt_g, s.g_loss, z, fake_y, s.autocast, check))

    # EMA of G: a plain copy until ema_start, then an exponential average.
    update_ema(s.G_ema, s.G, 0.0 if it + 1 <= o.ema_start else o.ema_decay, s.guard.halted)

    # Schedules: linear decay to 0 at the last iteration.
    s.sched_g.step()
    s.sched_d.step()
    return stats


def log_values(s: TrainState, stats: dict[str, torch.Tensor], it_per_s: float) -> dict[str, float]:
    """The scalars of a log step, by TensorBoard tag (reads the device once)."""
    stats = {**stats, "grad_norm/d": grad_norm(s.D), "grad_norm/g": grad_norm(s.G)}
    keys = list(stats)
    values = torch.stack([stats[k].float() for k in keys]).tolist()  # one sync
    o = s.cfg.optim
    out = dict(zip(keys, values, strict=True))
    out["lr/g"] = s.opt_g.param_groups[0]["lr"]
    out["lr/d"] = s.opt_d.param_groups[0]["lr"]
    out["perf/it_per_s"] = it_per_s
    out["perf/img_per_s"] = it_per_s * (2 * o.n_dis * o.d_batch_size + o.g_batch_size)
    if s.guard.skipped:
        out["nonfinite/skipped"] = float(s.guard.skipped)
    out.update({f"sigma/{k}": v for k, v in sigmas(s.D).items()})
    return out


@contextmanager
def saving_last_good(s: TrainState, run_dir: Path) -> Iterator[None]:
    """On a NaN/inf stop: save the state before the bad update as last_good.pt, say how to go on.

    (Checked on the device, every update after the bad one was skipped too until the loop
    noticed, so the networks and optimisers are still as they were before it.)
    """
    try:
        yield
    except NonFiniteError as err:
        path = checkpoint.checkpoint_dir(run_dir) / checkpoint.LAST_GOOD
        if s.ctx.is_main:
            checkpoint.save(resume.snapshot(s, err.bad.iteration), path)
        hint = resume.resume_hint(run_dir, "nan_policy=skip")
        raise NonFiniteError(
            f"{err}; the state before this update is saved as {path}. To skip such updates "
            f"instead: {hint}",
            err.bad,
        ) from None


def train(cfg: TrainConfig, run_dir: str | Path, job: Job | None = None) -> dict[str, float]:
    """Train as ``cfg`` says, writing everything under ``run_dir``; return the last logs.

    ``cfg`` is checked already (``sngan.config.compose`` or ``validate``). ``job``: what
    ``sngan.job.prepare_job(cfg, run_dir)`` checked (the CLI's, before Hydra made the run
    directory); None: prepared here. Nothing it checked is checked again.
    """
    job = job or prepare_job(cfg, run_dir)
    cfg = job.cfg
    # Under torchrun every rank runs this function on its share of each batch; rank 0 alone
    # writes, under the run directory's lock (taken by prepare_job).
    ctx, device = distributed.setup(job.device)
    run_dir = distributed.main_run_dir(ctx, job.run_dir)
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    configure_backends(device)
    if job.finished:
        print(f"sngan: {job.saved_path} is at iteration {cfg.iterations} already; nothing to train")
        return {}
    e, o, data = cfg.metrics, cfg.optim, job.data
    assert data is not None  # prepare_job reads the data of every run that has iterations left

    # Evaluation against the training images (Inception is loaded at the first evaluation, once).
    evaluator = None
    if e.enabled and ctx.is_main:
        evaluator = build.build_evaluator(
            e,
            data.images,
            evaluation.reference_name(cfg),
            device,
            job.weights,
            data.labels,
            data.digest,
        )

    # Networks, optimisers, schedules, the batch stream, the fast paths; the fixed z of grids.
    s = build_train_state(cfg, data.images, data.labels, device, ctx)
    m = cfg.model
    # 8x8; conditional: a row per class, the same 8 z in every row (models.latent.grid_latents).
    fixed_z, fixed_y = grid_latents(
        m.z_dim, m.num_classes, torch.Generator(device=device).manual_seed(cfg.seed + 2), device
    )

    # Resume: every piece of state, so that the continued run equals an uninterrupted one.
    start = 0
    if job.saved is not None:
        start = resume.restore(s, job.saved, job.saved_path)
        checkpoint.remove_temporary_files(run_dir)
        print(f"resuming {run_dir} from {job.saved_path} at iteration {start}")

    # Only rank 0 writes logs, samples, metrics and checkpoints.
    log = RunLog(run_dir, start, enabled=ctx.is_main)
    # The HPARAMS tab's metric columns; the evaluation's with metrics off too, since TensorBoard
    # takes the columns of every run in its logdir from one run's list.
    scored = [f"metrics/{g}/{name}" for g in e.generators for name in ("fid", "is")]
    log.hparams(cfg, ["loss/d", "loss/g", *scored])
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
    with log, StopRequest() as stop, saving_last_good(s, run_dir):
        for it in range(start, cfg.iterations):
            done = it + 1
            stats = generator_iteration(s, it)
            bar.update(1)

            # NaN/inf checked on the device (fused Adam): read back where the loop syncs anyway.
            log_now = done % cfg.log_every == 0 or done == cfg.iterations
            save_now = done % cfg.checkpoint_every == 0 or done == cfg.iterations
            stopping = stop.signal is not None and done < cfg.iterations
            if log_now or save_now or stopping:
                s.guard.poll(done)

            # Maintenance (rank 0 only), each gated on the iteration count.
            if not ctx.is_main:
                if stopping:
                    raise Interrupted(f"rank {ctx.rank} stopped at iteration {done}", stop.signal)
                continue
            if log_now:
                now = time.perf_counter()
                last = log_values(s, stats, (done - it_log) / max(now - t_log, 1e-9))
                t_log, it_log = now, done
                log.scalars(last, done)
                bar.set_postfix({k: f"{last[k]:.3f}" for k in ("loss/d", "loss/g")})
            if done % cfg.log_exact_every == 0:
                log.scalars(exact_sigmas(s.D), done, prefix="sigma_exact/")
            sample_now = done % cfg.sample_every == 0 or done == cfg.iterations
            eval_now = evaluator is not None and (
                e.eval_every and done % e.eval_every == 0 or done == cfg.iterations
            )
            if sample_now or eval_now:  # G_ema with G's or with its own BatchNorm statistics
                G_ema = as_evaluated(s.G_ema, o.ema_bn_stats, o.g_batch_size, cfg.seed)
                nets = {"G_ema": G_ema, "G": s.G}
            if sample_now:
                log.sample_grids(nets, fixed_z, fixed_y, done)
            is_best = False
            if eval_now:
                how = evaluation.how_made(e.protocol, o.ema_bn_stats, s.fast)
                records = evaluation.evaluate_generators(
                    evaluator, {k: nets[k] for k in e.generators}, seed=cfg.seed, how=how
                )
                last.update(log.evaluation(records, done))
                if records[e.best]["metrics/fid"] < s.best_fid:
                    s.best_fid, is_best = records[e.best]["metrics/fid"], True
            if save_now or is_best or stopping:
                # Logs first: a checkpoint on disk means every log up to it is on disk too, so a
                # resume from it (which purges later steps) leaves no gap.
                log.flush()
                path = checkpoint.save_snapshot(
                    resume.snapshot(s, done), run_dir, cfg.keep_checkpoints
                )
                if is_best:
                    checkpoint.link(path, checkpoint.BEST)
            if stopping:
                bar.close()
                raise Interrupted(
                    f"{stop.name} received: saved {path} at iteration {done}; "
                    f"resume with: sngan-train resume={run_dir}",
                    stop.signal,
                )

        # Finish: the ranks agree.
        bar.close()
        mismatched = distributed.replica_mismatches(
            ctx, s.G, s.D, s.G_ema, skip=() if cfg.sync_bn else distributed.BATCHNORM_STATISTICS
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
        final = {k: v for k, v in last.items() if k.startswith(("loss/", "metrics/"))}
    elapsed = time.perf_counter() - t_start
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items())
    print(
        f"sngan: {cfg.iterations - start} iterations in {elapsed:.1f} s "
        f"({(cfg.iterations - start) / max(elapsed, 1e-9):.2f} it/s); {summary}; run_dir={run_dir}"
    )
    return last

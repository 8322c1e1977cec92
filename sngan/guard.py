"""The NaN/inf guard: every update is checked before it is applied, and nan_policy says what then.

A loss, a gradient norm or one of D's sigmas that is NaN or inf makes the update bad.
``nan_policy=skip`` drops that update (counted in ``skipped``); ``nan_policy=stop`` raises
``NonFiniteError`` naming the iteration, the step and the values, with the networks and
optimisers as they were just before that update, so the loop can save them (last_good.pt).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from sngan.spectral_norm import sigma_tensors


class NonFiniteError(RuntimeError):
    """A loss, gradient or sigma became NaN or inf; the message names the step and the value.

    ``bad`` is the update that failed (the state before it is what a last-good checkpoint holds).
    """

    def __init__(self, message: str, bad: BadUpdate | None = None) -> None:
        super().__init__(message)
        self.bad = bad


@dataclass
class BadUpdate:
    """The first update with a NaN or inf since the guard's last report."""

    iteration: int  # 0-based: the update belongs to iteration ``iteration + 1``
    phase: str  # "D step 1 of 5", "G step"
    values: dict[str, float]  # the non-finite values by tag (loss, gradient norm, sigmas)
    count: int = 1  # bad updates since the last report, this one included

    def describe(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"iteration {self.iteration + 1} ({self.phase}): {values}"


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The 2-norm of all of ``module``'s gradients together (a 0-d device tensor)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class UpdateGuard:
    """Finds NaN or inf in an update (loss, gradient norm, D's sigmas) before it is applied.

    Training forwards change buffers in place before the loss exists: D's power iteration
    advances u, v and the logged sigma, G's BatchNorm its running statistics.
    ``before_forward`` keeps a copy of every buffer of G and D, so that an update that is then
    rejected leaves both exactly as they were: for a skipped step and for the last good state
    saved on a stop.

    Two ways to check, chosen by the optimisers. Plain (for-each) Adam, the CPU default: each
    check reads one bool (a host sync, cheap on a CPU), so the policy acts at that very update.
    Fused Adam, the CUDA default, can skip a step on the device (its ``found_inf`` tensor, the
    hook torch's GradScaler uses): the check then never waits for the device; a bad update is
    skipped and its buffers restored there, and ``poll``, called where the loop syncs anyway
    (its log steps), applies the policy to what happened. Under nan_policy=stop every update
    after a bad one is skipped too (``halted``), so the networks and optimisers stay as they
    were before it until the loop notices.
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        optimizers: dict[nn.Module, torch.optim.Optimizer],
        *,
        on_device: bool,
        policy: str,
        verbose: bool = True,
    ) -> None:
        self.D = D
        self.optimizers = optimizers
        self.on_device = on_device
        self.policy = policy
        self.verbose = verbose  # print what was skipped (rank 0 only under torchrun)
        self.skipped = 0  # updates skipped so far (saved in checkpoints)
        named_sigmas = sigma_tensors(D)
        self.sigma_names = [f"sigma/{k}" for k in named_sigmas]
        self.sigmas = list(named_sigmas.values())
        self.buffers = [*G.buffers(), *D.buffers()]
        self.saved = [buf.clone() for buf in self.buffers]
        device = self.buffers[0].device if self.buffers else torch.device("cpu")
        # Device-side record of the updates since the last report.
        self.pending: list[tuple[int, str, str]] = []  # (iteration, phase, loss tag) per update
        # Only the device-side check halts (the host check stops the loop at once).
        halts = on_device and policy == "stop"
        self.halted = torch.zeros((), dtype=torch.bool, device=device) if halts else None
        self.bad_count = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # into pending
        self.first_values = torch.zeros(2 + len(self.sigmas), device=device)

    def before_forward(self) -> None:
        torch._foreach_copy_(self.saved, self.buffers)

    def checker(self, iteration: int, phase: str, net: nn.Module) -> Callable[[torch.Tensor], bool]:
        """The check d_step/g_step run between backward and the optimiser step: True = step.

        A bad update found on the host goes to the policy at once (skip: False; stop: raises).
        """

        def check(loss: torch.Tensor) -> bool:
            values = self.check(iteration, phase, loss, net)
            if values:
                self.apply_policy(BadUpdate(iteration, phase, values), iteration + 1)
            return not values

        return check

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

    def poll(self, noticed: int) -> None:
        """Apply the policy to what the device-side check found since the last poll (a sync)."""
        bad = self.report()
        if bad is not None:
            self.apply_policy(bad, noticed)

    def apply_policy(self, bad: BadUpdate, noticed: int) -> None:
        """nan_policy for a bad update: count it as skipped, or raise NonFiniteError."""
        if self.policy == "skip":
            self.skipped += bad.count
            if self.verbose:
                more = (
                    f" (and {bad.count - 1} more by iteration {noticed})" if bad.count > 1 else ""
                )
                tqdm.write(f"sngan-train: skipped the update of {bad.describe()}{more}", sys.stderr)
            return
        raise NonFiniteError(f"non-finite value in {bad.describe()}", bad)

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

"""SIGINT and SIGTERM during training: finish the iteration, save a checkpoint, then stop.

Under submitit (hydra/launcher=slurm), SIGUSR2 too: submitit sends it ``signal_delay_s`` before
the job's time limit (and on preemption, where the cluster is set up to), and its own handler
requeues the job and exits at once, in the middle of whatever the loop is doing. StopRequest
takes the signal over: the loop saves a checkpoint at the end of its iteration, and only then is
submitit's handler called, to requeue the job (which resumes from that checkpoint) and exit.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM (or submitit's SIGUSR2) arrived; a checkpoint at the current iteration
    was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# submitit's "time is up" signal: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another (None on
# Windows, which has no SIGUSR2).
REQUEUE_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag (``signal``) the loop checks once per iteration.

    The first signal restores the previous handlers, so a second one stops at once
    (KeyboardInterrupt for Ctrl-C) without waiting for the checkpoint.

    SIGUSR2 is taken too where a previous handler for it is installed (submitit's requeue
    handler). When the loop then leaves the ``with`` block with ``Interrupted`` (raised after
    it saved the checkpoint), that handler is called instead: it requeues the job and exits.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self._requeue: Any = None

    def __enter__(self) -> StopRequest:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            previous = None
            if REQUEUE_SIGNAL not in (None, signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(REQUEUE_SIGNAL)
            if callable(previous):  # not SIG_DFL/SIG_IGN: a launcher's handler
                self._requeue = previous
                self._old[REQUEUE_SIGNAL] = signal.signal(REQUEUE_SIGNAL, self._handle)
        except ValueError:  # not the main thread: leave the default handlers
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self._restore()
        if signum == REQUEUE_SIGNAL and self._requeue is not None:
            then = ", then the launcher requeues the job (send it again to requeue at once)"
        else:
            then = " (send it again to stop at once)"
        print(
            f"sngan-train: {signal.Signals(signum).name} received, saving a checkpoint at the "
            f"end of this iteration{then}",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._restore()
        if self.signal == REQUEUE_SIGNAL and isinstance(exc, Interrupted) and self._requeue:
            print(f"sngan-train: {exc}", file=sys.stderr, flush=True)  # where the checkpoint is
            self._requeue(self.signal, None)  # submitit: requeue, then SystemExit
        # Otherwise (or if the handler returned: submitit on a rank other than 0) the exception
        # goes on.

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

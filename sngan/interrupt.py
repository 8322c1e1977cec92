"""SIGINT and SIGTERM during training: finish the iteration, save a checkpoint, then stop."""

from __future__ import annotations

import signal
import sys
from typing import Any


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint at the current iteration was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag (``signal``) the loop checks once per iteration.

    The first signal restores the previous handlers, so a second one stops at once
    (KeyboardInterrupt for Ctrl-C) without waiting for the checkpoint.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
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

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

"""What a run leaves to read: TensorBoard events, sample grids, metrics.jsonl, hyper-parameters.

Only rank 0 writes (``enabled=False`` elsewhere makes every method a no-op). A resume from the
checkpoint of iteration ``start`` drops what was logged after it: TensorBoard purges later
steps, and ``metrics.jsonl`` loses its later records, so the logs continue without duplicates.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter, summary

from sngan import atomic
from sngan.config import TrainConfig, to_flat

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """The logs of one run directory, from iteration ``start`` on; a context manager."""

    def __init__(self, run_dir: Path, start: int = 0, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer: SummaryWriter | None = None
        if not enabled:
            return
        truncate_metrics(self.run_dir / METRICS_FILE, start)
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        _quiet_event_writer_threads()
        # purge_step also drops the events of an earlier attempt in this directory that was
        # killed before its first checkpoint.
        with self._events():
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start + 1)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        # On an error too, so that the curves up to it stay readable; a second error from the
        # same cause (a full disk) must not hide the first.
        with contextlib.suppress(OSError):
            self.close()

    @contextlib.contextmanager
    def _events(self) -> Iterator[None]:
        """TensorBoard's writer errors (raised again from its writer thread) as one line."""
        try:
            yield
        except OSError as err:
            converted = atomic.as_write_error(err, self.run_dir / "tb")
            if converted is err:
                raise
            raise converted from err

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            with self._events():
                for key, value in values.items():
                    self.writer.add_scalar(prefix + key, value, step)

    def sample_grids(
        self, generators: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None, step: int
    ) -> None:
        """An 8-wide grid of each G(z, y), to TensorBoard and samples/<name>_<step>.png."""
        if self.writer is None:
            return
        from torchvision.utils import save_image  # at the first grid, not at every start

        for name, G in generators.items():
            grid = sample_grid(G, z, y)
            with self._events():
                self.writer.add_image(f"samples/{name}", grid, step)
            path = self.run_dir / "samples" / f"{name}_{step:07d}.png"
            atomic.write_atomic(path, lambda f, g=grid: save_image(g, f, "png"))

    def evaluation(self, records: dict[str, dict[str, Any]], step: int) -> dict[str, float]:
        """One evaluation, a record per generator: each to metrics.jsonl (how it was made
        included), its numbers to TensorBoard as metrics/<generator>/<name>, and the time it
        all took as perf/eval_s. Returns the TensorBoard values by tag."""
        logged = {}
        for name, record in records.items():
            for key, value in record.items():
                if key.startswith("metrics/"):
                    logged[f"metrics/{name}/{key.removeprefix('metrics/')}"] = value
        logged["perf/eval_s"] = sum(record["perf/eval_s"] for record in records.values())
        if self.writer is not None:
            self.scalars(logged, step)
            # The whole file rewritten (it holds one line per evaluation): a full disk or a kill
            # leaves the previous file, never a torn last line.
            path = self.run_dir / METRICS_FILE
            text = path.read_text() if path.exists() else ""
            lines = [json.dumps({"iteration": step, **record}) for record in records.values()]
            atomic.write_text_atomic(path, text + "".join(line + "\n" for line in lines))
        return logged

    def hparams(self, cfg: TrainConfig, metric_tags: list[str]) -> None:
        """The config for TensorBoard's HPARAMS tab, with the scalar tags it shows beside it.

        Called when training starts, as Lightning's TensorBoardLogger does, so that a run is
        listed while it trains and after a kill. The tab reads each metric tag's latest value
        from this run's own scalars, so no placeholder values are logged.
        """
        if self.writer is None:
            return
        experiment, start_info, _ = summary.hparams(hparams(cfg), dict.fromkeys(metric_tags))
        # Into this run's own event file: a run of its own (add_hparams) is listed twice. No
        # session end info: it would say "success" for a run killed later. Step 0 is never
        # purged by a resume; TensorBoard keeps the first copy it reads of each of these.
        with self._events():
            file_writer = self.writer._get_file_writer()
            file_writer.add_summary(experiment, global_step=0)
            file_writer.add_summary(start_info, global_step=0)
            file_writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            with self._events():
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._events():
                writer.close()


def _quiet_event_writer_threads() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when its write fails.

    The thread keeps the error and the writer raises it again in the training thread at the
    next write or flush, where RunLog turns it into one line; the thread's own report would
    be a second, raw traceback on stderr.
    """
    previous = threading.excepthook
    if getattr(previous, "_sngan_quiet", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(
            args.exc_type, OSError
        ):
            return
        previous(args)

    hook._sngan_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


@torch.no_grad()
def sample_grid(G: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """A (3, H', W') image grid of G(z) in [0, 1], 8 images wide, drawn in eval mode."""
    was_training = G.training
    G.eval()
    images = G(z, y).float()
    G.train(was_training)
    from torchvision.utils import make_grid

    return make_grid(images, nrow=8, normalize=True, value_range=(-1, 1))


def hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The config as TensorBoard's hparams take it: flat keys, scalar or string values."""
    out = {}
    for key, value in to_flat(cfg).items():
        if isinstance(value, list):
            value = str(value)
        out[key] = "null" if value is None else value
    return out


def _record_iteration(line: str) -> int | None:
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
        return None


def truncate_metrics(path: Path, last_iteration: int) -> None:
    """Drop records past ``last_iteration`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if (i := _record_iteration(line)) is not None and i <= last_iteration
    ]
    atomic.write_text_atomic(path, "".join(line + "\n" for line in keep))

"""The HPARAMS tab, read back through TensorBoard's own HTTP API.

TensorBoard's WSGI app runs in-process on the runs' parent directory, with its Python loader
(``--load_fast=false``) loading the event files once, and is asked what its frontend asks:
``/data/runs`` for the run list, and the hparams plugin's ``experiment`` (the columns) and
``session_groups`` (one row per run: its hyper-parameters and each metric's latest value).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, read_events
from tensorboard import default, program
from tensorboard.backend import application
from tensorboard.backend.event_processing.data_ingester import LocalDataIngester
from werkzeug.test import Client

import sngan.build
from sngan import checkpoint
from sngan.runlog import RunLog, hparams
from sngan.train import train

SNGAN_TRAIN = str(Path(sys.executable).parent / "sngan-train")
ITERATIONS = 40
# Every iteration logged; no sample grids or SVDs until the end, which would only slow it down.
RUN = [
    *TINY,
    f"iterations={ITERATIONS}",
    "checkpoint_every=10",
    "sample_every=1000",
    "log_exact_every=1000",
]


class TensorBoard:
    """TensorBoard's HTTP API over the event files under ``logdir`` as they are now."""

    def __init__(self, logdir: Path) -> None:
        tb = program.TensorBoard(plugins=default.get_plugins())
        tb.configure(logdir=str(logdir), load_fast="false", reload_interval=0)
        tb.flags.reload_task = "blocking"  # load once, now
        ingester = LocalDataIngester(tb.flags)
        ingester.start()
        app = application.TensorBoardWSGIApp(
            tb.flags,
            tb.plugin_loaders,
            ingester.data_provider,
            None,
            ingester.deprecated_multiplexer,
        )
        self.client = Client(app)

    def get(self, path: str):
        response = self.client.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def post(self, path: str, request: dict):
        response = self.client.post(path, json=request, headers={"X-XSRF-Protected": "1"})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def runs(self) -> list[str]:
        return self.get("/data/runs")

    def experiment(self) -> dict:
        return self.post("/data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> list[dict]:
        """The HPARAMS table's rows, requested as its frontend does (every status allowed)."""
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        request = {
            "experimentName": "",
            "allowedStatuses": statuses,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        }
        return self.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]


def metric_values(session: dict) -> dict[str, tuple[int, float]]:
    return {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in session["metricValues"]}


def listed_once(logdir: Path, run: str, cfg) -> dict:
    """Assert ``run`` is TensorBoard's one run and HPARAMS row, with ``cfg``; return its session."""
    tb = TensorBoard(logdir)
    assert tb.runs() == [run]  # no f"{run}/hparams" next to it
    experiment = tb.experiment()
    columns = [h["name"] for h in experiment["hparamInfos"]]
    assert sorted(columns) == sorted(hparams(cfg))  # every config key, once
    metric_columns = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert {"loss/d", "loss/g"} <= set(metric_columns)
    (group,) = tb.session_groups()
    (session,) = group["sessions"]
    assert group["name"] == session["name"] == run
    shown = group["hparams"]
    assert shown["optim.n_dis"] == cfg.optim.n_dis == 2
    assert shown["model.name"] == cfg.model.name == "dcgan"
    assert shown["iterations"] == cfg.iterations
    assert shown["optim.betas"] == "[0.0, 0.9]" and shown["resume"] == "null"
    assert set(metric_values(session)) <= set(metric_columns)
    return session


def logged(run_dir: Path, tag: str) -> bool:
    return (run_dir / "tb").is_dir() and tag in read_events(run_dir).Tags()["scalars"]


def last_logged(run_dir: Path, tag: str) -> tuple[int, float]:
    event = read_events(run_dir).Scalars(tag)[-1]
    return event.step, event.value


def sngan_train(*args: str, cwd: Path) -> subprocess.Popen:
    """The venv's sngan-train as a user starts it; one thread, so as not to spin on a busy CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(cwd / f"sngan-train-{len(list(cwd.glob('sngan-train-*')))}.log", "w") as out:
        return subprocess.Popen([SNGAN_TRAIN, *args], cwd=cwd, env=env, stdout=out, stderr=out)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"sngan-train ended first ({proc.returncode}): {proc.args}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_killed_then_resumed_run_is_listed_once_with_its_hparams_throughout(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(*RUN[len(TINY) :])
    proc = sngan_train(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    try:
        # From its first log step on disk; stopped while TensorBoard reads, so it is mid-run.
        wait_for(lambda: logged(run_dir, "loss/d"), proc)
        proc.send_signal(signal.SIGSTOP)
        session = listed_once(tmp_path, "run/tb", cfg)
        step, _ = metric_values(session)["loss/d"]
        assert 1 <= step < ITERATIONS
        proc.send_signal(signal.SIGCONT)

        # SIGKILLed as soon as it has a checkpoint to resume from.
        wait_for(lambda: checkpoint.snapshot_path(run_dir, 10).exists(), proc)
    finally:
        proc.kill()
        proc.wait()
    killed_at, value = last_logged(run_dir, "loss/d")
    assert 10 <= killed_at < ITERATIONS
    session = listed_once(tmp_path, "run/tb", cfg)
    assert metric_values(session)["loss/d"] == (killed_at, value)

    # Resumed to the end: still one run, its hparams once, the final losses in its row.
    proc = sngan_train(f"resume={run_dir}", cwd=tmp_path)
    assert proc.wait(timeout=600) == 0, (tmp_path / "sngan-train-1.log").read_text()[-3000:]
    assert len(list((run_dir / "tb").glob("events.*"))) == 2  # each wrote the hparams
    session = listed_once(tmp_path, "run/tb", cfg)
    values = metric_values(session)
    for tag in ("loss/d", "loss/g"):
        assert values[tag] == last_logged(run_dir, tag)
        assert values[tag][0] == ITERATIONS


def test_a_finished_run_shows_its_final_losses_and_metrics(tmp_path, monkeypatch):
    # An evaluator with sngan.metrics.Evaluator's keys and cheap numbers (Inception: minutes).
    def build_evaluator(*args, **kwargs):
        return lambda G, seed: {"metrics/fid": 12.5, "metrics/is": 1.25}

    monkeypatch.setattr(sngan.build, "checked_weights_files", lambda settings: {})
    monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    run_dir = tmp_path / "run"
    cfg = compose_config(
        *RUN[len(TINY) :],
        "iterations=20",
        "metrics.enabled=true",
        "metrics.eval_every=0",  # once, at the end
        "threads=1",
    )
    threads = torch.get_num_threads()
    try:
        last = train(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)
    tb = TensorBoard(tmp_path)
    assert tb.runs() == ["run/tb"]
    (group,) = tb.session_groups()
    assert group["hparams"]["metrics.enabled"] == 1  # torch's hparams write bools as numbers
    values = metric_values(group["sessions"][0])
    assert values["loss/d"] == (20, pytest.approx(last["loss/d"]))
    assert values["loss/g"] == (20, pytest.approx(last["loss/g"]))
    # Every FID and IS tag the run logged is a column of the table, with its final value.
    scored = {"fid": 12.5, "is": 1.25}
    logged = [t for t in read_events(run_dir).Tags()["scalars"] if t.startswith("metrics/")]
    evaluated = [t for t in logged if t.rpartition("/")[2] in scored]
    assert len(evaluated) == 2 * len(cfg.metrics.generators)
    columns = [m["name"]["tag"] for m in tb.experiment()["metricInfos"]]
    for tag in evaluated:
        assert tag in columns
        assert values[tag] == (20, scored[tag.rpartition("/")[2]]), tag


def next_second() -> None:
    """Sleep into the next second: event files are read in name order, and their names start
    with the second they were made in (then a counter that sorts as text: 10 before 9)."""
    time.sleep(1.01 - time.time() % 1)


def test_a_resume_writes_the_hparams_again_and_tensorboard_shows_the_first(tmp_path):
    run_dir = tmp_path / "run"
    # A first attempt that wrote none (a run from before hparams were written at the start).
    with RunLog(run_dir) as log:
        log.scalars({"loss/d": 1.0, "loss/g": 2.0}, 1)
    next_second()
    cfg = compose_config("iterations=10")
    with RunLog(run_dir, start=1) as log:
        log.hparams(cfg, ["loss/d", "loss/g"])
        log.scalars({"loss/d": 3.0, "loss/g": 4.0}, 2)
    session = listed_once(tmp_path, "run/tb", cfg)
    assert metric_values(session) == {"loss/d": (2, 3.0), "loss/g": (2, 4.0)}

    # TensorBoard keeps the first hparams it reads: a resume that changes a resumable key
    # (iterations) still shows the first value.
    next_second()
    with RunLog(run_dir, start=2) as log:
        log.hparams(compose_config("iterations=20"), ["loss/d", "loss/g"])
    listed_once(tmp_path, "run/tb", cfg)

"""Many runs at once: GPU slots, the joblib and SLURM launchers, requeue, reproduce.py --jobs.

SLURM cannot run here. Its side is tested up to the cluster: the shipped launcher config
composes, the launcher renders the sbatch script it would submit, its requeue hook resubmits the
same job (same overrides, same run directory), and a SIGUSR2 from submitit makes sngan save a
checkpoint before submitit's handler requeues the job. tests/test_runlock_cli.py runs a requeued
job's start (SUBMITIT_EXECUTOR set, its directory holds checkpoints) to the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from omegaconf import OmegaConf

from sngan import checkpoint, gpu_slots, runlock
from sngan.cli import SweepJobError  # noqa: F401  (registers the resolvers and launchers)
from sngan.config import ConfigError, compose_hydra
from sngan.interrupt import Interrupted, StopRequest
from sngan.runlock import RunLock

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
needs_joblib = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="needs hydra-joblib-launcher (pip install 'sngan[sweep]')",
)
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="needs hydra-submitit-launcher (pip install 'sngan[sweep]')",
)


@pytest.fixture
def slots(tmp_path, monkeypatch):
    """Two GPUs (whatever this machine has) and so two slots, their locks under tmp_path."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv(gpu_slots.SLOTS_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(gpu_slots, "_held", None)
    monkeypatch.setattr(gpu_slots, "_last", None)
    yield
    gpu_slots.release()


def slot_dir(slot: int) -> Path:
    return gpu_slots.lock_dir() / f"gpu{slot}"


def lock_record(directory: Path) -> dict:
    """Who took ``directory``'s lock last (the record stays after the lock is released)."""
    return json.loads((directory / runlock.LOCK_NAME).read_text())


# -- GPU slots ------------------------------------------------------------------------------------


@needs_joblib
def test_the_gpus_preset_runs_one_joblib_worker_per_gpu_each_on_a_slot_of_its_own():
    cfg = compose_hydra(["+sweep=gpus"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("JoblibLauncher")
    assert launcher["n_jobs"] == "${gpu_count:}"
    assert cfg.hydra.callbacks.gpu_slot._target_ == "sngan.gpu_slots.ReleaseSlot"
    # Resolved in each job, when it reads its config: composing (or --cfg job) claims nothing.
    assert OmegaConf.to_container(cfg, resolve=False)["device"] == "cuda:${gpu_slot:}"


def test_a_slot_is_claimed_once_skips_taken_ones_and_is_given_back(slots):
    other = RunLock(slot_dir(0)).acquire()  # another process's job on GPU 0
    assert OmegaConf.create({"device": "cuda:${gpu_slot:}"}).device == "cuda:1"
    assert gpu_slots.claim() == 1  # the same slot for the rest of the job
    assert runlock.holder(slot_dir(1))["pid"] == os.getpid()
    gpu_slots.release()
    assert runlock.holder(slot_dir(1)) is None
    other.release()
    # A worker's next job goes back to the GPU its CUDA context is on, if that one is free.
    assert gpu_slots.claim() == 1


def test_a_job_that_finds_every_slot_taken_waits_for_one(slots, monkeypatch, capsys):
    monkeypatch.setattr(gpu_slots, "POLL_S", 0.05)
    taken = [RunLock(slot_dir(i)).acquire() for i in (0, 1)]
    got = []
    waiter = threading.Thread(target=lambda: got.append(gpu_slots.claim()))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and not got  # queued, not put on a taken GPU
    taken[1].release()
    waiter.join(timeout=10)
    assert got == [1]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"sngan-train: all 2 GPU slots of this machine are taken (slot 0: pid {os.getpid()}, "
        f"slot 1: pid {os.getpid()}); waiting for one to be free",
        "sngan-train: got GPU slot 1",
    ]
    taken[0].release()


def test_slot_count_is_the_gpus_or_a_valid_number_of_them(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv(gpu_slots.SLOTS_ENV, raising=False)
    with pytest.raises(ConfigError, match="torch sees no GPU here; on a CPU run jobs side by side"):
        gpu_slots.slot_count()
    # Through the resolver: sngan-train's one line and status 1, not OmegaConf's traceback.
    with pytest.raises(SystemExit) as info:
        OmegaConf.create({"n": "${gpu_count:}"}).n  # noqa: B018
    assert str(info.value).startswith("sngan-train: error: device=cuda:${gpu_slot:} (+sweep=gpus)")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert gpu_slots.slot_count() == 4
    monkeypatch.setenv(gpu_slots.SLOTS_ENV, "2")
    assert gpu_slots.slot_count() == 2
    for bad in ("0", "5", "two"):
        monkeypatch.setenv(gpu_slots.SLOTS_ENV, bad)
        with pytest.raises(ConfigError, match=f"SNGAN_GPU_SLOTS={bad} is not valid"):
            gpu_slots.slot_count()


@needs_joblib
def test_a_joblib_sweep_runs_its_jobs_side_by_side_each_in_its_own_dir_and_slot(tmp_path):
    # On a CPU: two fake GPU slots; device=cpu, and the slot each job claims is written into
    # data.root, which synthetic data does not use, so that config.yaml records it. Each job
    # holds its one checkpoint write open for 4 s, so that the two must overlap.
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            str(BIN / "sngan-train"),
            "-m",
            "+sweep=gpus",
            *TINY,
            "checkpoint_every=4",
            "data.root=${gpu_slot:}",
            "optim.n_dis=1,2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={
            **ENV,
            "CUDA_VISIBLE_DEVICES": "",  # no GPU, whatever this machine has: two fake slots
            "SNGAN_GPU_SLOTS": "2",
            "TMPDIR": str(tmp_path),
            "SNGAN_TEST_SAVE_PAUSE": "4",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spans, slot_of, pid_of = {}, {}, {}
    for job in ("0", "1"):
        run_dir = sweep / job
        state = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
        assert state["iteration"] == 4 and state["config"]["optim"]["n_dis"] == int(job) + 1
        # From Hydra writing the job's .hydra/ to the job's last checkpoint.
        spans[job] = (
            (run_dir / ".hydra" / "config.yaml").stat().st_mtime,
            (run_dir / "checkpoints" / "latest.pt").stat().st_mtime,
        )
        slot_of[job] = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
        pid_of[job] = lock_record(run_dir)["pid"]
    seen = f"job: (start, end) {spans}, slot {slot_of}, pid {pid_of}"
    (start0, end0), (start1, end1) = spans["0"], spans["1"]
    assert start0 < end1 and start1 < end0, seen  # they ran at the same time
    assert sorted(slot_of.values()) == ["0", "1"], seen
    assert pid_of["0"] != pid_of["1"], seen  # two worker processes, each its run dir's writer
    for job, slot in slot_of.items():  # slot i's lock was taken by the process that ran job i
        assert (
            lock_record(tmp_path / f"sngan-gpus-{os.getuid()}" / f"gpu{slot}")["pid"] == pid_of[job]
        )


# Runs sngan-train as if the launcher plugins were not installed: Hydra finds plugins (and sngan
# looks for them) through the hydra_plugins namespace package's path.
WITHOUT_PLUGINS = """
import sys
from pathlib import Path
import hydra_plugins
hydra_plugins.__path__ = [p for p in hydra_plugins.__path__
                          if not (Path(p) / "hydra_joblib_launcher").exists()
                          and not (Path(p) / "hydra_submitit_launcher").exists()]
sys.argv[0] = "sngan-train"
from sngan.cli import train_main
train_main()
"""


def test_without_the_plugins_the_launchers_say_what_to_install(tmp_path):
    procs = {  # both at once
        (launcher, plugin): subprocess.Popen(
            [sys.executable, "-c", WITHOUT_PLUGINS, "-m", f"hydra/launcher={launcher}", *TINY],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for launcher, plugin in (
            ("joblib", "hydra-joblib-launcher"),
            ("slurm", "hydra-submitit-launcher"),
        )
    }
    for (launcher, plugin), proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, (launcher, out[-2000:] + err[-2000:])
        assert (
            err.strip()
            .splitlines()[-1]
            .endswith(
                f"launcher needs the Hydra plugin {plugin}, which is not installed: "
                "pip install 'sngan[sweep]'"
            )
        ), (launcher, err)
        assert "Traceback" not in err, launcher
    assert not list(tmp_path.rglob("checkpoints"))


# -- SLURM (hydra-submitit-launcher) -------------------------------------------------------------

SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=600",
    "hydra.launcher.gpus_per_node=1",
    "hydra.launcher.array_parallelism=2",
    "hydra.launcher.constraint=a100",
    "hydra.launcher.account=lab",
]


@needs_submitit
def test_sngan_train_composes_the_slurm_launcher_with_the_documented_overrides(tmp_path):
    proc = subprocess.run(
        [str(BIN / "sngan-train"), *SLURM, "--cfg", "hydra"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (
        launcher
        | {
            "partition": "gpu",
            "timeout_min": 600,
            "gpus_per_node": 1,
            "array_parallelism": 2,
            "constraint": "a100",
            "account": "lab",
            "signal_delay_s": 300,
            "max_num_timeout": 20,
            "additional_parameters": {"requeue": True},
        }
        == launcher
    )
    assert not list(tmp_path.iterdir())  # --cfg submits nothing and writes nothing


class _Submitted(Exception):
    """Raised in place of calling sbatch."""


@needs_submitit
def test_the_slurm_launcher_submits_a_requeueable_array_and_requeues_the_same_job(
    tmp_path, monkeypatch
):
    import cloudpickle
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    cfg = compose_hydra([*SLURM, f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    # The launcher's own launch(), up to the sbatch call: the script it would submit.
    sbatch = []

    def submit(self, command):
        sbatch.append(self._make_submission_file_text(command, "uid"))
        raise _Submitted

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    monkeypatch.setattr(SlurmExecutor, "_submit_command", submit)
    jobs = [["seed=0"], ["seed=1"], ["seed=2"]]
    with pytest.raises(_Submitted):
        launcher.launch(jobs, initial_job_idx=0)
    flags = {line for line in sbatch[0].splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --array=0-2%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=600",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --constraint=a100",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@300",
    } <= flags

    # On SIGUSR2, submitit's handler calls the launcher's checkpoint() with the job's own
    # arguments and resubmits what it returns: the same overrides and job number, so the same
    # run directory, even on another day (the sweep dir's ${now:} was resolved once, at launch).
    args = (["seed=1"], "hydra.sweep.dir", 1, "job_id_for_1", {})
    sweep_dir = str(launcher.config.hydra.sweep.dir)
    resubmitted = cloudpickle.loads(cloudpickle.dumps(launcher.checkpoint(*args)))
    assert resubmitted.args == args and resubmitted.kwargs == {}
    assert str(resubmitted.function.config.hydra.sweep.dir) == sweep_dir


def test_sigusr2_under_submitit_saves_a_checkpoint_before_submitit_requeues(
    tiny_config, tmp_path, monkeypatch
):
    from sngan.train import train

    # submitit's handler as the job finds it; it requeues and exits (SystemExit(-1)).
    requeued = []

    def submitit_handler(signum, frame):
        requeued.append(checkpoint.load(checkpoint.find_latest(tmp_path))["iteration"])
        raise SystemExit(-1)

    # The signal arrives while the first checkpoint (iteration 2 of 4) is being saved.
    real_save = checkpoint.save_snapshot

    def save_snapshot(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if not requeued and checkpoint.load(path)["iteration"] == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
        return path

    monkeypatch.setattr(checkpoint, "save_snapshot", save_snapshot)
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit) as info:
            train(tiny_config(), tmp_path)
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # given back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert info.value.code == -1
    # submitit ran once, after the loop had saved the iteration it was in.
    assert requeued == [3]
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("ckpt_*.pt"))] == [
        "ckpt_0000002.pt",
        "ckpt_0000003.pt",
    ]


def test_without_a_launcher_sigusr2_is_left_alone():
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert stop.signal is None
    # SIGTERM: still a stop that raises Interrupted (nothing handed over).
    with pytest.raises(Interrupted), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        raise Interrupted("saved", stop.signal)
    assert stop.signal == signal.SIGTERM


# -- scripts/reproduce.py -------------------------------------------------------------------------


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reproduce = load_reproduce()
# Takes a run directory's lock and holds it (runlock.py by its path: no torch import).
HOLD = (
    "import importlib.util as u, sys, time; "
    f"s = u.spec_from_file_location('runlock', {runlock.__file__!r}); m = u.module_from_spec(s); "
    "s.loader.exec_module(m); m.RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); time.sleep(600)"
)


def test_reproduce_skips_an_experiment_another_sngan_train_holds(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    # Another process holds dcgan_B's lock, as a sngan-train training it would.
    held = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(runs / "dcgan" / "dcgan_B")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert held.stdout.readline().strip() == "locked"
    commands = []
    monkeypatch.setattr(reproduce, "run", lambda cmd, dry_run=False: commands.append(cmd))
    try:
        run_dirs = reproduce.train(runs, [], ["dcgan_A", "dcgan_B"], dry_run=False)
    finally:
        held.kill()
        held.communicate()
    assert run_dirs == {"dcgan_A": runs / "dcgan" / "dcgan_A"}  # B is neither trained nor scored
    ((_, _, experiments, *_),) = commands
    assert experiments == "experiment=dcgan_A"
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "skipped" in x]
    assert line.startswith(
        f"reproduce.py: skipped dcgan_B: {runs / 'dcgan' / 'dcgan_B'} is in use by another "
        f"sngan-train (pid {held.pid} on host "
    )


def test_reproduce_jobs_trains_the_sweeps_together_one_gpu_slot_per_job(
    tmp_path, monkeypatch, capsys
):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    runs = tmp_path / "runs"
    state = {"iteration": 3, "config": {"iterations": 10}}
    state |= {k: {} for k in ("G", "D", "G_ema", "opt_g", "opt_d")}
    checkpoint.save(state, runs / "resnet" / "sngan_resnet" / "checkpoints" / "latest.pt")
    only = "sngan_resnet,dcgan_A,dcgan_B,dcgan_C"
    code = reproduce.main(["--dry-run", "--jobs", "2", "--runs", str(runs), "--only", only])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    lines = [x for x in out if x.startswith("+ ") and "sngan-train " in x]
    sngan_train = reproduce.console_script("sngan-train")
    # Started together; at most 2 of the first 2 GPUs (of 4) at once, one job per GPU.
    assert lines == [
        f"+ SNGAN_GPU_SLOTS=2 {sngan_train} resume={runs / 'resnet' / 'sngan_resnet'} "
        "progress=false 'device=cuda:${gpu_slot:}' &",
        f"+ SNGAN_GPU_SLOTS=2 {sngan_train} -m +sweep=gpus hydra.launcher.n_jobs=2 "
        f"experiment=dcgan_A,dcgan_B,dcgan_C hydra.sweep.dir={runs / 'dcgan'} "
        "'hydra.sweep.subdir=${hydra.runtime.choices.experiment}' progress=false &",
    ]


@needs_submitit
def test_submitit_requeues_a_job_on_sigusr2_and_it_resumes_in_its_own_directory(tmp_path):
    # hydra/launcher=submitit_local runs the job in a process of its own, under submitit's
    # signal handlers, as on a SLURM node. Its time limit is short enough (under 10 minutes)
    # that any SIGUSR2 counts as "time is up": one requeue is allowed.
    sweep = tmp_path / "sweep"
    parent = subprocess.Popen(
        [
            str(BIN / "sngan-train"),
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=3",
            "+hydra.launcher.max_num_timeout=1",
            *TINY,
            "iterations=12",
            "sample_every=6",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = sweep / "0"
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("ckpt_*.pt")):
        assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
        time.sleep(0.01)
    job = lock_record(run_dir)["pid"]  # the job's process, which holds the run directory
    os.kill(job, signal.SIGUSR2)  # what submitit's local controller sends near the time limit
    out, err = parent.communicate(timeout=600)
    assert parent.returncode == 0, out[-3000:] + err[-3000:]

    # The job's output, both attempts: submitit's log files (stdout, then stderr).
    (out_log,) = sweep.glob(".submitit/*/*_0_log.out")
    text = out_log.read_text() + out_log.with_suffix(".err").read_text()
    (saved,) = [
        x for x in text.splitlines() if x.startswith("sngan-train: SIGUSR2 received: saved")
    ]
    iteration = int(saved.split(" at iteration ")[1].split(";")[0])
    assert "Requeued job" in text
    assert (
        f"resuming {run_dir} from {run_dir}/checkpoints/latest.pt at iteration {iteration}" in text
    )
    assert lock_record(run_dir)["pid"] != job  # the second attempt, in the same directory
    assert checkpoint.load(run_dir / "checkpoints" / "latest.pt")["iteration"] == 12

"""Every key of the three schemas takes effect, from the command line's config to its object.

The keys are enumerated from the schemas themselves (``TrainConfig``, ``SampleConfig``,
``EvalConfig``), so a key added to a schema is a test here at once, and that test fails until
the table below names the observable effect of a non-default value: a parameter count, a module
type, an optimiser setting, a batch shape, a file written, a log tag, an error. Each effect is
reached the way a user reaches it: ``compose`` (the real Hydra config), then the one function
that builds the object (``sngan.build``), or a tiny training run, or the sngan-sample /
sngan-eval function the console script calls.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import compose_config, scalars, write_cifar10
from PIL import Image
from stl10_fixture import write_stl10

import sngan.build
from sngan import checkpoint, losses
from sngan.build import (
    build_networks,
    build_train_state,
    check_fits,
    training_images,
    training_set,
)
from sngan.config import ConfigError, EvalConfig, SampleConfig, TrainConfig
from sngan.extractor_weights import INCEPTION, file_digest
from sngan.models import ConditionalBatchNorm2d, ResNetGenerator
from sngan.train import generator_iteration, train

CPU = torch.device("cpu")


def leaf_keys(schema: type, prefix: str = "") -> list[str]:
    """Every settable key of a dataclass schema by its full name, read off the schema."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys += leaf_keys(kind, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_of(*overrides: str):
    """The TrainState a tiny config with ``overrides`` builds, through the real config."""
    cfg = compose_config(*overrides)
    images, labels = training_images(cfg)
    return build_train_state(cfg, images, labels, CPU)


def networks(*overrides: str, tiny: bool = True, meta: bool = False):
    cfg = compose_config(*overrides, tiny=tiny)
    if meta:  # shapes only: the ImageNet networks' counts, at once
        with torch.device("meta"):
            return build_networks(cfg)
    return build_networks(cfg)


def compose_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    return str(err.value)


class Runs:
    """Tiny training runs, one per set of overrides, made once for the module."""

    def __init__(self, root: Path, monkeypatch_factory: Callable[[], pytest.MonkeyPatch]) -> None:
        self.root = root
        self.made: dict[tuple[str, ...], Path] = {}
        self.monkeypatch = monkeypatch_factory

    def __call__(self, *overrides: str) -> Path:
        key = tuple(overrides)
        if key not in self.made:
            run_dir = self.root / f"run{len(self.made)}"
            with pytest.MonkeyPatch.context() as mp:
                stub_evaluator(mp)
                train(compose_config("iterations=6", *overrides), run_dir)
            self.made[key] = run_dir
        return self.made[key]


def stub_evaluator(mp: pytest.MonkeyPatch) -> None:
    """Evaluations without Inception. The FID of G (in train mode when scored) rises with each
    evaluation, G_ema's falls: best.pt then follows the first or the last evaluation."""
    calls: dict[bool, int] = {True: 0, False: 0}

    def build_evaluator(settings, reference, name, device, weights=None, labels=None, digest=None):
        def evaluate(G, seed=0):
            calls[G.training] += 1
            n = calls[G.training]
            return {"metrics/fid": float(n if G.training else 100 - n), "metrics/is": 1.0}

        return evaluate

    mp.setattr(sngan.build, "build_evaluator", build_evaluator)
    mp.setattr(sngan.build, "checked_weights_files", lambda settings: {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"), pytest.MonkeyPatch)


def files(run_dir: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (run_dir / sub).iterdir() if not p.name.startswith("."))


def records(run_dir: Path) -> list[tuple[int, str]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["iteration"], r["generator"]) for r in map(json.loads, lines)]


def d_batch_sizes(*overrides: str) -> list[int]:
    """The batch sizes D sees in one generator iteration (n_dis D steps, then the G step)."""
    s = state_of(*overrides)
    seen: list[int] = []
    s.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    generator_iteration(s, 0)
    return seen


def evaluator_of(*overrides: str, weights: Path):
    """The Evaluator ``build.build_evaluator`` makes of the composed ``metrics`` section."""
    cfg = compose_config(f"metrics.inception_weights={weights}", *overrides)
    reference = torch.zeros(20, 3, 8, 8, dtype=torch.uint8)
    return sngan.build.build_evaluator(cfg.metrics, reference, "x", CPU)


def make_folder(root: Path, per_class: int) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), (10 * i, 50, 90)).save(root / cls / f"{i}.png")
    return root


# -- sngan-train's keys ---------------------------------------------------------------------------

TRAIN: dict[str, Callable[..., None]] = {}


def effect(*keys: str, table: dict[str, Callable[..., None]] = TRAIN):
    def register(check: Callable[..., None]) -> Callable[..., None]:
        for key in keys:
            assert key not in table, key
            table[key] = check
        return check

    return register


@effect("model.name")
def _(ctx):
    G, _ = networks("model.name=resnet", "model.g_channels=16", "model.d_channels=16")
    assert isinstance(G, ResNetGenerator)


@effect("model.z_dim")
def _(ctx):
    G, _ = networks("model.z_dim=8")
    assert G.z_dim == 8 and G(torch.randn(2, 8)).shape == (2, 3, 32, 32)


@effect("model.g_channels", "model.d_channels")
def _(ctx):
    G, D = networks()
    G2, D2 = networks("model.g_channels=64", "model.d_channels=16")
    assert (G.channels, D.channels, G2.channels, D2.channels) == (32, 8, 64, 16)
    assert n_params(G2) > n_params(G) and n_params(D2) > n_params(D)


@effect("model.d_widths")
def _(ctx):
    # The official chainer-gan-lib SNDCGANDiscriminator (ch = 512) against Table 3 as printed.
    _, paper = networks("model=dcgan", tiny=False)
    _, chainer = networks("model=dcgan", "model.d_widths=chainer", tiny=False)
    assert (n_params(paper), n_params(chainer)) == (2_935_873, 5_860_865)


@effect("model.num_classes")
def _(ctx):
    G, D = networks("model.num_classes=10")
    assert any(isinstance(m, ConditionalBatchNorm2d) for m in G.modules())
    assert D.embed.weight.shape[0] == 10


@effect("model.conditioning")
def _(ctx):
    # The official ImageNet D (pfnet-research/sngan_projection, dis_models/snresnet.py).
    common = ("model=resnet", "data=synthetic", "data.image_size=128", "model.num_classes=1000")
    _, projection = networks(*common, tiny=False, meta=True)
    _, concat = networks(*common, "model.conditioning=concat", tiny=False, meta=True)
    assert (n_params(projection), n_params(concat)) == (30_041_857, 30_538_625)


@effect("loss.name")
def _(ctx):
    s = state_of("loss=wasserstein")
    assert (s.d_loss, s.g_loss) == (losses.d_wasserstein, losses.g_wasserstein)


@effect("data.source", "data.root")
def _(ctx):
    a = make_folder(ctx.tmp / "a", per_class=3)
    b = make_folder(ctx.tmp / "b", per_class=5)
    cache = f"data.cache_dir={ctx.tmp / 'cache'}"
    for root, n in ((a, 6), (b, 10)):
        images, labels = training_images(compose_config("data=folder", f"data.root={root}", cache))
        assert images.shape == (n, 3, 32, 32) and labels.tolist() == [0] * (n // 2) + [1] * (n // 2)


@effect("data.download")
def _(ctx):
    fetched = []
    ctx.monkeypatch.setattr(
        "torchvision.datasets.CIFAR10", lambda *args, **kwargs: fetched.append(kwargs)
    )
    common = ("data=cifar10", f"data.root={ctx.tmp / 'none'}")
    with pytest.raises(ConfigError, match=r"\(download=False\)"):
        training_images(compose_config(*common, "data.download=false"))
    assert fetched == []
    with pytest.raises(ConfigError, match="the download finished without them"):
        training_images(compose_config(*common, "data.download=true"))
    assert fetched == [{"train": True, "download": True}]


@effect("data.image_size")
def _(ctx):
    cfg = compose_config("data.image_size=16")
    images, _ = training_images(cfg)
    G, _ = build_networks(cfg)
    fake = G(torch.randn(2, cfg.model.z_dim))
    assert images.shape[1:] == fake.shape[1:] == (3, 16, 16)


@effect("data.split")
def _(ctx):
    root = write_stl10(ctx.tmp / "stl10")
    common = ("data=stl10", f"data.root={root}", "data.download=false", "data.image_size=32")
    cache = f"data.cache_dir={ctx.tmp / 'cache'}"
    unlabeled, _ = training_images(compose_config(*common, cache))
    both, labels = training_images(compose_config(*common, cache, "data.split=train+unlabeled"))
    assert (len(unlabeled), len(both)) == (12, 18) and (labels[:6] >= 0).all()


@effect("data.cache_dir")
def _(ctx):
    root = make_folder(ctx.tmp / "f", per_class=2)
    training_images(
        compose_config("data=folder", f"data.root={root}", f"data.cache_dir={ctx.tmp / 'c'}")
    )
    stores = (ctx.tmp / "c").iterdir()
    assert sorted(p.suffix for p in stores if not p.name.startswith(".")) == [".json", ".npy"]


@effect("data.store")
def _(ctx):
    # A prepared store moved away from its source, which is then gone: used as it is.
    import shutil

    root = make_folder(ctx.tmp / "s", per_class=2)
    prepared = training_set(
        compose_config("data=folder", f"data.root={root}", f"data.cache_dir={ctx.tmp / 'c'}")
    )
    moved = ctx.tmp / "moved"
    shutil.copytree(ctx.tmp / "c", moved)
    shutil.rmtree(root)
    (npy,) = moved.glob("*.npy")
    data = training_set(compose_config("data=folder", f"data.root={root}", f"data.store={npy}"))
    assert torch.equal(data.images, prepared.images) and torch.equal(data.labels, prepared.labels)
    assert data.digest == prepared.digest  # the same reference statistics
    with pytest.raises(ConfigError, match=r"holds 32x32 images, and data.image_size=64"):
        training_images(compose_config("data=folder", f"data.store={npy}", "data.image_size=64"))


@effect("data.workers")
def _(ctx):
    import sngan.image_store as store

    used = []
    run = store._run
    ctx.monkeypatch.setattr(
        store, "_run", lambda tasks, workers: used.append(workers) or run(tasks, 1)
    )
    ctx.monkeypatch.setattr(store, "CHUNK", 3)  # 6 images: two chunks
    root = make_folder(ctx.tmp / "w", per_class=3)
    for workers in (1, 2):
        cache = f"data.cache_dir={ctx.tmp / f'c{workers}'}"
        training_images(
            compose_config("data=folder", f"data.root={root}", cache, f"data.workers={workers}")
        )
    assert used == [1, 2]


@effect("data.residence")
def _(ctx):
    from sngan.batches import BatchStream, HostBatchStream

    assert type(state_of("data.residence=device").stream) is BatchStream
    assert type(state_of("data.residence=host").stream) is HostBatchStream
    assert type(state_of("data.residence=auto").stream) is BatchStream  # 64 images fit


@effect("data.classes")
def _(ctx):
    for wnid in ("n01440764", "n01443537"):
        make_folder(ctx.tmp / "imagenet" / "train" / wnid, per_class=1)
    common = ("data=imagenet", f"data.root={ctx.tmp / 'imagenet'}", f"data.cache_dir={ctx.tmp}")
    with pytest.raises(ConfigError, match="it has 2 class folders, expected 1000"):
        training_images(compose_config(*common))
    assert training_images(compose_config(*common, "data.classes=2"))[0].shape[0] == 4


@effect("data.dequantize")
def _(ctx):
    plain, noisy = state_of(), state_of("data.dequantize=true")
    a, b = plain.stream.next(8)[0], noisy.stream.next(8)[0]  # the same images, in order
    pixel = ((a + 1) * 127.5).round()
    assert torch.all(b >= pixel / 128 - 1) and torch.all(b < (pixel + 1) / 128 - 1)
    assert not torch.equal(b, pixel / 128 - 1)


@effect("data.num_images")
def _(ctx):
    assert training_images(compose_config("data.num_images=40"))[0].shape[0] == 40


@effect("optim.n_dis")
def _(ctx):
    s = state_of("optim.n_dis=3")
    generator_iteration(s, 0)
    assert int(next(iter(s.opt_d.state.values()))["step"]) == 3
    assert int(next(iter(s.opt_g.state.values()))["step"]) == 1


@effect("optim.g_lr", "optim.d_lr", "optim.betas")
def _(ctx):
    s = state_of("optim.g_lr=0.001", "optim.d_lr=0.003", "optim.betas=[0.5,0.99]")
    g, d = s.opt_g.param_groups[0], s.opt_d.param_groups[0]
    assert (g["lr"], d["lr"], g["betas"], d["betas"]) == (0.001, 0.003, (0.5, 0.99), (0.5, 0.99))


@effect("optim.d_batch_size", "optim.g_batch_size")
def _(ctx):
    # D steps see the real and the generated batch (two forwards on the CPU), then the G step.
    assert d_batch_sizes("optim.d_batch_size=4", "optim.g_batch_size=6") == [4, 4, 4, 4, 6]


@effect("optim.lr_decay")
def _(ctx):
    for decay, expected in (("linear", 0.0002 * (1 - 1 / 4)), ("none", 0.0002)):
        s = state_of(f"optim.lr_decay={decay}")
        generator_iteration(s, 0)
        assert s.opt_g.param_groups[0]["lr"] == pytest.approx(expected)


@effect("optim.lr_decay_start")
def _(ctx):
    # iterations=4 (TINY): from 0 the lr has decayed after one iteration, from 2 it has not.
    for start, expected in ((0, 0.0002 * 3 / 4), (2, 0.0002)):
        s = state_of(f"optim.lr_decay_start={start}")
        generator_iteration(s, 0)
        assert s.opt_g.param_groups[0]["lr"] == pytest.approx(expected)


@effect("optim.ema_decay", "optim.ema_start")
def _(ctx):
    def after_one(*overrides):
        s = state_of(*overrides)
        before = [p.clone() for p in s.G_ema.parameters()]
        generator_iteration(s, 0)
        return before, list(s.G.parameters()), list(s.G_ema.parameters())

    before, G, ema = after_one("optim.ema_start=0", "optim.ema_decay=0.25")
    for b, g, e in zip(before, G, ema, strict=True):
        torch.testing.assert_close(e, 0.25 * b + 0.75 * g)
    _, G, ema = after_one("optim.ema_start=5")  # before ema_start: a copy of G
    assert all(torch.equal(g, e) for g, e in zip(G, ema, strict=True))


@effect("optim.ema_bn_stats")
def _(ctx):
    recompute, copy = ctx.runs(), ctx.runs("optim.ema_bn_stats=copy")
    grid = "samples/G_ema_0000006.png"
    assert (recompute / "samples/G_0000006.png").read_bytes() == (
        copy / "samples/G_0000006.png"
    ).read_bytes()  # the same training ...
    assert (recompute / grid).read_bytes() != (copy / grid).read_bytes()  # ... G_ema drawn apart


@effect("metrics.enabled", "metrics.eval_every")
def _(ctx):
    assert not (ctx.runs() / "metrics.jsonl").exists()
    on = ctx.runs("metrics.enabled=true", "metrics.eval_every=2")
    assert [it for it, g in records(on) if g == "G"] == [2, 4, 6]
    end = ctx.runs("metrics.enabled=true", "metrics.eval_every=0")
    assert [it for it, g in records(end) if g == "G"] == [6]


@effect("metrics.generators")
def _(ctx):
    run = ctx.runs(
        "metrics.enabled=true", "metrics.eval_every=2", "metrics.generators=[G]", "metrics.best=G"
    )
    assert records(run) == [(2, "G"), (4, "G"), (6, "G")]


@effect("metrics.best")
def _(ctx):
    common = ("metrics.enabled=true", "metrics.eval_every=2")
    ema = ctx.runs(*common)
    raw = ctx.runs(*common, "metrics.best=G")
    best = "checkpoints/best.pt"
    assert checkpoint.load(ema / best)["iteration"] == 6  # G_ema's stub FID falls
    assert checkpoint.load(raw / best)["iteration"] == 2  # G's rises


@effect("metrics.protocol", "metrics.num_samples", "metrics.batch_size", "metrics.cache_dir")
def _(ctx):
    e = evaluator_of(
        "metrics.protocol=paper",
        "metrics.num_samples=30",
        "metrics.batch_size=7",
        f"metrics.cache_dir={ctx.tmp / 'fid'}",
        weights=ctx.inception,
    )
    assert (e.spec.name, e.spec.num_fake, e.batch_size) == ("paper", 30, 7)
    assert e.cache_dir == ctx.tmp / "fid"


@effect("metrics.num_real")
def _(ctx):
    e = evaluator_of("metrics.num_real=5", weights=ctx.inception)
    assert e.num_real == 5 and len(e.real_index) == 5  # a fixed random 5 of the 20
    assert evaluator_of(weights=ctx.inception).num_real == 20


@effect("metrics.intra_fid", "metrics.intra_fid_classes", "metrics.intra_fid_samples")
def _(ctx):
    cfg = compose_config(
        f"metrics.inception_weights={ctx.inception}",
        "model.num_classes=10",
        "metrics.intra_fid=true",
        "metrics.intra_fid_classes=[1,3]",
        "metrics.intra_fid_samples=7",
    )
    reference, labels = torch.zeros(20, 3, 8, 8, dtype=torch.uint8), torch.arange(20) % 10
    e = sngan.build.build_evaluator(cfg.metrics, reference, "x", CPU, labels=labels)
    assert (e.intra_fid, e.intra_fid_classes, e.intra_fid_samples) == (True, [1, 3], 7)
    assert torch.equal(e.labels, labels)


@effect("metrics.kid")
def _(ctx):
    assert evaluator_of("metrics.kid=true", weights=ctx.inception).kid


@effect("metrics.inception_weights")
def _(ctx):
    e = evaluator_of(weights=ctx.inception)
    assert e.digests[INCEPTION] == file_digest(ctx.inception)[:8]
    missing = ctx.tmp / "missing.pth"
    with pytest.raises(ConfigError, match=f"Inception weights file not found: {missing}"):
        sngan.build.checked_weights_files(
            compose_config(f"metrics.inception_weights={missing}").metrics
        )


@effect("metrics.prc", "metrics.prc_weights")
def _(ctx):
    missing = ctx.tmp / "vgg.pth"
    cfg = compose_config(
        f"metrics.inception_weights={ctx.inception}", f"metrics.prc_weights={missing}"
    )
    assert list(sngan.build.checked_weights_files(cfg.metrics)) == [INCEPTION]  # prc off
    cfg = compose_config(
        f"metrics.inception_weights={ctx.inception}",
        "metrics.prc=true",
        f"metrics.prc_weights={missing}",
    )
    with pytest.raises(ConfigError, match=f"VGG16 weights file not found: {missing}"):
        sngan.build.checked_weights_files(cfg.metrics)


@effect("iterations")
def _(ctx):
    assert checkpoint.load(ctx.runs() / "checkpoints/latest.pt")["iteration"] == 6


@effect("seed")
def _(ctx):
    a, b = state_of(), state_of("seed=1")
    assert not torch.equal(next(a.G.parameters()), next(b.G.parameters()))


@effect("device")
def _(ctx):
    if torch.cuda.is_available():
        assert state_of("device=cuda").device.type == "cuda"
        return
    with pytest.raises(ConfigError, match="device='cuda' is not valid"):
        sngan.build.resolve_device(compose_config("device=cuda").device)


@effect("amp")
def _(ctx):
    assert isinstance(state_of("amp=true").autocast, torch.autocast)
    assert not isinstance(state_of("amp=false").autocast, torch.autocast)


@effect("compile", "compile_mode")
def _(ctx):
    modes = []
    real = torch.compile
    ctx.monkeypatch.setattr(torch, "compile", lambda m, **kw: modes.append(kw) or real(m, **kw))
    s = state_of("compile=true", "compile_mode=max-autotune-no-cudagraphs")
    assert isinstance(s.G_run, torch._dynamo.eval_frame.OptimizedModule)
    assert modes == [{"mode": "max-autotune-no-cudagraphs"}] * 2  # G and D
    assert not isinstance(state_of("compile=false").G_run, torch._dynamo.eval_frame.OptimizedModule)


@effect("channels_last")
def _(ctx):
    def layout(*overrides):
        weight = next(
            m.weight for m in state_of(*overrides).D.modules() if m.__class__.__name__ == "Conv2d"
        )
        return weight.is_contiguous(memory_format=torch.channels_last)

    assert layout("channels_last=true") and not layout("channels_last=false")


@effect("fused_adam")
def _(ctx):
    assert state_of("fused_adam=true").opt_g.defaults["fused"] is True
    assert not state_of("fused_adam=false").opt_g.defaults.get("fused")


@effect("joint_d_forward")
def _(ctx):
    # One D forward of real and fake together per D step, then the G step's.
    sizes = d_batch_sizes("joint_d_forward=true", "optim.d_batch_size=4", "optim.g_batch_size=6")
    assert sizes == [8, 8, 6]


@effect("threads")
def _(ctx):
    before = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            seen = []
            real = torch.set_num_threads
            mp.setattr(torch, "set_num_threads", lambda n: seen.append(n) or real(n))
            train(compose_config("iterations=1", "threads=1"), ctx.tmp / "threads")
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


@effect("sync_bn")
def _(ctx):
    # Under torchrun on CPUs: refused (SyncBatchNorm needs CUDA), before anything is built.
    ctx.monkeypatch.setenv("WORLD_SIZE", "2")
    ctx.monkeypatch.setenv("RANK", "0")
    from sngan.distributed import Context

    cfg = compose_config("sync_bn=true")
    labels = torch.zeros(64, dtype=torch.int64)
    with pytest.raises(ConfigError, match="sync_bn=true is not valid here"):
        check_fits(cfg, Context.from_env(), CPU, labels)
    check_fits(compose_config("sync_bn=false"), Context.from_env(), CPU, labels)


@effect("log_every")
def _(ctx):
    steps = [s for s, _ in scalars(ctx.runs("log_every=3"))["loss/d"]]
    assert steps == [3, 6]


@effect("log_exact_every")
def _(ctx):
    tags = scalars(ctx.runs("log_exact_every=3"))
    assert [s for s, _ in next(v for k, v in tags.items() if k.startswith("sigma_exact/"))] == [
        3,
        6,
    ]


@effect("sample_every")
def _(ctx):
    assert files(ctx.runs("sample_every=3"), "samples") == [
        "G_0000003.png",
        "G_0000006.png",
        "G_ema_0000003.png",
        "G_ema_0000006.png",
    ]


@effect("checkpoint_every")
def _(ctx):
    assert files(ctx.runs("checkpoint_every=3"), "checkpoints") == [
        "ckpt_0000003.pt",
        "ckpt_0000006.pt",
        "latest.pt",
    ]


@effect("keep_checkpoints")
def _(ctx):
    assert files(ctx.runs("keep_checkpoints=1"), "checkpoints") == ["ckpt_0000006.pt", "latest.pt"]


@effect("nan_policy")
def _(ctx):
    assert state_of("nan_policy=skip").guard.policy == "skip"
    assert state_of("nan_policy=stop").guard.policy == "stop"


@effect("progress")
def _(ctx):
    train(compose_config("iterations=2", "progress=true"), ctx.tmp / "bar")
    bar = ctx.capfd.readouterr().err
    train(compose_config("iterations=2", "progress=false"), ctx.tmp / "nobar")
    assert "2/2" in bar and "2/2" not in ctx.capfd.readouterr().err


@effect("resume")
def _(ctx):
    run_dir = ctx.tmp / "resumed"
    train(compose_config("iterations=2"), run_dir)
    train(compose_config("iterations=4", f"resume={run_dir}"), run_dir)
    assert "resuming" in ctx.capfd.readouterr().out
    assert checkpoint.load(run_dir / "checkpoints/latest.pt")["iteration"] == 4


# -- sngan-sample's and sngan-eval's keys ---------------------------------------------------------

SAMPLE: dict[str, Callable[..., None]] = {}
EVAL: dict[str, Callable[..., None]] = {}


@pytest.fixture(scope="module")
def cond_checkpoint(tmp_path_factory) -> Path:
    """A tiny class-conditional run on CIFAR-10's format, its G_ema's statistics recomputed."""
    base = tmp_path_factory.mktemp("cond")
    root = write_cifar10(base / "data")
    cfg = compose_config(
        "data=cifar10",
        f"data.root={root}",
        "data.download=false",
        "model.num_classes=10",
        "iterations=2",
    )
    train(cfg, base / "run")
    return base / "run" / "checkpoints" / "latest.pt"


def sampled(ctx, *args: str) -> Path:
    from sngan.cli import sample_main

    out = ctx.tmp / f"s{len(list(ctx.tmp.iterdir()))}"
    out.mkdir()
    given = dict(a.split("=", 1) for a in args)
    target = given.pop("out", "grid.png")
    sample_main(
        [f"checkpoint={ctx.checkpoint}", "device=cpu", "n=4", f"out={out / target}"]
        + [f"{k}={v}" for k, v in given.items()]
    )
    return out / target


def pixels(path: Path) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float()


@effect("checkpoint", table=SAMPLE)
@effect("checkpoint", table=EVAL)
def _(ctx):
    from sngan.cli import eval_main, sample_main

    missing = ctx.tmp / "none.pt"
    for main in (sample_main, eval_main):
        with pytest.raises(SystemExit):
            main([f"checkpoint={missing}", "device=cpu"])
        assert f"checkpoint {missing} does not exist" in ctx.capfd.readouterr().err


@effect("n", table=SAMPLE)
def _(ctx):
    assert len(list(sampled(ctx, "n=3", "out=many/").iterdir())) == 3


@effect("out", table=SAMPLE)
def _(ctx):
    assert Image.open(sampled(ctx, "out=grid.jpg")).format == "JPEG"
    assert sampled(ctx, "out=folder/").is_dir()


@effect("ema", "ema_bn_stats", "seed", table=SAMPLE)
def _(ctx):
    base = pixels(sampled(ctx))
    for arg in ("ema=false", "ema_bn_stats=copy", "seed=3"):
        assert not torch.equal(base, pixels(sampled(ctx, arg))), arg


@effect("device", table=SAMPLE)
@effect("device", table=EVAL)
def _(ctx):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine accepts device=cuda")
    from sngan.cli import eval_main, sample_main

    for main in (sample_main, eval_main):
        with pytest.raises(SystemExit):
            main([f"checkpoint={ctx.checkpoint}", "device=cuda"])
        assert "device='cuda' is not valid" in ctx.capfd.readouterr().err


@effect("batch_size", table=SAMPLE)
def _(ctx):
    from sngan.models import DCGANGenerator  # the tiny checkpoint's G

    seen = []
    forward = DCGANGenerator.forward
    ctx.monkeypatch.setattr(
        DCGANGenerator,
        "forward",
        lambda self, z, y=None: seen.append(len(z)) or forward(self, z, y),
    )
    sampled(ctx, "n=5", "batch_size=2")
    assert seen[-3:] == [2, 2, 1]


@effect("class_", table=SAMPLE)
def _(ctx):
    assert not torch.equal(pixels(sampled(ctx, "class=1")), pixels(sampled(ctx, "class=2")))


@effect("grid", table=SAMPLE)
def _(ctx):
    # grid=per_class: a row per class (10) of n images.
    assert Image.open(sampled(ctx, "n=2", "grid=per_class")).size == (2 * 34 + 2, 10 * 34 + 2)


@effect("interpolate", table=SAMPLE)
def _(ctx):
    assert Image.open(sampled(ctx, "n=2", "interpolate=5")).size == (5 * 34 + 2, 2 * 34 + 2)


def evaluated(ctx, *args: str) -> tuple[list[dict], list[dict]]:
    """sngan-eval's records, and what the evaluator was built with and asked for."""
    from sngan.evaluation import evaluate_checkpoint

    built: list[dict] = []

    def build_evaluator(settings, reference, name, device, weights=None, labels=None, digest=None):
        built.append({"settings": settings, "reference": len(reference)})

        def evaluate(G, seed=0):
            built.append({"seed": seed, "G": G})
            return {"metrics/fid": 1.0, "metrics/is": 1.0}

        return evaluate

    ctx.monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    ctx.monkeypatch.setattr(sngan.build, "checked_weights_files", lambda settings: {})
    given = [f"checkpoint={ctx.checkpoint}", "device=cpu", *args]
    from sngan.cli import parse_args

    return evaluate_checkpoint(parse_args("sngan-eval", EvalConfig, given)), built


def eval_metrics_key(key: str) -> Callable[..., None]:
    """sngan-eval's ``metrics.<key>`` is the section training's evaluator is built from (whose
    keys' effects are checked above): the value given reaches ``build.build_evaluator``."""
    name = key.removeprefix("metrics.")

    def check(ctx):
        value = {bool: True, int: 17, str: "paper"}.get(type(getattr(TrainConfig().metrics, name)))
        value = {
            "generators": ["G"],
            "best": "G",
            "num_samples": 17,
            "num_real": 17,
            "intra_fid_classes": [1],
            "inception_weights": str(ctx.inception),
            "prc_weights": str(ctx.inception),
            "cache_dir": str(ctx.tmp / "fid"),
        }.get(name, value)
        shown = {True: "true"}.get(value, value) if isinstance(value, bool) else value
        shown = f"[{','.join(map(str, value))}]" if isinstance(value, list) else shown
        _, built = evaluated(ctx, f"{key}={shown}")
        assert getattr(built[0]["settings"], name) == value

    return check


for _key in leaf_keys(EvalConfig):
    if _key.startswith("metrics."):
        EVAL[_key] = eval_metrics_key(_key)


@effect("data_root", table=EVAL)
def _(ctx):
    root = write_cifar10(ctx.tmp / "other", images_per_batch=3)
    _, built = evaluated(ctx, f"data_root={root}")
    assert built[0]["reference"] == 15


@effect("ema", "generators", table=EVAL)
def _(ctx):
    assert [r["generator"] for r in evaluated(ctx, "ema=false")[0]] == ["G"]
    assert [r["generator"] for r in evaluated(ctx, "generators=[G_ema,G]")[0]] == ["G_ema", "G"]


@effect("ema_bn_stats", table=EVAL)
def _(ctx):
    (copy,), _ = evaluated(ctx, "ema_bn_stats=copy")
    (own,), _ = evaluated(ctx)
    assert (copy["bn_stats"], own["bn_stats"]) == ("copy", "recompute")


@effect("seed", table=EVAL)
def _(ctx):
    _, built = evaluated(ctx, "seed=7")
    assert built[1]["seed"] == 7


# -- the tests ------------------------------------------------------------------------------------


class Context:
    """What the checks use: scratch space, the shared runs and fixtures."""

    def __init__(self, tmp, runs, monkeypatch, capfd, inception, checkpoint=None):
        self.tmp, self.runs, self.monkeypatch, self.capfd = tmp, runs, monkeypatch, capfd
        self.inception, self.checkpoint = inception, checkpoint


@pytest.mark.parametrize(
    ("schema", "table"), [(TrainConfig, TRAIN), (SampleConfig, SAMPLE), (EvalConfig, EVAL)]
)
def test_every_key_has_an_effect_listed(schema, table):
    keys = leaf_keys(schema)
    missing = [k for k in keys if k not in table]
    assert not missing, f"{schema.__name__} keys with no effect listed here: {missing}"
    assert not set(table) - set(keys), (
        f"listed but not in {schema.__name__}: {set(table) - set(keys)}"
    )


@pytest.mark.parametrize("key", leaf_keys(TrainConfig))
def test_train_key_takes_effect(key, tmp_path, runs, monkeypatch, capfd, inception_weights):
    TRAIN[key](Context(tmp_path, runs, monkeypatch, capfd, inception_weights))


@pytest.mark.parametrize("key", leaf_keys(SampleConfig))
def test_sample_key_takes_effect(
    key, tmp_path, runs, monkeypatch, capfd, inception_weights, cond_checkpoint
):
    SAMPLE[key](Context(tmp_path, runs, monkeypatch, capfd, inception_weights, cond_checkpoint))


@pytest.mark.parametrize("key", leaf_keys(EvalConfig))
def test_eval_key_takes_effect(
    key, tmp_path, runs, monkeypatch, capfd, inception_weights, cond_checkpoint
):
    EVAL[key](Context(tmp_path, runs, monkeypatch, capfd, inception_weights, cond_checkpoint))

"""The README, CHANGELOG and Dockerfile against the code they describe."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, read_events
from torch import nn
from torch.nn.utils import parametrizations

import sngan
from sngan.config import to_dict
from sngan.models import build_models

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# The README's two commands, exactly as a new user copies them.
TRAIN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/sngan-train"
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/pytest'


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


config_reference = load_script("config_reference")
reproduce = load_script("reproduce")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def section(text: str, heading: str) -> str:
    """The body of the Markdown section ``heading`` (up to the next heading of any level)."""
    return text.split(f"\n{heading}\n")[1].split("\n#")[0]


# -- the two commands ----------------------------------------------------------------------------


def test_readme_gives_the_two_commands_as_their_own_code_blocks():
    blocks = [b.strip() for b in code_blocks(README, "sh")]
    assert blocks[:2] == [TRAIN_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    assert commands[-1] == TEST_COMMAND


# -- config reference ----------------------------------------------------------------------------


def test_config_reference_in_readme_is_up_to_date():
    generated = config_reference.replace_block(README, config_reference.render())
    assert generated == README, "run: python scripts/config_reference.py --write"


def _reference_rows() -> dict[str, list[str]]:
    block = README.split(config_reference.START)[1].split(config_reference.END)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), []).append(cells)
    return rows


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def test_config_reference_lists_every_key_with_sngan_trains_default():
    """Independently of the generator: compose sngan-train's config and look up each key."""
    composed = to_dict(compose_config(tiny=False))
    rows = _reference_rows()
    keys = _flatten(composed)
    for key, value in keys.items():
        assert key in rows, f"{key} is missing from the README's config reference"
        (cells,) = rows[key]
        default = cells[2].strip("`").replace("\\|", "|")
        assert default == config_reference.yaml_value(value), key
        assert cells[3], f"{key} has no description"
    group_names = {"model", "loss", "data", "experiment"}
    assert set(rows) - set(keys) == group_names


def test_config_reference_lists_every_option_of_every_group():
    rows = _reference_rows()
    for group in ("model", "loss", "data", "experiment"):
        options = sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))
        listed = sorted(cells[1].split("`")[1] for cells in rows[group])
        assert listed == options, group


def test_field_comments_are_read_from_the_source():
    @dataclasses.dataclass
    class Example:
        plain: int = 1  # a documented field
        typed: str | None = None  # documented | with a pipe
        bare: float = 0.5

    assert config_reference.field_comments(Example) == {
        "plain": ("int", "a documented field"),
        "typed": ("str | None", "documented | with a pipe"),
        "bare": ("float", ""),
    }


def test_overrides_are_written_as_on_the_command_line():
    values = [None, True, False, (0.0, 0.9), 2e-4, "resnet"]
    written = [config_reference.yaml_value(v) for v in values]
    assert written == ["null", "true", "false", "[0.0,0.9]", "0.0002", "resnet"]


# -- results ------------------------------------------------------------------------------------


def test_readme_results_table_is_the_one_in_docs_results():
    start, end = reproduce.README_START, reproduce.README_END
    block = README.split(start)[1].split(end)[0].strip("\n")
    assert block.startswith("| Experiment (preset) |")
    assert block in (REPO / "docs" / "results.md").read_text()


# -- version and changelog -----------------------------------------------------------------------


def test_version_is_the_same_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    (declared,) = re.findall(r'^version = "([^"]+)"', pyproject, flags=re.M)
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", _changelog(), re.M)
    assert releases, "CHANGELOG.md has no release heading like '## [0.1.0] - 2026-01-31'"
    assert declared == sngan.__version__ == importlib.metadata.version("sngan") == releases[0]


def _changelog() -> str:
    return (REPO / "CHANGELOG.md").read_text()


def test_changelog_follows_keep_a_changelog():
    text = _changelog()
    assert text.startswith("# Changelog\n")
    headings = re.findall(r"^##+ .*$", text, flags=re.M)
    assert headings[0] == "## [Unreleased]"
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for heading in headings[1:]:
        assert re.fullmatch(r"## \[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", heading) or (
            heading.startswith("### ") and heading[4:] in kinds
        ), heading


# -- TensorBoard tags ----------------------------------------------------------------------------


def _documented_tags() -> list[re.Pattern]:
    table = section(README, "## TensorBoard")
    tags = []
    for line in table.splitlines():
        if line.startswith("| `"):
            tags += re.findall(r"`([^`]+)`", line.split(" | ")[0])
    return [
        re.compile(re.escape(t).replace(r"<layer>", r"\S+").replace(r"\*", r"\S+")) for t in tags
    ]


def test_readme_documents_exactly_the_tags_a_run_logs(tmp_path):
    from sngan.train import train

    train(compose_config(), tmp_path)
    events = read_events(tmp_path)
    logged = events.Tags()["scalars"] + events.Tags()["images"]
    documented = _documented_tags()
    for tag in logged:
        assert any(p.fullmatch(tag) for p in documented), f"{tag} is logged but not in the README"
    conditional = {"metrics/\\S+", "perf/eval_s", "nonfinite/skipped"}  # need evaluation / NaNs
    for pattern in documented:
        if pattern.pattern not in conditional:
            assert any(pattern.fullmatch(t) for t in logged), f"{pattern.pattern} is never logged"


# -- the Python example --------------------------------------------------------------------------


def _as_torch_parametrizations(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sngan's D state dict renamed to torch.nn.utils.parametrizations.spectral_norm's keys."""
    # Read the key names off a real parametrized layer rather than spelling them out.
    keys = parametrizations.spectral_norm(nn.Linear(3, 2)).state_dict().keys()
    original, u, v = (next(k for k in keys if k.endswith(s)) for s in ("original", "_u", "_v"))
    renames = {"weight_orig": original, "weight_u": u, "weight_v": v}
    out = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        out[f"{module}.{renames.get(name, name)}".lstrip(".")] = value
    return out


def test_readme_python_example_imports_torch_spectral_norm_weights(tmp_path, monkeypatch):
    from sngan.cli import sample_main

    (example,) = code_blocks(README, "python")
    G, D = build_models(
        "resnet", image_size=32, z_dim=128, g_channels=256, d_channels=128, num_classes=0
    )
    theirs = _as_torch_parametrizations(D.state_dict())
    assert any(".parametrizations.weight.original" in k for k in theirs)
    torch.save(G.state_dict(), tmp_path / "G.pt")
    torch.save(theirs, tmp_path / "D.pt")
    monkeypatch.chdir(tmp_path)

    exec(compile(example, "README.md", "exec"), {})

    state = torch.load(tmp_path / "imported.pt", weights_only=True)
    for key, value in D.state_dict().items():
        torch.testing.assert_close(state["D"][key], value)
    for key, value in G.state_dict().items():
        torch.testing.assert_close(state["G_ema"][key], value)
    # G_ema as stored (it is G): the default, statistics recomputed from 4,096 samples of the
    # full ResNet, takes minutes on one CPU thread.
    sample_main(
        ["checkpoint=imported.pt", "n=4", "out=imported.png", "device=cpu", "ema_bn_stats=copy"]
    )
    assert (tmp_path / "imported.png").stat().st_size > 0


# -- Dockerfile ----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile instruction, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_sngan_train_on_an_official_pytorch_cuda_runtime_image():
    steps = _dockerfile()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG")
    from_ = next(a for i, a in steps if i == "FROM")
    image = args["BASE_IMAGE"] if from_ == "${BASE_IMAGE}" else from_
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", image)
    assert [a for i, a in steps if i == "ENTRYPOINT"] == ['["sngan-train"]']
    assert [a for i, a in steps if i == "WORKDIR"][-1] == "/workspace"
    (volumes,) = [a for i, a in steps if i == "VOLUME"]
    assert volumes == '["/workspace/data", "/workspace/runs", "/workspace/cache"]'
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "TORCH_HOME=/workspace/cache/torch" in env.split()
    assert "docker run --gpus all -v $PWD/runs:/workspace/runs sngan model=dcgan" in README


def test_docker_build_context_holds_what_the_dockerfile_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allow-list: runs/, data/ and .venv/ stay out of the context
    for instruction, arguments in _dockerfile():
        if instruction == "COPY":
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), source
                assert f"!{source}" in ignore, f"{source} is copied but excluded by .dockerignore"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_dockerfile_passes_hadolint():
    done = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_dockerfile_install_steps_work_in_a_fresh_environment(tmp_path):
    """The Dockerfile's COPY and RUN steps in a fresh venv (needs a package index).

    The base image's torch and torchvision are installed first, as pip would into that image;
    then the Dockerfile's RUN lines run verbatim, and the installed tools work from a directory
    that is not the repository (the configs must come from the installed package).
    """
    venv, src, work = tmp_path / "venv", tmp_path / "src", tmp_path / "workspace"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    pip = [str(venv / "bin" / "pip"), "install", "torch>=2.4", "torchvision"]
    subprocess.run(pip, check=True, env=env, timeout=3600)
    src.mkdir()
    for instruction, arguments in _dockerfile():
        if instruction == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy
                copy(REPO / source, src / source)
        elif instruction == "RUN":
            subprocess.run(arguments, shell=True, check=True, cwd=src, env=env, timeout=3600)
    work.mkdir()

    def tool(*argv: str) -> str:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    assert tool("sngan", "--version").strip() == f"sngan {sngan.__version__}"
    assert "experiment: dcgan_A, dcgan_B" in tool("sngan-train", "--help")
    tool("sngan-train", *TINY_OVERRIDES)
    assert list(work.glob("runs/*/*/checkpoints/latest.pt"))


TINY_OVERRIDES = [o for o in TINY if not o.startswith("iterations=")] + ["iterations=2"]

"""The optional Hydra launchers (``pip install 'sngan[sweep]'``), and what happens without them.

``hydra/launcher=joblib`` (jobs side by side on this machine; ``+sweep=gpus`` gives each a GPU)
comes from hydra-joblib-launcher; ``hydra/launcher=slurm`` (configs/hydra/launcher/slurm.yaml:
one SLURM job per sweep point) and ``submitit_local`` from hydra-submitit-launcher. Where a
plugin is not installed, Hydra would only say that it cannot find ``hydra/launcher/joblib``;
``register_with_hydra`` puts a stand-in config under the plugin's name, whose launcher, when a
multirun starts it, fails with one line that says what to install.
"""

from __future__ import annotations

import importlib.util
from typing import NoReturn

from omegaconf import OmegaConf

# Hydra's name for each launcher config -> (the plugin's module, the package that provides it).
PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # no hydra_plugins package at all
        return False


def _missing(name: str) -> NoReturn:
    package = PLUGINS[name][1]
    # SystemExit, not an exception: OmegaConf would wrap one into a multi-line error, and Hydra
    # would print its traceback.
    raise SystemExit(
        f"sngan-train: error: the {name} launcher needs the Hydra plugin {package}, which is not "
        "installed: pip install 'sngan[sweep]'"
    )


def register_with_hydra() -> None:
    """A stand-in ``hydra/launcher/<name>`` for each launcher plugin that is not installed."""
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver("sngan_missing_launcher", _missing, replace=True)
    for name, (module, _) in PLUGINS.items():
        if not installed(module):
            ConfigStore.instance().store(
                group="hydra/launcher",
                name=name,
                node={"_target_": f"${{sngan_missing_launcher:{name}}}"},
                provider="sngan",
            )

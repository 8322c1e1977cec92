"""The composed Hydra config: defaults and presets against the paper's settings."""

from __future__ import annotations

import pytest
from conftest import compose_config

from sngan.config import ConfigError, from_dict, to_dict, validate

# Table 1 of Miyato et al. (2018): (learning rate, beta1, beta2, n_dis).
PAPER_SETTINGS = {
    "A": (1e-4, 0.5, 0.9, 5),
    "B": (1e-4, 0.5, 0.999, 1),
    "C": (2e-4, 0.5, 0.999, 1),
    "D": (1e-3, 0.5, 0.9, 5),
    "E": (1e-3, 0.5, 0.999, 5),
    "F": (1e-3, 0.9, 0.999, 5),
}


def test_default_is_the_official_resnet_config():
    cfg = compose_config(tiny=False)
    o = cfg.optim
    assert (cfg.model.name, cfg.loss.name, cfg.data.source) == ("resnet", "hinge", "cifar10")
    assert (o.d_batch_size, o.g_batch_size, o.n_dis) == (64, 128, 5)
    assert (o.g_lr, o.d_lr, o.betas, o.lr_decay) == (2e-4, 2e-4, (0.0, 0.9), "linear")
    assert cfg.iterations == 50_000
    assert (cfg.model.z_dim, cfg.model.g_channels, cfg.model.d_channels) == (128, 256, 128)
    assert to_dict(compose_config("experiment=sngan_resnet", tiny=False)) == to_dict(cfg)


@pytest.mark.parametrize("setting", sorted(PAPER_SETTINGS))
def test_paper_settings_a_to_f(setting):
    cfg = compose_config(f"experiment=dcgan_{setting}", tiny=False)
    lr, b1, b2, n_dis = PAPER_SETTINGS[setting]
    assert (cfg.optim.g_lr, cfg.optim.d_lr) == (lr, lr)
    assert cfg.optim.betas == (b1, b2)
    assert cfg.optim.n_dis == n_dis
    assert cfg.model.name == "dcgan" and cfg.iterations == 100_000
    assert (cfg.optim.d_batch_size, cfg.optim.g_batch_size) == (64, 64)


def test_table2_standard_cnn_is_setting_c():
    c = compose_config("experiment=sngan_dcgan", tiny=False)
    assert to_dict(c) == to_dict(compose_config("experiment=dcgan_C", tiny=False))
    assert (c.model.name, c.model.g_channels, c.model.d_channels) == ("dcgan", 512, 64)


def test_conditional_preset():
    cfg = compose_config("experiment=sngan_resnet_cond", tiny=False)
    assert cfg.model.num_classes == 10 and cfg.model.name == "resnet"
    assert cfg.optim.n_dis == 5


def test_command_line_overrides_reach_typed_fields():
    cfg = compose_config("optim.betas=[0.5,0.999]", "optim.n_dis=3", "amp=true")
    assert cfg.optim.betas == (0.5, 0.999) and isinstance(cfg.optim.betas, tuple)
    assert cfg.optim.n_dis == 3 and cfg.amp is True


def test_dict_round_trip_and_unknown_keys():
    cfg = compose_config()
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)
    data = to_dict(cfg)
    data["optim"]["n_critic"] = 5
    with pytest.raises(ConfigError, match=r"optim\.n_critic"):
        from_dict(data)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.n_dis=0", "optim.n_dis=0 is not valid: must be an integer >= 1"),
        ("optim.g_lr=-1", "optim.g_lr=-1.0 is not valid: must be a finite number > 0"),
        (
            "optim.betas=[1.5,0.9]",
            "optim.betas=[1.5, 0.9] is not valid: must be two numbers in [0, 1)",
        ),
        ("model.num_classes=-1", "model.num_classes=-1 is not valid: must be >= 0"),
        ("data.source=folder", "data.root=None is not valid: data.source=folder needs data.root"),
    ],
)
def test_validate_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:  # compose_config validates too
        cfg = compose_config(override)
        if override.startswith("data.source"):
            cfg.data.root = None
        validate(cfg)
    assert message in str(err.value)

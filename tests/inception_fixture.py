"""A stand-in for torch-fidelity's Inception weights file: the real keys and shapes, random values.

The real file (``weights-inception-2015-12-05-6726825d.pth``, ~92 MB) cannot be downloaded in
tests. torch-fidelity loads it with ``torch.load`` and a strict ``load_state_dict`` into
``FeatureExtractorInceptionV3``, so a file made from that class's own ``state_dict()`` goes through
the exact same code path; only the numbers it produces are meaningless.
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch_fidelity import feature_extractor_inceptionv3 as fe_inception
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """FeatureExtractorInceptionV3's state dict (every key, shape and dtype), randomly filled."""
    # The constructor loads weights itself; skip that to read off the architecture's keys.
    with (
        mock.patch.object(fe_inception, "load_state_dict_from_url", return_value={}),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"),
    ):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                # He init keeps activations at unit scale through ~90 conv + ReLU layers, so the
                # 2048-d features neither vanish nor blow up.
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                # Eval-mode BN divides by sqrt(running_var + eps): keep it positive and near 1.
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
        # Logits of order one keep Inception's softmax away from one-hot (IS = exp(KL) finite and
        # above 1) and away from underflow (log of a zero marginal would give NaN).
        scale = 1.0 / math.sqrt(net.fc.in_features)
        net.fc.weight.normal_(0.0, scale, generator=gen)
        net.fc.bias.normal_(0.0, 0.1, generator=gen)
    return {k: v.clone() for k, v in net.state_dict().items()}


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save random Inception weights where ``feature_extractor_weights_path`` can load them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_inception_state_dict(seed), path)
    return path

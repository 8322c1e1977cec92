"""sngan: Spectral Normalization GANs (Miyato et al., ICLR 2018) on CIFAR-10."""

from sngan.spectral_norm import (
    SpectralNorm,
    apply_spectral_norm,
    exact_sigmas,
    no_power_iteration,
    remove_spectral_norm,
    sigmas,
    spectral_norm,
)

__version__ = "0.1.0"

__all__ = [
    "SpectralNorm",
    "__version__",
    "apply_spectral_norm",
    "exact_sigmas",
    "no_power_iteration",
    "remove_spectral_norm",
    "sigmas",
    "spectral_norm",
]

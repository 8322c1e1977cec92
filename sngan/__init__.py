"""sngan: Spectral Normalization GANs (Miyato et al., ICLR 2018) in PyTorch.

Nothing is imported here: ``import sngan.config``, which the command line needs to refuse a typo,
must not pay for torch. The spectral norm is ``sngan.spectral_norm``; docs/architecture.md maps
the modules.
"""

__version__ = "0.1.0"

"""Spectral normalisation (Miyato et al., ICLR 2018), sngan's own implementation.

``spectral_norm(module)`` replaces ``module.weight`` by ``W / sigma(W)``, where sigma is
estimated by power iteration exactly as in the paper's Algorithm 1 and the official
Chainer code: ``v = normalize(W^T u)``, then ``u = normalize(W v)``, then
``sigma = u^T W v``. The raw weight lives on as the parameter ``weight_orig``; ``weight_u``
and ``weight_v`` are persistent buffers (the keys of torch's legacy
``torch.nn.utils.spectral_norm``, whose checkpoints therefore load as they are) and
``weight_sigma`` holds the latest estimate for logging.

How it differs from torch's two versions, and why:

* The module's class is swapped for a subclass (``isinstance`` still holds) whose
  ``forward`` advances u and v once per training forward and whose ``weight`` property
  computes ``W / sigma`` on each read. The subclass pickles as "the original class plus
  state", so ``torch.save(model)`` and ``copy.deepcopy`` work before and after a forward.
* u and v are warmed up at registration (and after re-initialisation), so the weight is
  normalised before the first training step, also in eval mode.
* sigma is clamped below by ``eps`` and u, v are only replaced when the new vector has a
  non-zero norm, so a zero weight gives zeros instead of NaN and never poisons u and v.
* The power iteration and the division run in float32 with autocast disabled; u and v
  stay float32 under bf16 autocast.
* Options from the official Chainer code and TF-GAN: ``target`` (a norm other than 1),
  ``at_most`` (``W / max(1, sigma / target)``) and ``learnable_scale`` (a scale parameter
  initialised to the exact sigma, Chainer's ``use_gamma``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SpectralNorm",
    "apply_spectral_norm",
    "exact_sigmas",
    "is_spectral_normalized",
    "no_power_iteration",
    "remove_spectral_norm",
    "sigmas",
    "spectral_norm",
]

# Power iterations run at registration and re-initialisation. Layers at their default
# initialisation have s2/s1 of 0.96-0.996; the sigma estimate (not the vectors) is then
# within 1 % of the true value after a few dozen iterations.
WARMUP_ITERATIONS = 50

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
DEFAULT_LAYER_TYPES = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    *_TRANSPOSED,
    nn.Embedding,
)


@dataclass
class _SNOptions:
    dim: int
    n_power_iterations: int
    eps: float
    target: float
    at_most: bool
    learnable_scale: bool


def _as_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """(out, in...) weight -> (weight.shape[dim], rest) matrix with ``dim`` first."""
    if dim != 0:
        weight = weight.movedim(dim, 0)
    return weight.reshape(weight.shape[0], -1)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half-precision weights are normalised in float32."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    # The power iteration and W / sigma must not run in bf16: the normalised weight is
    # cast by the layer's own op afterwards, as for any other float32 parameter.
    if device_type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _SpectralNormMixin:
    """Behaviour added to a module whose parameters are spectrally normalised."""

    _sn: dict[str, _SNOptions]
    _sn_update: bool

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and self._sn_update:
            for name in self._sn:
                self._sn_power_iteration(name, self._sn[name].n_power_iterations)
        return super().forward(*args, **kwargs)

    # -- the normalised weight ---------------------------------------------------------

    def _sn_weight(self, name: str) -> torch.Tensor:
        opts = self._sn[name]
        w = getattr(self, name + "_orig")
        with _autocast_off(w.device.type):
            w = w.to(_compute_dtype(w))
            if w.ndim == 1:
                sigma = torch.linalg.vector_norm(w)
            else:
                u = getattr(self, name + "_u").to(w.dtype)
                v = getattr(self, name + "_v").to(w.dtype)
                if torch.is_grad_enabled():
                    # The next training forward updates u and v in place; clones keep the
                    # values this graph saved for backward (e.g. D(real) then D(fake)).
                    u, v = u.clone(), v.clone()
                sigma = torch.dot(u, torch.mv(_as_matrix(w, opts.dim), v))
            sigma = sigma.clamp_min(opts.eps)
            scale = getattr(self, name + "_gamma") if opts.learnable_scale else opts.target
            if opts.at_most:
                return w / torch.clamp_min(sigma / scale, 1.0)
            return w * (scale / sigma)

    @torch.no_grad()
    def _sn_power_iteration(self, name: str, n: int) -> None:
        opts = self._sn[name]
        w = getattr(self, name + "_orig")
        sigma_buf = getattr(self, name + "_sigma")
        with _autocast_off(w.device.type):
            if w.ndim == 1:
                sigma_buf.copy_(torch.linalg.vector_norm(w.to(_compute_dtype(w))))
                return
            if n == 0:
                return
            u = getattr(self, name + "_u")
            v = getattr(self, name + "_v")
            w_mat = _as_matrix(w.detach().to(u.dtype), opts.dim)
            for _ in range(n):
                # Algorithm 1 of the paper: v from u first, then u from v.
                v_new = torch.mv(w_mat.t(), u)
                v_norm = torch.linalg.vector_norm(v_new)
                # Keep the old vector where the new one vanishes (a zero weight), so a
                # weight that later becomes non-zero is still normalised correctly.
                v.copy_(torch.where(v_norm > opts.eps, v_new / v_norm.clamp_min(opts.eps), v))
                wv = torch.mv(w_mat, v)
                sigma = torch.linalg.vector_norm(wv)
                u.copy_(torch.where(sigma > opts.eps, wv / sigma.clamp_min(opts.eps), u))
            # u^T W v with the new u equals ||W v||: the estimate the next forward divides by.
            sigma_buf.copy_(torch.dot(u, wv))

    @torch.no_grad()
    def _sn_warm_up(self, name: str) -> None:
        """Fresh random u, v and enough power iterations to make sigma accurate at once."""
        opts = self._sn[name]
        w = getattr(self, name + "_orig")
        if w.ndim > 1:
            h, wd = _as_matrix(w, opts.dim).shape
            u = getattr(self, name + "_u", None)
            if u is None or u.numel() != h or getattr(self, name + "_v").numel() != wd:
                kw = {"device": w.device, "dtype": _compute_dtype(w)}
                self.register_buffer(name + "_u", torch.empty(h, **kw))
                self.register_buffer(name + "_v", torch.empty(wd, **kw))
            getattr(self, name + "_u").copy_(F.normalize(torch.randn(h), dim=0, eps=opts.eps))
            getattr(self, name + "_v").copy_(F.normalize(torch.randn(wd), dim=0, eps=opts.eps))
        if w.is_meta:  # shapes without values (counting parameters): nothing to iterate on
            return
        self._sn_power_iteration(name, WARMUP_ITERATIONS)
        if opts.learnable_scale:
            getattr(self, name + "_gamma").copy_(_exact_sigma(w, opts.dim))

    @torch.no_grad()
    def _sn_refresh_sigma(self, name: str) -> None:
        """Recompute the logged estimate from the current u, v and W without advancing them."""
        w = getattr(self, name + "_orig")
        w = w.to(_compute_dtype(w))
        opts = self._sn[name]
        if w.ndim == 1:
            value = torch.linalg.vector_norm(w)
        else:
            u, v = getattr(self, name + "_u").to(w.dtype), getattr(self, name + "_v").to(w.dtype)
            value = torch.dot(u, torch.mv(_as_matrix(w, opts.dim), v))
        getattr(self, name + "_sigma").copy_(value)

    # -- assignment, re-initialisation, serialisation ----------------------------------

    def __setattr__(self, key: str, value: Any) -> None:
        sn = self.__dict__.get("_sn")
        if sn is not None and key in sn:
            # Assigning a new weight replaces the raw weight and re-warms u and v; torch's
            # parametrisation keeps stale u, v here.
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"cannot assign {type(value).__name__} to '{key}': expected a tensor"
                )
            if isinstance(value, nn.Parameter):
                super().__setattr__(key + "_orig", value)
            else:
                orig = getattr(self, key + "_orig")
                if value.shape != orig.shape:
                    raise ValueError(
                        f"cannot assign a tensor of shape {tuple(value.shape)} to '{key}' "
                        f"of shape {tuple(orig.shape)}; assign an nn.Parameter to change its shape"
                    )
                with torch.no_grad():
                    orig.copy_(value)
            self._sn_warm_up(key)
            return
        super().__setattr__(key, value)

    def reset_parameters(self) -> None:
        # The layer's own reset initialises `self.weight` in place; point that name at the
        # raw parameter while it runs (torch's parametrisation silently drops the init).
        sn = self.__dict__["_sn"]
        self.__dict__["_sn_raw"] = True
        try:
            super().reset_parameters()
        finally:
            del self.__dict__["_sn_raw"]
        for name in sn:
            self._sn_warm_up(name)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        rewarm = []
        for name in self._sn:
            # torch.nn.utils.parametrizations.spectral_norm keys -> ours (= legacy keys).
            par = f"{prefix}parametrizations.{name}."
            for theirs, ours in (("original", "_orig"), ("0._u", "_u"), ("0._v", "_v")):
                if par + theirs in state_dict:
                    state_dict[prefix + name + ours] = state_dict.pop(par + theirs)
            # A plain, un-normalised weight (a checkpoint without spectral norm).
            if prefix + name in state_dict and prefix + name + "_orig" not in state_dict:
                state_dict[prefix + name + "_orig"] = state_dict.pop(prefix + name)
                if prefix + name + "_u" not in state_dict:
                    rewarm.append(name)
                    for suffix in ("_u", "_v"):
                        buf = getattr(self, name + suffix, None)
                        if buf is not None:
                            state_dict[prefix + name + suffix] = buf
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in self._sn:
            if name in rewarm:
                self._sn_warm_up(name)
            else:
                self._sn_refresh_sigma(name)

    def __reduce_ex__(self, protocol: int) -> tuple:
        # Pickle (torch.save, deepcopy) as the original class plus state: the generated
        # subclass is rebuilt on load, so no dynamic class needs to be importable.
        base = type(self).__mro__[2]
        return (_rebuild, (base, tuple(self._sn)), self.__getstate__())

    def extra_repr(self) -> str:
        base = super().extra_repr()
        extra = f"spectral_norm={list(self._sn)}"
        return f"{base}, {extra}" if base else extra


def _rebuild(base: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    """Unpickling entry point for spectrally normalised modules."""
    cls = _sn_class(base, names)
    return cls.__new__(cls)


def _make_property(name: str) -> property:
    def getter(self: _SpectralNormMixin) -> torch.Tensor:
        if self.__dict__.get("_sn_raw"):
            return getattr(self, name + "_orig")
        return self._sn_weight(name)

    return property(getter, doc=f"The spectrally normalised '{name}' (computed on each read).")


_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _sn_class(base: type[nn.Module], names: tuple[str, ...]) -> type:
    key = (base, tuple(sorted(names)))
    if key not in _CLASSES:
        attrs = {n: _make_property(n) for n in key[1]}
        attrs["__module__"] = base.__module__
        attrs["__qualname__"] = base.__qualname__
        _CLASSES[key] = type(base.__name__, (_SpectralNormMixin, base), attrs)
    return _CLASSES[key]


def _base_class(module: nn.Module) -> type[nn.Module]:
    return type(module).__mro__[2] if isinstance(module, _SpectralNormMixin) else type(module)


def _exact_sigma(weight: torch.Tensor, dim: int) -> torch.Tensor:
    w = weight.detach().to(_compute_dtype(weight))
    if w.ndim == 1:
        return torch.linalg.vector_norm(w)
    return torch.linalg.matrix_norm(_as_matrix(w, dim), ord=2)


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    target: float = 1.0,
    at_most: bool = False,
    learnable_scale: bool = False,
) -> nn.Module:
    """Spectrally normalise ``module.<name>`` in place and return ``module``.

    ``dim`` is the output dimension of the weight (0, or 1 for ConvTranspose layers); a
    weight of more than two dimensions is reshaped to a matrix with ``dim`` first, and a
    1-D weight is normalised as ``x / ||x||``. Each training-mode forward runs
    ``n_power_iterations`` steps (none in eval mode). ``target`` scales the normalised
    weight to that spectral norm; ``at_most`` only shrinks weights whose norm exceeds it;
    ``learnable_scale`` multiplies by a parameter ``<name>_gamma`` initialised to the
    exact spectral norm (instead of ``target``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"spectral_norm expects an nn.Module, got {type(module).__name__}")
    if not isinstance(n_power_iterations, int) or n_power_iterations < 0:
        raise ValueError(f"n_power_iterations must be an integer >= 0, got {n_power_iterations!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target!r}")
    sn = module.__dict__.get("_sn", {})
    if name in sn:
        raise ValueError(
            f"parameter '{name}' of {_base_class(module).__name__} is already normalised"
        )
    weight = module._parameters.get(name)
    if weight is None:
        params = sorted(n for n, p in module.named_parameters(recurse=False) if p is not None)
        raise ValueError(
            f"{_base_class(module).__name__} has no parameter '{name}'; its parameters: {params}"
        )
    if dim is None:
        dim = 1 if isinstance(module, _TRANSPOSED) else 0
    if weight.ndim > 1 and not -weight.ndim <= dim < weight.ndim:
        raise ValueError(
            f"dim={dim} is out of range for '{name}' of shape {tuple(weight.shape)} "
            f"(valid: {-weight.ndim} to {weight.ndim - 1})"
        )
    dim = dim % max(weight.ndim, 1)

    names = (*sn, name)
    del module._parameters[name]
    module.__class__ = _sn_class(_base_class(module), names)
    module.__dict__["_sn"] = {
        **sn,
        name: _SNOptions(dim, n_power_iterations, eps, float(target), at_most, learnable_scale),
    }
    module.__dict__["_sn_update"] = module.__dict__.get("_sn_update", True)
    module.register_parameter(name + "_orig", weight)
    kw = {"device": weight.device, "dtype": _compute_dtype(weight)}
    # The estimate for logging: not part of the state dict (torch's checkpoints lack it,
    # and it is recomputed from u, v and W on load).
    module.register_buffer(name + "_sigma", torch.ones((), **kw), persistent=False)
    if learnable_scale:
        module.register_parameter(name + "_gamma", nn.Parameter(torch.ones((), **kw)))
    module._sn_warm_up(name)
    return module


def remove_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake ``W / sigma`` into a plain parameter ``module.<name>`` and undo the normalisation."""
    if not is_spectral_normalized(module, name):
        raise ValueError(
            f"parameter '{name}' of {type(module).__name__} is not spectrally normalised"
        )
    with torch.no_grad():
        baked = module._sn_weight(name).detach().clone()
    orig = getattr(module, name + "_orig")
    for suffix in ("_orig", "_u", "_v", "_sigma", "_gamma"):
        module._parameters.pop(name + suffix, None)
        module._buffers.pop(name + suffix, None)
    rest = {k: v for k, v in module._sn.items() if k != name}
    if rest:
        module.__class__ = _sn_class(_base_class(module), tuple(rest))
        module.__dict__["_sn"] = rest
    else:
        module.__class__ = _base_class(module)
        for key in ("_sn", "_sn_update"):
            module.__dict__.pop(key, None)
    module.register_parameter(name, nn.Parameter(baked.to(orig.dtype), orig.requires_grad))
    return module


def is_spectral_normalized(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` is normalised by this module (not by torch's)."""
    return isinstance(module, _SpectralNormMixin) and name in module._sn


class SpectralNorm(nn.Module):
    """A wrapper layer in the manner of Keras' ``SpectralNormalization``."""

    def __init__(self, layer: nn.Module, n_power_iterations: int = 1, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(getattr(layer, "weight", None), nn.Parameter):
            raise TypeError(
                f"SpectralNorm needs a layer with a 'weight' parameter (Linear, ConvNd, "
                f"ConvTransposeNd, Embedding); {type(layer).__name__} has none"
            )
        self.layer = spectral_norm(layer, n_power_iterations=n_power_iterations, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer(*args, **kwargs)


def _default_filter(module: nn.Module, param_name: str) -> bool:
    return isinstance(module, DEFAULT_LAYER_TYPES) and param_name == "weight"


def apply_spectral_norm(
    model: nn.Module,
    name_filter: Callable[[str], bool] | None = None,
    n_power_iterations: int = 1,
    **kwargs: Any,
) -> list[str]:
    """Normalise every matching weight of ``model``; return their qualified names.

    The default takes the ``weight`` of Linear, Bilinear, Conv*, ConvTranspose* and
    Embedding layers, never a bias or a normalisation layer's parameter. A custom
    ``name_filter`` is called with each qualified parameter name (``"block1.conv.weight"``).
    """
    if name_filter is not None and not callable(name_filter):
        raise ValueError(
            f"name_filter must be a callable taking a parameter name, got {name_filter!r}"
        )
    targets = []
    for mod_name, mod in model.named_modules():
        for p_name, p in mod._parameters.items():
            if p is None:
                continue
            qualified = f"{mod_name}.{p_name}" if mod_name else p_name
            take = name_filter(qualified) if name_filter else _default_filter(mod, p_name)
            if take:
                targets.append((mod, p_name, qualified))
    for mod, p_name, _ in targets:
        spectral_norm(mod, p_name, n_power_iterations=n_power_iterations, **kwargs)
    return [q for _, _, q in targets]


def _normalised(model: nn.Module) -> Iterator[tuple[str, _SpectralNormMixin, str]]:
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _SpectralNormMixin):
            for name in mod._sn:
                yield (f"{mod_name}.{name}" if mod_name else name), mod, name


def sigma_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live sigma-estimate buffer of every normalised parameter, by qualified name."""
    return {q: getattr(m, n + "_sigma") for q, m, n in _normalised(model)}


def sigmas(model: nn.Module) -> dict[str, float]:
    """Current sigma estimate of every normalised parameter (no extra computation, one sync)."""
    tensors = sigma_tensors(model)
    if not tensors:
        return {}
    values = torch.stack([t.detach().float() for t in tensors.values()]).tolist()
    return dict(zip(tensors, values, strict=True))


@torch.no_grad()
def exact_sigmas(model: nn.Module) -> dict[str, float]:
    """True largest singular value of every normalised parameter's matrix (for diagnostics)."""
    return {
        q: float(_exact_sigma(getattr(m, n + "_orig"), m._sn[n].dim))
        for q, m, n in _normalised(model)
    }


@contextlib.contextmanager
def no_power_iteration(model: nn.Module) -> Iterator[None]:
    """Run training-mode forwards without advancing u and v (e.g. D during the G step).

    By default every training forward advances them, as the paper's code does.
    """
    mods = [m for m in model.modules() if isinstance(m, _SpectralNormMixin)]
    before = [m._sn_update for m in mods]
    for m in mods:
        m.__dict__["_sn_update"] = False
    try:
        yield
    finally:
        for m, b in zip(mods, before, strict=True):
            m.__dict__["_sn_update"] = b

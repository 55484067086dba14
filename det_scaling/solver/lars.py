"""LARS and LARC (layer-wise adaptive rate scaling) as one multi-tensor optimizer.

For each parameter ``w`` with gradient ``g`` (You, Gitman, Ginsburg 2017; NVIDIA apex's LARC)::

    d     = g + wd * w
    trust = tc * ||w|| / (||g|| + wd * ||w|| + eps)    (1 where ||w|| or ||g|| is 0)
    trust = min(trust / lr, 1)                         (clip=True: LARC, apex's "clip" mode)
    buf   = momentum * buf + trust * d
    w    -= lr * buf                    (Nesterov: w -= lr * (trust * d + momentum * buf))

A parameter group with ``lars_exclude=True`` keeps trust 1 (plain momentum SGD); the builder puts
biases and normalization parameters there, with no weight decay, as the large-batch papers do.

The LR multiplies the buffer, as in torch's SGD and apex (the paper's ``v = m * v + lr * trust
* d; w -= v`` agrees while the LR is constant). One difference from apex on purpose: for a
parameter whose gradient is all zero, apex skips the weight decay as well, while here
``d = wd * w`` with trust 1 (the formula above, unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor

from det_scaling.errors import ConfigError

__all__ = ["LARS"]

# On CPU, each multi-tensor op walks its whole tensor list, so a step over ResNet-50's 100 MB of
# parameters would stream them from memory once per op. Applying all ops to a few MiB of tensors
# at a time keeps them in cache between ops (measured 10-20% faster for ResNet-50 here; slicing
# the large tensors as well was slower); on accelerators the lists are not split, as there
# fewer, larger kernels are what counts.
_CPU_CHUNK_BYTES = 2 * 1024 * 1024
# Norms of half-precision tensors are taken in float32: a sum of squares overflows float16.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class LARS(torch.optim.Optimizer):
    """Momentum SGD with layer-wise adaptive rate scaling (LARS) or, with ``clip=True``, apex's
    clipped variant (LARC). See the module docstring for the update.

    ``step()`` uses multi-tensor (``torch._foreach_*``) operations and never reads a tensor value
    on the host (no ``.item()``, no branch on a tensor), so it does not synchronize with the
    device, as CUDA-graph capture requires (capture after a first eager step has created the
    momentum buffers). The learning rates are plain Python numbers read from the parameter
    groups at each step, so a captured graph keeps the LR it was captured with.

    Args:
        params: parameters or parameter groups. Groups may override any argument below and set
            ``lars_exclude=True`` to skip the adaptation (trust 1) for their parameters.
        lr: global learning rate (gamma in the paper).
        momentum: momentum factor (no dampening).
        weight_decay: L2 penalty (beta in the paper), added to the gradient before scaling.
        trust_coefficient: eta in the paper (0.001 there; apex LARC's default is 0.02).
        eps: added to the denominator of the trust ratio.
        clip: LARC's clipping: the effective LR ``trust * lr`` never exceeds ``lr``.
        nesterov: Nesterov momentum.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.02,
        eps: float = 1e-8,
        clip: bool = False,
        nesterov: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) or not lr >= 0.0:
            raise ConfigError(f"lr must be a non-negative number, got {lr!r}")
        if not momentum >= 0.0:
            raise ConfigError(f"momentum must be >= 0, got {momentum}")
        if not weight_decay >= 0.0:
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
        if not trust_coefficient > 0.0:
            raise ConfigError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        if not eps >= 0.0:
            raise ConfigError(f"eps must be >= 0, got {eps}")
        if nesterov and momentum == 0.0:
            raise ConfigError("nesterov momentum needs momentum > 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "clip": clip,
            "nesterov": nesterov,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Optimizers pickled before a group key existed get its default.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs one update of every parameter that has a gradient; returns the closure's
        loss when a closure is given (re-evaluated with gradients enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for params, grads, bufs in self._buckets(group):
                _lars_update(
                    params,
                    grads,
                    bufs,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    weight_decay=group["weight_decay"],
                    trust_coefficient=group["trust_coefficient"],
                    eps=group["eps"],
                    clip=group["clip"],
                    nesterov=group["nesterov"],
                    adapt=not group["lars_exclude"],
                )
        return loss

    def _buckets(
        self, group: dict[str, Any]
    ) -> Iterable[tuple[list[Tensor], list[Tensor], list[Tensor] | None]]:
        """The group's parameters that have gradients, split by (device, dtype) because
        multi-tensor ops and ``torch.stack`` need one of each, with their gradients and momentum
        buffers (None without momentum); on CPU also split into cache-sized chunks."""
        with_momentum = group["momentum"] != 0.0
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("LARS does not support sparse gradients")
            buckets.setdefault((param.device, param.dtype), []).append(param)
        for (device, _), params in buckets.items():
            chunk_bytes = _CPU_CHUNK_BYTES if device.type == "cpu" else None
            for chunk in _chunks(params, chunk_bytes):
                # Every parameter here has a gradient (the others were skipped above).
                grads = [param.grad for param in chunk if param.grad is not None]
                bufs = [self._momentum_buffer(param) for param in chunk] if with_momentum else None
                yield chunk, grads, bufs

    def _momentum_buffer(self, param: Tensor) -> Tensor:
        state = self.state[param]
        if "momentum_buffer" not in state:
            # Zeros rather than a copy of the first update (as torch's SGD does): the first
            # step's momentum * 0 + d gives the same buffer, and every step runs the same ops.
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def _chunks(params: list[Tensor], chunk_bytes: int | None) -> Iterable[list[Tensor]]:
    if chunk_bytes is None:
        yield params
        return
    chunk: list[Tensor] = []
    size = 0
    for param in params:
        nbytes = param.numel() * param.element_size()
        if chunk and size + nbytes > chunk_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(param)
        size += nbytes
    if chunk:
        yield chunk


def _trust_ratios(
    params: list[Tensor],
    grads: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    clip: bool,
) -> Tensor:
    """One trust ratio per parameter, as a 1-D tensor on the parameters' device (computed there,
    without reading any value back)."""
    dtype = torch.float32 if params[0].dtype in _LOW_PRECISION else None
    # One multi-tensor call and one stack for both norms: on CPU each small op costs microseconds.
    norms = torch.stack(torch._foreach_norm(params + grads, 2, dtype=dtype)).view(2, -1)
    weight_norms, grad_norms = norms.unbind(0)
    denominator = torch.add(grad_norms, weight_norms, alpha=weight_decay).add_(eps)
    trust = weight_norms.mul(trust_coefficient).div_(denominator)
    if clip:
        # min(trust / lr, 1): at lr 0 nothing moves, and trust 1 avoids 0 / 0.
        trust = trust.div_(lr).clamp_(max=1.0) if lr > 0 else torch.ones_like(trust)
    # A zero weight (fresh layer) or zero gradient leaves the update unscaled, as in apex.
    return trust.masked_fill_(norms.amin(0) == 0, 1.0)


def _add_scaled_update(
    targets: list[Tensor],
    params: list[Tensor],
    grads: list[Tensor],
    trust: Tensor | None,
    *,
    weight_decay: float,
    scale: float,
) -> None:
    """``targets += scale * trust * (grads + weight_decay * params)``, tensor by tensor.

    The weight-decay term is added first, so ``targets`` may be ``params`` themselves."""
    if trust is None:
        if weight_decay != 0.0:
            torch._foreach_add_(targets, params, alpha=scale * weight_decay)
        torch._foreach_add_(targets, grads, alpha=scale)
        return
    # Per-tensor factors as 0-d tensors: the ratios never leave the device.
    if weight_decay != 0.0:
        torch._foreach_addcmul_(targets, params, trust.mul(scale * weight_decay).unbind(0))
    grad_factors = trust if scale == 1.0 else trust.mul(scale)
    torch._foreach_addcmul_(targets, grads, grad_factors.unbind(0))


def _lars_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    clip: bool,
    nesterov: bool,
    adapt: bool,
) -> None:
    """One LARS step on parameters that share a device and dtype (see the module docstring)."""
    trust = (
        _trust_ratios(
            params,
            grads,
            lr=lr,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            clip=clip,
        )
        if adapt
        else None
    )
    if bufs is None:  # no momentum: w -= lr * trust * d
        _add_scaled_update(params, params, grads, trust, weight_decay=weight_decay, scale=-lr)
        return
    # buf = momentum * buf + trust * d, without materializing d: fewer passes over memory.
    torch._foreach_mul_(bufs, momentum)
    _add_scaled_update(bufs, params, grads, trust, weight_decay=weight_decay, scale=1.0)
    if nesterov:
        _add_scaled_update(params, params, grads, trust, weight_decay=weight_decay, scale=-lr)
        torch._foreach_add_(params, bufs, alpha=-lr * momentum)
    else:
        torch._foreach_add_(params, bufs, alpha=-lr)

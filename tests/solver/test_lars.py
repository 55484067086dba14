"""LARS / LARC against plain per-parameter references, and its multi-tensor guarantees."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers.host_sync import host_reads_forbidden

import det_scaling  # noqa: F401  (compatibility layer before detectron2 is imported)
from det_scaling.solver import LARS
from det_scaling.solver import lars as lars_module

torch.set_num_threads(1)

SHAPES = [(7, 5), (13,), (3, 4, 2), (1,), (6, 6)]
# Gradient scales per tensor: the small ones make trust / lr exceed 1, so LARC's clip binds.
GRAD_SCALES = [1.0, 1e-3, 0.1, 10.0, 1e-4]
STEPS = 50


def _initial_params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in SHAPES]
    params[0].zero_()  # a zero-norm weight (a freshly zero-initialized layer)
    return params


def _gradients(step: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor | None]:
    """Random gradients for ``step``; tensor 1 gets an all-zero gradient every 7th step and
    tensor 2 no gradient at all every 5th step."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads: list[torch.Tensor | None] = [
        torch.randn(shape, generator=generator, dtype=dtype) * scale
        for shape, scale in zip(SHAPES, GRAD_SCALES, strict=True)
    ]
    if step % 7 == 3:
        grads[1] = torch.zeros(SHAPES[1], dtype=dtype)
    if step % 5 == 2:
        grads[2] = None
    return grads


def _nonzero_gradients(step: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor | None]:
    """:func:`_gradients` with the all-zero gradients replaced by small constant ones."""
    return [
        g if g is None or g.any() else torch.full_like(g, 1e-3) for g in _gradients(step, dtype)
    ]


def _lr(step: int) -> float:
    """An LR that changes every step, as under a scheduler."""
    return 0.1 * (1.0 + 0.5 * math.sin(step))


def reference_lars(
    params: list[torch.Tensor],
    steps: int,
    *,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    clip: bool,
    nesterov: bool,
    excluded: set[int],
) -> list[torch.Tensor]:
    """The update of the module docstring, one parameter at a time, with Python-number norms."""
    params = [p.clone() for p in params]
    bufs: dict[int, torch.Tensor] = {}
    for step in range(steps):
        lr = _lr(step)
        for i, grad in enumerate(_gradients(step)):
            if grad is None:
                continue
            param = params[i]
            d = grad + weight_decay * param
            weight_norm = param.norm().item()
            grad_norm = grad.norm().item()
            if i in excluded or weight_norm == 0.0 or grad_norm == 0.0:
                trust = 1.0
            else:
                trust = (
                    trust_coefficient * weight_norm / (grad_norm + weight_decay * weight_norm + eps)
                )
                if clip:
                    trust = min(trust / lr, 1.0)
            d = trust * d
            if momentum:
                bufs[i] = momentum * bufs.get(i, torch.zeros_like(param)) + d
                update = d + momentum * bufs[i] if nesterov else bufs[i]
            else:
                update = d
            params[i] = param - lr * update
    return params


def run_lars(
    params: list[torch.Tensor],
    steps: int,
    *,
    excluded: set[int] = frozenset(),
    gradients=_gradients,
    **options: object,
) -> tuple[list[torch.Tensor], LARS]:
    """``steps`` LARS steps on copies of ``params``, ``excluded`` ones in a lars_exclude group."""
    params = [p.clone().requires_grad_() for p in params]
    groups = [{"params": [p for i, p in enumerate(params) if i not in excluded]}]
    if excluded:
        groups.append({"params": [params[i] for i in excluded], "lars_exclude": True})
    optimizer = LARS(groups, lr=_lr(0), **options)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step)
        for param, grad in zip(params, gradients(step, params[0].dtype), strict=True):
            param.grad = grad
        optimizer.step()
    return [p.detach() for p in params], optimizer


def max_relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest, over tensors, of max |actual - expected| / max |expected|."""
    return max(
        ((a - e).abs().max() / e.abs().max().clamp_min(1e-300)).item()
        for a, e in zip(actual, expected, strict=True)
    )


OPTION_GRID = [
    dict(momentum=momentum, weight_decay=wd, clip=clip, nesterov=nesterov, excluded=excluded)
    for momentum, wd, clip, nesterov, excluded in itertools.product(
        (0.9, 0.0), (0.0, 1e-2), (False, True), (False, True), (frozenset(), frozenset({3, 4}))
    )
    if not (nesterov and momentum == 0.0)
]


@pytest.mark.parametrize(
    "options", OPTION_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_matches_float64_per_parameter_reference_over_50_steps(options: dict) -> None:
    options = dict(options, trust_coefficient=0.02, eps=1e-8)
    initial = _initial_params()
    actual, _ = run_lars(initial, STEPS, **options)
    expected = reference_lars(initial, STEPS, **options)
    assert max_relative_error(actual, expected) <= 1e-6
    assert max_relative_error(actual, initial) > 1e-3  # training moved the parameters


def test_cpu_chunking_gives_the_same_update(monkeypatch: pytest.MonkeyPatch) -> None:
    options = dict(momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-8)
    initial = _initial_params()
    whole, _ = run_lars(initial, 10, clip=True, **options)
    monkeypatch.setattr(lars_module, "_CPU_CHUNK_BYTES", 100)  # a few tensors per chunk
    chunked, _ = run_lars(initial, 10, clip=True, **options)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


def apex_larc_then_sgd(
    params: list[torch.Tensor], steps: int, *, momentum: float, weight_decay: float, tc: float
) -> list[torch.Tensor]:
    """apex's documented LARC (clip mode) wrapped around torch's SGD: for a parameter with
    non-zero weight and gradient norms, adaptive = tc * ||p|| / (||g|| + ||p|| * wd + eps),
    adaptive = min(adaptive / lr, 1), grad = (grad + wd * p) * adaptive; then SGD steps with its
    weight decay set to 0."""
    params = [p.clone().requires_grad_() for p in params]
    sgd = torch.optim.SGD(params, lr=_lr(0), momentum=momentum, weight_decay=0.0)
    for step in range(steps):
        lr = _lr(step)
        sgd.param_groups[0]["lr"] = lr
        with torch.no_grad():
            for param, grad in zip(params, _nonzero_gradients(step), strict=True):
                param.grad = grad
                if grad is None:
                    continue
                param_norm, grad_norm = param.norm(), grad.norm()
                if param_norm != 0 and grad_norm != 0:
                    adaptive = tc * param_norm / (grad_norm + param_norm * weight_decay + 1e-8)
                    adaptive = min(adaptive / lr, 1)
                    grad += weight_decay * param
                    grad *= adaptive
        sgd.step()
    return [p.detach() for p in params]


def test_clip_matches_apex_larc_formula_around_torch_sgd() -> None:
    # apex skips the weight decay of a parameter whose gradient is all zero, where this LARS
    # applies it unscaled (the formula): nonzero gradients compare the common ground.
    initial = _initial_params()
    expected = apex_larc_then_sgd(initial, STEPS, momentum=0.9, weight_decay=5e-4, tc=0.02)
    actual, _ = run_lars(
        initial,
        STEPS,
        gradients=_nonzero_gradients,
        momentum=0.9,
        weight_decay=5e-4,
        trust_coefficient=0.02,
        clip=True,
    )
    assert max_relative_error(actual, expected) <= 1e-6


def test_excluded_group_steps_like_torch_sgd() -> None:
    initial = _initial_params()
    actual, _ = run_lars(
        initial,
        20,
        excluded=set(range(len(SHAPES))),
        momentum=0.9,
        weight_decay=1e-2,
        nesterov=True,
    )
    params = [p.clone().requires_grad_() for p in initial]
    sgd = torch.optim.SGD(params, lr=_lr(0), momentum=0.9, weight_decay=1e-2, nesterov=True)
    for step in range(20):
        sgd.param_groups[0]["lr"] = _lr(step)
        for param, grad in zip(params, _gradients(step), strict=True):
            param.grad = grad
        sgd.step()
    assert max_relative_error(actual, [p.detach() for p in params]) <= 1e-12


def test_parameter_without_gradient_is_untouched_and_gets_no_state() -> None:
    frozen = torch.randn(4, requires_grad=True)
    trained = torch.randn(4, requires_grad=True)
    before = frozen.detach().clone()
    optimizer = LARS([frozen, trained], lr=0.1, weight_decay=1e-4)
    trained.grad = torch.randn(4)
    optimizer.step()
    assert torch.equal(frozen.detach(), before)
    assert frozen not in optimizer.state
    assert "momentum_buffer" in optimizer.state[trained]


def test_mixed_dtypes_in_one_group_update_as_separate_optimizers() -> None:
    generator = torch.Generator().manual_seed(3)
    tensors = {
        torch.float64: torch.randn(5, 3, generator=generator, dtype=torch.float64),
        torch.float32: torch.randn(8, generator=generator),
        torch.bfloat16: torch.randn(4, 4, generator=generator).bfloat16(),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.randn(6, generator=generator).cuda()

    seeds = {key: index for index, key in enumerate(tensors)}

    def train(subset: dict) -> dict:
        params = {key: t.clone().requires_grad_() for key, t in subset.items()}
        optimizer = LARS(list(params.values()), lr=0.05, weight_decay=1e-3, clip=True)
        for step in range(5):
            for key, param in params.items():
                step_gen = torch.Generator().manual_seed(step * 10 + seeds[key])
                param.grad = torch.randn(param.shape, generator=step_gen).to(param)
            optimizer.step()
        return {key: p.detach() for key, p in params.items()}

    together = train(tensors)
    for key, tensor in tensors.items():
        alone = train({key: tensor})[key]
        assert together[key].dtype == tensor.dtype
        assert torch.equal(together[key], alone)
        assert not torch.equal(alone, tensor)


def test_state_dict_round_trip_continues_identically() -> None:
    initial = _initial_params()
    options = dict(momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, clip=True)
    straight, _ = run_lars(initial, 20, excluded={3}, **options)

    halfway, optimizer = run_lars(initial, 10, excluded={3}, **options)
    saved = optimizer.state_dict()
    params = [p.clone().requires_grad_() for p in halfway]
    # Built with other settings: load_state_dict must restore the groups' own.
    resumed = LARS([{"params": params[:3] + params[4:]}, {"params": [params[3]]}], lr=1.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[1]["lars_exclude"] is True
    assert resumed.param_groups[0]["clip"] is True
    for step in range(10, 20):
        for group in resumed.param_groups:
            group["lr"] = _lr(step)
        for param, grad in zip(params, _gradients(step), strict=True):
            param.grad = grad
        resumed.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(straight, params, strict=True))


@pytest.mark.parametrize(
    "options",
    [
        dict(momentum=0.9, weight_decay=1e-4, clip=True),
        dict(momentum=0.9, weight_decay=1e-4, nesterov=True),
        dict(momentum=0.0, weight_decay=0.0),
    ],
)
def test_step_never_reads_a_tensor_value_on_the_host(options: dict) -> None:
    params = [p.float().requires_grad_() for p in _initial_params()]
    optimizer = LARS(
        [{"params": params[:3]}, {"params": params[3:], "lars_exclude": True}], lr=0.1, **options
    )
    for step in range(3):  # the first step creates the momentum buffers
        for param, grad in zip(params, _gradients(step, torch.float32), strict=True):
            param.grad = grad
        with host_reads_forbidden():
            optimizer.step()


@pytest.mark.cuda
def test_cuda_step_does_not_synchronize() -> None:
    params = [p.float().cuda().requires_grad_() for p in _initial_params()]
    optimizer = LARS(params, lr=0.1, weight_decay=1e-4, clip=True, nesterov=True)
    for step in range(3):
        for param, grad in zip(params, _gradients(step, torch.float32), strict=True):
            param.grad = None if grad is None else grad.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [
        dict(momentum=0.9, weight_decay=1e-4, clip=True),
        dict(momentum=0.9, weight_decay=1e-4, nesterov=True),
    ],
)
def test_cuda_step_captured_in_a_cuda_graph_replays_the_eager_steps(
    options: dict, dtype: torch.dtype
) -> None:
    """A step captured once in a CUDA graph and replayed on new gradients (copied into the
    captured ones) updates as the eager steps do: nothing in it needs the host. The LR is
    constant: a graph keeps the LR it was captured with."""
    steps, eager_steps = 8, 3  # the eager steps before capture create the momentum buffers
    # The tensors that have a gradient at every step (a captured step updates a fixed set).
    kept = [
        i for i in range(len(SHAPES)) if all(_gradients(s)[i] is not None for s in range(steps))
    ]
    initial = [_initial_params(torch.float32)[i].to("cuda", dtype) for i in kept]
    grads = [
        [_gradients(step, torch.float32)[i].to("cuda", dtype) for i in kept]
        for step in range(steps)
    ]

    eager = [p.clone().requires_grad_() for p in initial]
    eager_optimizer = LARS(eager, lr=0.1, **options)
    for step in range(steps):
        for param, grad in zip(eager, grads[step], strict=True):
            param.grad = grad.clone()
        eager_optimizer.step()

    graphed = [p.clone().requires_grad_() for p in initial]
    for param in graphed:
        param.grad = torch.zeros_like(param)
    optimizer = LARS(graphed, lr=0.1, **options)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for step in range(eager_steps):
            for param, grad in zip(graphed, grads[step], strict=True):
                param.grad.copy_(grad)
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        optimizer.step()
    before_replay = [p.detach().clone() for p in graphed]
    for step in range(eager_steps, steps):
        for param, grad in zip(graphed, grads[step], strict=True):
            param.grad.copy_(grad)
        graph.replay()
    torch.cuda.synchronize()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before_replay, graphed, strict=True))
    for a, b in zip(eager, graphed, strict=True):  # the same kernels: equal up to dtype's rounding
        torch.testing.assert_close(b.detach(), a.detach())


def test_rejects_settings_it_cannot_honour() -> None:
    param = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="nesterov"):
        LARS(param, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        LARS(param, lr=-1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(param, lr=0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="momentum must be"):
        LARS(param, lr=0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay must be"):
        LARS(param, lr=0.1, weight_decay=-1e-4)
    with pytest.raises(ValueError, match="eps must be"):
        LARS(param, lr=0.1, eps=-1e-8)
    param[0].grad = torch.ones(2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LARS(param, lr=0.1).step()


def test_defaults_are_momentum_0_9_no_weight_decay_trust_0_02_unclipped() -> None:
    initial = _initial_params()
    actual, _ = run_lars(initial, STEPS)
    expected = reference_lars(
        initial,
        STEPS,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.02,
        eps=1e-8,
        clip=False,
        nesterov=False,
        excluded=set(),
    )
    assert max_relative_error(actual, expected) <= 1e-6


def test_zero_lr_and_zero_eps_are_allowed_and_lr_0_moves_nothing_even_clipped() -> None:
    LARS([torch.ones(2, requires_grad=True)], lr=0.1, eps=0.0)
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    optimizer = LARS([weight], lr=0.0, clip=True, weight_decay=1e-2)
    weight.grad = torch.tensor([0.5, -0.5])
    optimizer.step()
    assert weight.detach().tolist() == [1.0, 2.0]


def test_without_momentum_no_buffer_is_kept() -> None:
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    optimizer = LARS([weight], lr=0.1, momentum=0.0)
    weight.grad = torch.tensor([0.5, -0.5])
    optimizer.step()
    assert "momentum_buffer" not in optimizer.state[weight]


@pytest.mark.parametrize("excluded", [False, True], ids=["lars", "excluded"])
def test_weight_decay_of_1_is_applied(excluded: bool) -> None:
    # momentum 0, lr 0.1, w = (1, 2), g = (0.5, 0.5): d = g + 1 * w = (1.5, 2.5).
    weight = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    optimizer = LARS(
        [{"params": [weight], "lars_exclude": excluded}],
        lr=0.1,
        momentum=0.0,
        weight_decay=1.0,
        eps=0.0,
    )
    weight.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    optimizer.step()
    # trust = 0.02 ||w|| / (||g|| + ||w||), or 1 when excluded.
    trust = 1.0 if excluded else 0.02 * math.sqrt(5) / (math.sqrt(0.5) + math.sqrt(5))
    expected = [1.0 - 0.1 * trust * 1.5, 2.0 - 0.1 * trust * 2.5]
    assert weight.detach().tolist() == pytest.approx(expected, rel=1e-12)


def test_float16_norms_are_taken_in_float32() -> None:
    # ||w|| = 1e5 overflows float16 (max 65504); trust = 0.02 * 1e5 / 10 = 200, so each
    # element moves by lr * trust * g = 0.1 * 200 * 1 = 20.
    weight = torch.full((100,), 1e4, dtype=torch.float16, requires_grad=True)
    optimizer = LARS([weight], lr=0.1, momentum=0.0)
    weight.grad = torch.ones(100, dtype=torch.float16)
    optimizer.step()
    assert torch.isfinite(weight).all()
    # float16 is spaced 8 apart around 1e4.
    assert weight.detach().float().tolist() == pytest.approx([9980.0] * 100, abs=4.0)


def test_state_saved_without_newer_group_keys_loads_with_their_defaults() -> None:
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    saved = LARS([weight], lr=0.1).state_dict()
    for key in ("lars_exclude", "clip", "nesterov"):
        del saved["param_groups"][0][key]  # as saved before these keys existed
    optimizer = LARS([weight], lr=0.1)
    optimizer.load_state_dict(saved)
    group = optimizer.param_groups[0]
    assert (group["lars_exclude"], group["clip"], group["nesterov"]) == (False, False, False)
    assert None not in group


def test_cpu_chunks_fill_up_to_the_byte_limit_in_order() -> None:
    # float32 tensors of 40, 60, 100, 4, 96, 40, 40 and 40 bytes, in chunks of at most 100.
    params = [torch.zeros(n) for n in (10, 15, 25, 1, 24, 10, 10, 10)]
    chunks = list(lars_module._chunks(params, 100))
    assert [len(chunk) for chunk in chunks] == [2, 1, 2, 2, 1]
    assert all(a is b for a, b in zip(itertools.chain(*chunks), params, strict=True))
    assert [len(chunk) for chunk in lars_module._chunks(params, None)] == [8]

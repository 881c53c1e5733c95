"""Workloads: a model, its optimizer, this peer's data shard and an evaluation.

Built-in names are listed in BUILTIN; anything else is `module:factory`, a
callable taking (shard_index, shard_count) and returning a Workload.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peer.config import search_current_directory


@dataclass
class Workload:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    # Returns the next (inputs, targets) batch of this peer's shard.
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # Returns (loss, accuracy) of the model on the held-out split.
    evaluate: Callable[[], tuple[float, float]]
    batch_size: int
    learning_rate: float


def _digits_mlp(shard_index: int, shard_count: int, **kwargs) -> Workload:
    from peer.workloads.digits import make_workload

    return make_workload(shard_index, shard_count, **kwargs)


def _digits_wide(shard_index: int, shard_count: int, **kwargs) -> Workload:
    from peer.workloads.digits import make_workload

    kwargs.setdefault("hidden", (3072, 3072))
    return make_workload(shard_index, shard_count, name="digits-wide", **kwargs)


BUILTIN: dict[str, Callable[..., Workload]] = {
    "digits-mlp": _digits_mlp,
    # ~9.7 M parameters: for transport and overlap measurements.
    "digits-wide": _digits_wide,
}


def load_workload(
    spec: str, shard_index: int = 0, shard_count: int = 1, learning_rate: float | None = None
) -> Workload:
    """Builds a built-in workload by name, or imports `module:factory`."""
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    if spec in BUILTIN:
        return check_workload(spec, BUILTIN[spec](shard_index, shard_count, **kwargs))
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(
            f"unknown workload {spec!r}: use one of {', '.join(BUILTIN)} or module:factory"
        )
    search_current_directory()
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"workload {spec!r}: cannot import {module_name!r}: {error}") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"workload {spec!r}: {module_name!r} has no factory {factory_name!r}")
    return check_workload(spec, factory(shard_index=shard_index, shard_count=shard_count, **kwargs))


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters peers exchange: those with requires_grad. Frozen ones
    (a fixed embedding, a pre-trained backbone) stay as the factory made them
    on every peer and are never sent."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def floating_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The buffers a late joiner takes from its neighbor with the model:
    floating-point ones (BatchNorm's running mean and variance). They are
    not exchanged while training: each peer keeps the statistics of its own
    data, as each does its own optimizer state."""
    return [(name, b) for name, b in model.named_buffers() if b.is_floating_point()]


def check_workload(spec: str, workload: object) -> Workload:
    """Refuses, with one clear line, what the trainer and the wire cannot
    carry, before anything starts (not as a crash of the training thread)."""
    if not isinstance(workload, Workload):
        raise ValueError(
            f"workload {spec!r}: the factory returned {type(workload).__name__}, "
            "not a peer.workloads.Workload"
        )
    parameters = trainable_parameters(workload.model)
    if not parameters:
        raise ValueError(f"workload {spec!r}: the model has no trainable parameters")
    for name, p in parameters:
        if p.device.type != "cpu":
            raise ValueError(
                f"workload {spec!r}: parameter {name} is on {p.device}; peers train on "
                "the CPU (build the model there)"
            )
        if p.dtype != torch.float32:
            raise ValueError(
                f"workload {spec!r}: parameter {name} is {str(p.dtype).removeprefix('torch.')}; "
                "updates are exchanged as float32 (call model.float())"
            )
        if p.layout != torch.strided:
            raise ValueError(f"workload {spec!r}: parameter {name} is not a dense tensor")
    for name, b in workload.model.named_buffers():
        if b.device.type != "cpu":
            raise ValueError(
                f"workload {spec!r}: buffer {name} is on {b.device}; peers train on the CPU"
            )
    return workload

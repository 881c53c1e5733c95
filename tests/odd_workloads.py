"""Workload factories (`--workload tests.odd_workloads:NAME`) that a peer
must refuse with a clear error, or handle, or survive the failure of."""

from __future__ import annotations

import torch

from peer.workloads import Workload
from peer.workloads.digits import load_split, make_workload


def float64(shard_index: int = 0, shard_count: int = 1, **kwargs) -> Workload:
    workload = make_workload(shard_index, shard_count, **kwargs)
    workload.model.double()
    return workload


def on_meta_device(shard_index: int = 0, shard_count: int = 1, **kwargs) -> Workload:
    workload = make_workload(shard_index, shard_count, **kwargs)
    workload.model.to("meta")  # not the CPU, and available in every torch build
    return workload


def not_a_workload(shard_index: int = 0, shard_count: int = 1, **kwargs) -> object:
    return {"model": None}


class _WithUnused(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.unused = torch.nn.Parameter(torch.zeros(3))  # never reached by the loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def frozen_and_unused(shard_index: int = 0, shard_count: int = 1, **kwargs) -> Workload:
    """digits-mlp whose first layer is frozen (requires_grad False) and which
    has a trainable parameter the loss never reaches (its gradient is None)."""
    workload = make_workload(shard_index, shard_count, **kwargs)
    workload.model[0].weight.requires_grad_(False)
    workload.model = _WithUnused(workload.model)
    workload.optimizer = torch.optim.SGD(
        [p for p in workload.model.parameters() if p.requires_grad], lr=workload.learning_rate
    )
    return workload


FAIL_AT_STEP = 150


def fails_at_step_150(shard_index: int = 0, shard_count: int = 1, **kwargs) -> Workload:
    """digits-mlp whose data source raises at its 150th batch."""
    workload = make_workload(shard_index, shard_count, **kwargs)
    next_batch, taken = workload.next_batch, 0

    def failing_next_batch():
        nonlocal taken
        taken += 1
        if taken >= FAIL_AT_STEP:
            raise RuntimeError("the data source went away")
        return next_batch()

    workload.next_batch = failing_next_batch
    return workload


def batchnorm(shard_index: int = 0, shard_count: int = 1, **kwargs) -> Workload:
    """digits-mlp behind a BatchNorm layer on pixel values 100..116:
    evaluated with fresh running statistics (mean 0, variance 1) instead of
    the trained ones, the model is far off."""
    workload = make_workload(shard_index, shard_count, **kwargs)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(64), *workload.model)
    _, x_test, _, y_test = load_split()
    test_x, test_y = torch.from_numpy(x_test) * 16.0 + 100.0, torch.from_numpy(y_test)
    next_batch = workload.next_batch

    def raw_batch() -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = next_batch()
        return inputs * 16.0 + 100.0, targets

    def evaluate() -> tuple[float, float]:
        model.eval()  # the running statistics, not the batch's
        try:
            with torch.no_grad():
                logits = model(test_x)
            accuracy = (logits.argmax(dim=1) == test_y).float().mean()
            return float(workload.loss_fn(logits, test_y)), float(accuracy)
        finally:
            model.train()

    workload.model, workload.next_batch, workload.evaluate = model, raw_batch, evaluate
    workload.optimizer = torch.optim.SGD(model.parameters(), lr=workload.learning_rate)
    return workload

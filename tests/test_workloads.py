"""The built-in workloads: what a peer trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peer.workloads import load_workload
from peer.workloads.digits import load_split


@pytest.mark.parametrize("shard", [(0, 1), (2, 4)])
def test_batches_walk_through_successive_permutations_of_the_shard(shard):
    index, count = shard
    workload = load_workload("digits-mlp", index, count)
    x_train, _, y_train, _ = load_split()
    shard_x, shard_y = x_train[index::count], y_train[index::count]
    # The order the workload promises: shuffles of the shard, one after the
    # other, from the shard's own seed, cut into batches across their joins.
    rng = np.random.default_rng(1000 + index)
    order = np.concatenate([rng.permutation(len(shard_x)) for _ in range(4)])
    batch = workload.batch_size
    for b in range(3 * len(shard_x) // batch):
        x, y = workload.next_batch()
        expected = order[b * batch : (b + 1) * batch]
        assert torch.equal(x, torch.from_numpy(shard_x[expected]))
        assert torch.equal(y, torch.from_numpy(shard_y[expected]))

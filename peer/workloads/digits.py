"""scikit-learn's 8x8 digits with an MLP: small enough for a laptop cluster,
hard enough that 95% test accuracy means the peers really trained together.

Every peer builds the model right after `torch.manual_seed(0)`, so all start
from the same weights; peer i of N trains on the round-robin shard X[i::N].
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from peer.workloads import Workload


def _cache_path() -> Path:
    root = Path(os.environ.get("DASGD_CACHE_DIR") or Path.home() / ".cache" / "dasgd")
    return root / f"digits-split-sklearn{version('scikit-learn')}.npz"


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/test split, cached on disk.

    Importing scikit-learn costs ~1.3 s of CPU per process; with several peers
    starting on one small machine that doubles start-up, so the split is made
    once and every later process reads four arrays from an .npz file.
    """
    path = _cache_path()
    try:
        with np.load(path) as cached:
            return cached["x_train"], cached["x_test"], cached["y_train"], cached["y_test"]
    except (OSError, KeyError, ValueError):
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only home only costs the next process the import again
    return x_train, x_test, y_train, y_test


def build_mlp(hidden: tuple[int, ...] = (128,)) -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = 64
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def make_workload(
    shard_index: int,
    shard_count: int,
    hidden: tuple[int, ...] = (128,),
    learning_rate: float = 0.05,
    batch_size: int = 32,
    name: str = "digits-mlp",
) -> Workload:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard {shard_index}/{shard_count}: index must be in [0, count)")
    x_train, x_test, y_train, y_test = load_split()
    shard_x = torch.from_numpy(x_train[shard_index::shard_count])
    shard_y = torch.from_numpy(y_train[shard_index::shard_count])
    test_x, test_y = torch.from_numpy(x_test), torch.from_numpy(y_test)
    model = build_mlp(hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.functional.cross_entropy
    rng = np.random.default_rng(1000 + shard_index)
    # Batches walk through successive random permutations of the shard. The
    # order is kept as a tensor and batches are taken with `index_select`:
    # indexing with a Python list converts the list on every step, ~25 us
    # of a ~400 us step.
    order = torch.empty(0, dtype=torch.int64)
    position = length = 0

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order, position, length
        if length - position < batch_size:
            fresh = torch.from_numpy(rng.permutation(len(shard_x)))
            order, position = torch.cat([order[position:], fresh]), 0
            length = len(order)
        idx = order[position : position + batch_size]
        position += batch_size
        return shard_x.index_select(0, idx), shard_y.index_select(0, idx)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        logits = model(test_x)
        loss = float(loss_fn(logits, test_y))
        accuracy = float((logits.argmax(dim=1) == test_y).float().mean())
        return loss, accuracy

    return Workload(
        name=name,
        model=model,
        optimizer=optimizer,
        next_batch=next_batch,
        loss_fn=loss_fn,
        evaluate=evaluate,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )

"""Checkpoints that survive a crash at any instant.

A checkpoint is written to a temporary file in the same directory, fsynced,
and renamed over the previous one (the one before is kept as `.prev`), then
the directory is fsynced: a reader sees the old file or the new one, never a
torn one. Files load with `weights_only=True`: a checkpoint holds tensors and
plain values, never code to run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FILENAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _to_tensors(value: Any) -> Any:
    """numpy arrays -> tensors (weights_only loading accepts tensors, not numpy)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_tensors(v) for v in value)
    return value


def _to_arrays(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_arrays(v) for v in value)
    return value


def check_directory(directory: str | Path) -> None:
    """Creates `directory` if needed and checks that a file can be written
    there: at start-up, rather than a failed checkpoint every interval."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--checkpoint-dir {directory}: a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"--checkpoint-dir {directory}: {reason}") from None


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILENAME
    payload = {"format": FORMAT_VERSION, **state}
    payload["strategy_state"] = _to_tensors(payload.get("strategy_state", {}))
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            os.replace(target, directory / (FILENAME + ".prev"))
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load(directory: str | Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in `directory`, or None if there is none."""
    directory = Path(directory)
    errors = []
    for name in (FILENAME, FILENAME + ".prev"):
        path = directory / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torn or foreign file: try the previous one
            errors.append(f"{path}: {error}")
            log.error("checkpoint %s is unreadable (%s); trying the previous one", path, error)
            continue
        if state.get("format") != FORMAT_VERSION:
            errors.append(f"{path}: unknown format {state.get('format')!r}")
            continue
        state["strategy_state"] = _to_arrays(state.get("strategy_state", {}))
        return state
    if errors:
        raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
    return None

"""Strict state-dict loading with errors that name the file and every offending key."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.errors import CheckpointError

_MAX_LISTED = 8  # keys listed per category in an error message


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise `CheckpointError` unless `state` has exactly the module's keys with the same shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{source} does not match {type(module).__name__}: " + "; ".join(problems))


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Check, then copy `state` into `module` (dtype and device of the module are kept)."""
    check_state_dict(module, state, source)
    module.load_state_dict(dict(state), strict=True)


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` (e.g. DataParallel's `module.`) from every key that has it."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def torch_load(path: Path) -> object:
    """Read a foreign `.pt`/`.pth` with `weights_only=True`: tensors and plain containers, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except Exception as exc:  # unpickling refused or corrupt file: both mean "not a weights file"
        raise CheckpointError(f"{path} is not a readable weights-only checkpoint: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

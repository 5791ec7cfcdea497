"""Strict state-dict loading with errors that name the file and every offending key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from engine.errors import CheckpointError

_MAX_LISTED = 8  # keys listed per category in an error message


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_state_dict(expected: nn.Module | Mapping[str, Tensor], state: Mapping[str, object], source: str) -> None:
    """Raise `CheckpointError` unless `state` has exactly the expected keys, each a tensor of the same shape."""
    target = type(expected).__name__ if isinstance(expected, nn.Module) else "the expected layout"
    if isinstance(expected, nn.Module):
        expected = expected.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(v.shape) if isinstance(v, Tensor) else type(v).__name__} (expected {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and (not isinstance(v, Tensor) or tuple(v.shape) != tuple(expected[k].shape))
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{source} does not match {target}: " + "; ".join(problems))


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


def load_state_file(path: Path) -> dict[str, Tensor]:
    """A `.pt`/`.pth` file that must hold a plain state dict (torchvision and lpips weight files)."""
    state = torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def read_json(path: Path) -> dict[str, Any]:
    """A training run's `state.json`: missing, unreadable or not a JSON object is a CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CheckpointError(f"{path} is not a readable checkpoint record: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """A `.safetensors` file of a training run, on the CPU; missing or truncated is a CheckpointError."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors' own error type for a truncated or corrupt file
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

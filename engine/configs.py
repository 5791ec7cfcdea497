"""Helpers shared by the StyleGAN2 network configs (generator and discriminator)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from engine.errors import BundleError

# rosinality's width table: channels per resolution at channel_multiplier 1 above 32 px.
BASE_WIDTHS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}

C = TypeVar("C")


def widths(size: int, channel_multiplier: int, channels: tuple[int, ...] | None) -> dict[int, int]:
    """Channels per resolution, 4 px up to `size`: the explicit `channels`, else the scaled table."""
    resolutions = [2**i for i in range(2, size.bit_length())]
    if channels is not None:
        return dict(zip(resolutions, channels, strict=True))
    return {r: BASE_WIDTHS[r] * (channel_multiplier if r >= 64 else 1) for r in resolutions}


def config_from_dict(cls: type[C], d: dict[str, Any], what: str) -> C:
    """Build a config dataclass from JSON: unknown keys refused, list fields back to tuples."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown := set(d) - known:
        raise BundleError(f"unknown {what} config keys {sorted(unknown)}; allowed: {sorted(known)}")
    kw = {k: tuple(int(x) for x in v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)

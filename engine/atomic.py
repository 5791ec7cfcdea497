"""Replace a directory as a whole: readers see the old contents or the new, never a mix."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import EngineError


class TargetNotOursError(EngineError):
    """The directory to replace holds something else than what is written there: it is left alone."""

    code = "invalid_output"


@contextmanager
def replace_directory(target: Path, *, marker: str, old_name: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `target` to write into; on success swap it in for `target`.

    The files are fsynced, the current `target` is renamed to `old_name` (default: a hidden sibling), the new
    directory takes its place and the old one is deleted. If the process dies between the two renames, the
    previous contents survive under `old_name`. On an exception nothing of the new directory remains.

    Only an empty directory or an earlier one of the same kind (holding `marker`, a file every such
    directory has) is replaced: a mistyped path must not delete a user's files, or the input being read.
    """
    if target.exists() and not ((target / marker).is_file() or _empty_dir(target)):
        what = "a file" if not target.is_dir() else f"a directory without {marker}"
        raise TargetNotOursError(
            f"{target} is {what}, not one this command writes: refusing to replace it; choose a new or empty directory"
        )
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        old = target.parent / (old_name or f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None

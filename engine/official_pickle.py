"""Read the official tool's pickled editing vector without unpickling it.

The official web tool saves `{"edit_vector": float32 ndarray (16, 512), "roi_ids": [int, ...]}` with
`pickle.dump`, and loads uploads back with `pickle.load`: remote code execution for anyone who can
upload. Here the pickle's opcodes are walked by a small stack machine that understands only what such a
file contains (dicts, lists, tuples, strings, numbers, bytes, and numpy's array reconstruction, whose
class names are recorded as strings and never imported). Anything else is refused.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InputError

MAX_PICKLE_BYTES = 1 << 20  # a (16, 512) float32 vector pickles to about 33 KB

_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_DTYPE_GLOBALS = {("numpy", "dtype")}
_NDARRAY_GLOBALS = {("numpy", "ndarray")}
_ALLOWED_GLOBALS = _ARRAY_GLOBALS | _DTYPE_GLOBALS | _NDARRAY_GLOBALS


@dataclass
class _Global:
    module: str
    name: str


@dataclass
class _Pending:
    """An object whose constructor call was recorded (REDUCE) and awaits its state (BUILD)."""

    kind: str  # "array" or "dtype"
    args: tuple[Any, ...]
    value: Any = None


class _Mark:
    pass


def _build_array(state: tuple[Any, ...]) -> np.ndarray:
    # ndarray.__setstate__ layout: (version, shape, dtype, is_fortran, raw bytes)
    if len(state) != 5 or not isinstance(state[4], bytes | bytearray):
        raise InputError("vector pickle: unsupported ndarray state")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or dtype.kind != "f":
        raise InputError("vector pickle: the array is not floating point")
    array = np.frombuffer(bytes(raw), dtype=dtype)
    if array.size != int(np.prod(shape)):
        raise InputError("vector pickle: array data does not match its shape")
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _build_dtype(pending: _Pending, state: tuple[Any, ...]) -> np.dtype:
    # np.dtype pickles as dtype('f4', False, True) then BUILD (version, endian, ...)
    code = pending.args[0] if pending.args else None
    if not isinstance(code, str) or code not in ("f2", "f4", "f8"):
        raise InputError(f"vector pickle: unsupported dtype {code!r}")
    endian = state[1] if len(state) > 1 and isinstance(state[1], str) else "<"
    return np.dtype(("<" if endian in ("<", "|", "=") else ">") + code)


def parse_pickled_vector(data: bytes) -> dict[str, Any]:
    """Decode the official tool's vector pickle to {"edit_vector": ndarray, "roi_ids": [int]} safely."""
    if len(data) > MAX_PICKLE_BYTES:
        raise InputError(f"vector pickle is {len(data)} bytes, more than {MAX_PICKLE_BYTES}")
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:
        raise InputError(f"not a readable pickle: {exc}") from exc
    result: Any = None
    for op, raw_arg, _ in ops:
        name = op.name
        arg: Any = raw_arg
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            result = stack.pop()
            break
        if name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
            stack.append({} if name == "EMPTY_DICT" else [] if name == "EMPTY_LIST" else ())
        elif name == "MARK":
            stack.append(_Mark())
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
            stack.append(str(arg))
        elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            stack.append(bytes(arg))
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"):
            stack.append(arg)
        elif name in ("NEWTRUE", "NEWFALSE", "NONE"):
            stack.append({"NEWTRUE": True, "NEWFALSE": False, "NONE": None}[name])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
            else:
                attr, module = stack.pop(), stack.pop()
            if (module, attr) not in _ALLOWED_GLOBALS:
                raise InputError(f"vector pickle refers to {module}.{attr}: refused (only plain arrays are accepted)")
            stack.append(_Global(module, attr))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items_t = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items_t)
        elif name == "TUPLE":
            i = max(k for k, v in enumerate(stack) if isinstance(v, _Mark))
            items_t = tuple(stack[i + 1 :])
            del stack[i:]
            stack.append(items_t)
        elif name in ("REDUCE", "NEWOBJ"):
            args, fn = stack.pop(), stack.pop()
            if not isinstance(fn, _Global) or not isinstance(args, tuple):
                raise InputError("vector pickle: unsupported call")
            key = (fn.module, fn.name)
            kind = "array" if key in _ARRAY_GLOBALS | _NDARRAY_GLOBALS else "dtype"
            stack.append(_Pending(kind, args))
        elif name == "BUILD":
            state, target = stack.pop(), stack.pop()
            if not isinstance(target, _Pending) or not isinstance(state, tuple):
                raise InputError("vector pickle: unsupported object state")
            stack.append(_build_array(state) if target.kind == "array" else _build_dtype(target, state))
        elif name in ("MEMOIZE",):
            memo[len(memo)] = stack[-1]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[int(arg)])
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                pairs = [stack.pop(-2), stack.pop()]
            else:
                i = max(k for k, v in enumerate(stack) if isinstance(v, _Mark))
                pairs = stack[i + 1 :]
                del stack[i:]
            target = stack[-1]
            if not isinstance(target, dict) or len(pairs) % 2:
                raise InputError("vector pickle: malformed dictionary")
            for k in range(0, len(pairs), 2):
                target[pairs[k]] = pairs[k + 1]
        elif name in ("APPEND", "APPENDS"):
            if name == "APPEND":
                items = [stack.pop()]
            else:
                i = max(k for k, v in enumerate(stack) if isinstance(v, _Mark))
                items = stack[i + 1 :]
                del stack[i:]
            if not isinstance(stack[-1], list):
                raise InputError("vector pickle: malformed list")
            stack[-1].extend(items)
        else:
            raise InputError(f"vector pickle uses opcode {name}: refused")
    if not isinstance(result, dict) or not isinstance(result.get("edit_vector"), np.ndarray):
        raise InputError("vector pickle must hold a dict with an 'edit_vector' array")
    roi = result.get("roi_ids", [])
    if not isinstance(roi, list | tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in roi):
        raise InputError("vector pickle: 'roi_ids' must be a list of integers")
    return {"edit_vector": result["edit_vector"], "roi_ids": [int(i) for i in roi]}

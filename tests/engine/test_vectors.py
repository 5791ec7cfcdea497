from __future__ import annotations

import io
import pickle
import pickletools
import warnings

import numpy as np
import pytest
import torch

from engine.bundle import Bundle
from engine.errors import InputError
from engine.official_pickle import parse_pickled_vector
from engine.vectors import EditingVector, official_ui_scale


def _vector(bundle: Bundle) -> EditingVector:
    return EditingVector(delta=bundle.vectors["grow"], model="tiny", classes=[1, 2], region="pair", description="d")


def test_npy_round_trip_in_the_official_shape(tiny_bundle: Bundle) -> None:
    v = _vector(tiny_bundle)
    raw = v.to_npy()
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    assert array.shape == (1, 8, 32) and array.dtype == np.float32
    back = EditingVector.from_npy(raw, tiny_bundle.spec, region="pair")
    assert torch.equal(back.delta, v.delta) and back.classes == [1, 2]


def test_official_tool_pickle_is_read_without_unpickling(tiny_bundle: Bundle) -> None:
    v = _vector(tiny_bundle)
    written = v.to_official_pickle()
    back = EditingVector.from_official_pickle(written, tiny_bundle.spec)
    assert torch.equal(back.delta, v.delta) and back.classes == [1, 2]
    # The official tool reads it with pickle.load under NumPy 1.21, which has no `numpy._core`: only names
    # that both NumPy 1.x and 2 resolve may appear, and a plain pickle.load gives the same dict back.
    globals_named = {arg for op, arg, _ in pickletools.genops(written) if op.name == "GLOBAL"}
    assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2 warns about the old module name
        loaded = pickle.loads(written)  # our own bytes: safe to unpickle
    assert np.array_equal(loaded["edit_vector"], v.delta.numpy()) and loaded["roi_ids"] == [1, 2]
    # what the official tool writes: pickle.dump of a dict with an ndarray, default protocol
    content = {"edit_vector": np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32), "roi_ids": [2, 1]}
    parsed = parse_pickled_vector(pickle.dumps(content))
    assert np.array_equal(parsed["edit_vector"], content["edit_vector"]) and parsed["roi_ids"] == [2, 1]


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"edit_vector": _Exploit(), "roi_ids": []}),
        pickle.dumps(_Exploit()),
        pickle.dumps({"edit_vector": np.zeros((8, 32), dtype=object), "roi_ids": []}),
        pickle.dumps({"edit_vector": np.zeros((8, 32), np.float32), "roi_ids": ["x"]}),
        pickle.dumps({"vector": np.zeros((8, 32), np.float32)}),
        b"\x80\x04garbage",
        b"",
    ],
)
def test_hostile_pickles_are_refused(payload: bytes, tiny_bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError):
        EditingVector.from_official_pickle(payload, tiny_bundle.spec)
    assert "must never run" not in capsys.readouterr().out


def test_vectors_are_checked_against_the_bundle(tiny_bundle: Bundle) -> None:
    spec = tiny_bundle.spec
    with pytest.raises(InputError, match="does not fit this model"):
        EditingVector.from_npy(EditingVector(torch.zeros(4, 32), "tiny", [1]).to_npy(), spec)
    with pytest.raises(InputError, match="unknown region"):
        EditingVector.from_npy(_vector(tiny_bundle).to_npy(), spec, region="wheel")
    with pytest.raises(InputError, match="belongs to model"):
        EditingVector(torch.zeros(8, 32), "car", [1]).check(spec)
    with pytest.raises(InputError, match="classes"):
        EditingVector(torch.zeros(8, 32), "tiny", [99]).check(spec)
    with pytest.raises(InputError, match="needs"):
        EditingVector.from_official_pickle(
            pickle.dumps({"edit_vector": np.zeros((16, 512), np.float32), "roi_ids": []}), spec
        )


def test_official_ui_scale_convention() -> None:
    assert official_ui_scale(4) == 2.0 and official_ui_scale(-1) == -0.5

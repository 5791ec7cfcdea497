"""Quality of the shipped demo model on held-out faces (issue 5's acceptance tests; CPU, seconds).

The faces come from `faces.eval_seeds`, which no training run has seen. Inversions here use the bundle's
encoder and a shortened optimisation so that the tests stay fast; the full figures are `editgan eval`'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.bundle import Bundle, load_bundle
from engine.domains import faces
from engine.evaluate import FACE_EDITS, evaluate_optimization_edit, evaluate_vector, faces_heldout
from engine.inversion import invert
from engine.rendering import render

MODEL = Path(__file__).resolve().parents[2] / "models" / "demo-faces"
INVERT_STEPS = 60


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    torch.set_num_threads(2)
    return load_bundle(MODEL)


def _inverted(bundle: Bundle, n: int, offset: int) -> torch.Tensor:
    images, _ = faces_heldout(bundle, offset=offset)(n)
    canvases = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return torch.cat([invert(bundle, c[None], params={"steps": INVERT_STEPS}).w_plus for c in canvases])


def test_an_eye_enlarging_edit_reaches_half_the_painted_pixels(bundle: Bundle) -> None:
    edit = next(e for e in FACE_EDITS if e.grow == faces.LEFT_EYE)
    scores = []
    for w in _inverted(bundle, 3, offset=100):
        current = render(bundle, w).labels[0]
        mask = edit.apply(current)
        if bool((mask != current).any()):  # an inversion may have lost the eye: nothing to paint on
            scores.append(evaluate_optimization_edit(bundle, w, mask, [edit.grow]))
    assert len(scores) >= 2
    assert all(s["reached"] >= 0.5 for s in scores), scores
    assert all(s["psnr_outside"] is None or s["psnr_outside"] >= 28.0 for s in scores), scores


def test_the_eye_vector_moves_the_eyes_on_8_of_10_held_out_faces(bundle: Bundle) -> None:
    meta = bundle.spec.vectors["enlarge_eyes"]
    latents = _inverted(bundle, 10, offset=200)
    scores = evaluate_vector(
        bundle,
        latents,
        bundle.vectors["enlarge_eyes"],
        1.0,
        target_class=meta["target_class"],
        direction=meta["direction"],
        classes=meta["classes"],
    )
    assert scores["success"] >= 0.8, scores

"""EditGAN engine: the models and algorithms shared by the gateway, the workers and the training commands.

Tensor legend used in shape comments throughout the package:
    N batch, L W+ layers (n_latent), S style dim, C channels, H/W height and width,
    K classes, M ensemble members, D per-pixel feature depth, P selected pixels.
Images are float NCHW in [-1, 1] inside the engine; uint8 HWC only at the edges (`engine.images`).
The engine reads no environment variables: paths and devices are arguments.
"""

from engine.bundle import Bundle, BundleSpec, ClassInfo, Geometry, load_bundle, save_bundle
from engine.editing import EditResult, VectorEdit, add_vectors, apply_vectors, optimize_edit, refine
from engine.errors import BundleError, CancelledError, CheckpointError, EngineError, InputError, MissingWeightsError
from engine.inversion import Inversion, invert
from engine.params import EditParams, InvertParams, RefineParams
from engine.rendering import Rendering, render
from engine.vectors import EditingVector, official_ui_scale

__all__ = [
    "Bundle",
    "BundleError",
    "BundleSpec",
    "CancelledError",
    "CheckpointError",
    "ClassInfo",
    "EditParams",
    "EditResult",
    "EditingVector",
    "EngineError",
    "Geometry",
    "InputError",
    "Inversion",
    "InvertParams",
    "MissingWeightsError",
    "RefineParams",
    "Rendering",
    "VectorEdit",
    "add_vectors",
    "apply_vectors",
    "invert",
    "load_bundle",
    "official_ui_scale",
    "optimize_edit",
    "refine",
    "render",
    "save_bundle",
]

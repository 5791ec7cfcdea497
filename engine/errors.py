"""The few exceptions the engine raises; the gateway maps each to one HTTP status and code."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"


class InputError(EngineError, ValueError):
    """An argument breaks a documented rule (shape, range, class id, empty region...)."""

    code = "invalid_input"


class BundleError(EngineError):
    """A model bundle cannot be read: missing file, bad `bundle.json`, checksum mismatch."""

    code = "bundle_error"


class CheckpointError(BundleError):
    """A weight file does not match the network: names the file and the offending keys."""

    code = "checkpoint_mismatch"


class MissingWeightsError(BundleError):
    """Outside weights (an LPIPS backbone, an official checkpoint) are not where they were expected."""

    code = "missing_weights"


class CancelledError(EngineError):
    """A stop request ended a long-running loop between two steps."""

    code = "cancelled"

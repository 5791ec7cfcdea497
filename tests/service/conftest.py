"""The live service (`editgan serve` + `editgan worker` on a tiny model) lives in tests/live.py, shared with
tests/client; `Live` is re-exported for the tests that import it from here."""

from __future__ import annotations

from tests.live import LIVE_REDIS_URL, MAX_UPLOAD, Live

__all__ = ["LIVE_REDIS_URL", "MAX_UPLOAD", "Live"]

"""`python -m workers`: one worker on the settings from the environment (what `editgan worker` runs)."""

from __future__ import annotations

from schemas.settings import Settings
from workers.worker import run_worker

if __name__ == "__main__":
    run_worker(Settings())

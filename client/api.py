"""`EditganClient`: one typed method per endpoint of the gateway, over httpx.

Requests are built as plain JSON and form fields, not validated here: the service is the one authority on
what is valid, so a bad value comes back as the API's own `validation_error`/`invalid_input` (`ApiError`).
Answers are parsed into the contracts of `schemas/`.
"""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from client.errors import (
    ApiError,
    InvalidUrlError,
    JobFailedError,
    RequestTimeoutError,
    TransportError,
    WaitTimeoutError,
)
from schemas.catalog import ModelInfo, ModelList, VectorInfo, VectorList
from schemas.edits import (
    ImageLinks,
    InvertResult,
    LatentInfo,
    OptimizeEditResult,
    Output,
    SampleResult,
    VectorEditResult,
    VectorTerm,
)
from schemas.errors import Readiness as ReadinessBody
from schemas.jobs import JobAccepted, JobInfo, JobKind, JobStatus
from schemas.settings import DEFAULT_URL

# Upload content: the bytes themselves, a path to read, or an open binary file.
Upload = bytes | str | Path | IO[bytes]
# A vector term: a `VectorTerm`, `(ref, scale)`, or a bare ref (scale 1).
Term = VectorTerm | tuple[str, float] | str
ProgressCallback = Callable[[JobInfo], None]
R = TypeVar("R", bound=BaseModel)
LONG_POLL = 25.0  # seconds a `wait` holds each read (the service allows 30)
TRANSIENT = {502, 503, 504}  # statuses `wait` rides out: a gateway restarting, Redis failing over

# A job's result type follows from its kind: parse by kind, not by whichever union member fits best.
RESULT_TYPES: dict[JobKind, type[BaseModel]] = {
    JobKind.invert: InvertResult,
    JobKind.optimize: OptimizeEditResult,
    JobKind.refine: VectorEditResult,
}


class Health(BaseModel):
    """`GET /healthz`: the process serves HTTP."""

    status: str


class Readiness(ReadinessBody):
    """`GET /readyz` (200 or 503, one schema): models loaded, Redis reachable, live workers, writes accepted."""

    @property
    def ready(self) -> bool:
        """Whether the service takes work: `degraded` (a model without a live worker, or Redis refusing
        writes) still serves what it can."""
        return self.status != "not_ready"


@dataclass(frozen=True)
class LatentData:
    """A downloaded latent: float32 (1, L, S) `.npy` bytes and the model it belongs to."""

    latent_id: str
    model: str
    npy: bytes


def _term(term: Term) -> dict[str, Any]:
    if isinstance(term, VectorTerm):
        return {"vector": term.vector, "scale": term.scale}
    if isinstance(term, str):
        return {"vector": term, "scale": 1.0}
    return {"vector": term[0], "scale": term[1]}


def _file(upload: Upload, default_name: str) -> tuple[str, bytes | IO[bytes], str]:
    """(filename, content, content type) for a multipart part."""
    content: bytes | IO[bytes]
    if isinstance(upload, bytes):
        name, content = default_name, upload
    elif isinstance(upload, str | Path):
        name, content = Path(upload).name, Path(upload).read_bytes()
    else:
        name, content = Path(str(getattr(upload, "name", "") or default_name)).name, upload
    return name, content, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _form(**fields: object) -> dict[str, str]:
    """Multipart form fields; None means "not sent" (the service's default applies)."""
    return {k: str(v) for k, v in fields.items() if v is not None}


def _api_error(response: httpx.Response) -> ApiError:
    retry = response.headers.get("retry-after")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    try:
        body = response.json()
    except ValueError:
        body = None
    # Read the body leniently: a newer service may send a code this client's ErrorCode does not know yet.
    request_id = response.headers.get("x-request-id")
    if isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str):
        detail = body.get("detail")
        return ApiError(response.status_code, body["code"], body["message"], detail, retry_after, request_id)
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(response.status_code, f"http_{response.status_code}", text, None, retry_after, request_id)


class EditganClient:
    """A client of one EditGAN service.

    >>> with EditganClient("http://127.0.0.1:8000") as api:
    ...     job = api.invert("face.png")
    ...     result = api.wait_result(job, InvertResult, progress=lambda info: print(info.progress.step))

    Errors: `ApiError` (the service answered `{code, message}`), `JobFailedError` (`wait` on a job that
    failed or was cancelled), `TransportError`/`RequestTimeoutError` (no answer), `WaitTimeoutError`.
    `api_key` is sent as `Authorization: Bearer <key>`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise InvalidUrlError(f"{base_url!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidUrlError(f"{base_url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000")
        headers = {"User-Agent": "editgan-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EditganClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _send(self, method: str, path: str, *, allow: Iterable[int] = (), **kwargs: Any) -> httpx.Response:
        """One request; a 4xx/5xx not in `allow` raises the API's error, no answer raises TransportError."""
        url = f"{self.base_url}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(f"no answer in time ({type(exc).__name__})", url) from exc
        except httpx.RequestError as exc:
            raise TransportError(str(exc) or type(exc).__name__, url) from exc
        if response.status_code >= 400 and response.status_code not in set(allow):
            raise _api_error(response)
        return response

    def _parse(self, model: type[R], response: httpx.Response) -> R:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # The service answered, but not with the contract: a proxy page or a mismatched version.
            raise TransportError(f"unexpected {model.__name__} body: {exc.errors()[:1]}", str(response.url)) from exc

    def _job_info(self, response: httpx.Response) -> JobInfo:
        info = self._parse(JobInfo, response)
        raw = response.json().get("result")
        if raw is None:
            return info
        return info.model_copy(update={"result": RESULT_TYPES[info.kind].model_validate(raw)})

    # ------------------------------------------------------------------ health and models

    def health(self) -> Health:
        """`GET /healthz`."""
        return self._parse(Health, self._send("GET", "/healthz"))

    def readiness(self) -> Readiness:
        """`GET /readyz`: a 503 "not ready" answer is a result (`ready` False), not an error."""
        response = self._send("GET", "/readyz", allow=(503,))
        if response.status_code == 503 and "checks" not in response.text:
            raise _api_error(response)
        return self._parse(Readiness, response)

    def list_models(self) -> ModelList:
        """`GET /models`."""
        return self._parse(ModelList, self._send("GET", "/models"))

    def get_model(self, name: str) -> ModelInfo:
        """`GET /models/{name}`."""
        return self._parse(ModelInfo, self._send("GET", f"/models/{name}"))

    # ------------------------------------------------------------------ editing

    def invert(
        self, image: Upload, *, model: str | None = None, fit: str | None = None, steps: int | None = None
    ) -> JobAccepted:
        """`POST /invert`: embed an image (PNG, JPEG, WebP); a job whose result is an `InvertResult`."""
        response = self._send(
            "POST",
            "/invert",
            files={"image": _file(image, "image.png")},
            data=_form(model=model, fit=fit, steps=steps),
        )
        return self._parse(JobAccepted, response)

    def optimize_edit(
        self,
        latent_id: str,
        mask: Upload,
        *,
        region: str | None = None,
        steps: int | None = None,
        save_vector_as: str | None = None,
        description: str | None = None,
        roi: Upload | None = None,
    ) -> JobAccepted:
        """`POST /edit/optimize`: a job whose result is an `OptimizeEditResult` (new latent and editing vector).

        roi: a PNG of the brushed pixels (non-zero or opaque): the edit's region is then those pixels dilated."""
        files = {"mask": _file(mask, "mask.png")} | ({"roi": _file(roi, "roi.png")} if roi is not None else {})
        response = self._send(
            "POST",
            "/edit/optimize",
            files=files,
            data=_form(
                latent_id=latent_id, region=region, steps=steps, save_vector_as=save_vector_as, description=description
            ),
        )
        return self._parse(JobAccepted, response)

    def _vector_edit(
        self,
        latent_id: str,
        vectors: Sequence[Term],
        refine_steps: int,
        outputs: Sequence[Output | str] | None,
        inline: bool,
        preview: bool = False,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "latent_id": latent_id,
            "vectors": [_term(t) for t in vectors],
            "refine_steps": refine_steps,
            "inline": inline,
            "preview": preview,
        }
        if outputs is not None:
            body["outputs"] = [str(o) for o in outputs]
        return self._send("POST", "/edit/vector", json=body)

    def edit_with_vectors(
        self,
        latent_id: str,
        vectors: Sequence[Term],
        *,
        outputs: Sequence[Output | str] | None = None,
        inline: bool = False,
        preview: bool = False,
    ) -> VectorEditResult:
        """`POST /edit/vector` without refinement: answered at once (200) by the gateway; `preview` segments
        by a few ensemble members (faster, for interactive use)."""
        return self._parse(VectorEditResult, self._vector_edit(latent_id, vectors, 0, outputs, inline, preview))

    def refine_with_vectors(
        self,
        latent_id: str,
        vectors: Sequence[Term],
        steps: int,
        *,
        outputs: Sequence[Output | str] | None = None,
    ) -> JobAccepted:
        """`POST /edit/vector` with `refine_steps` > 0: a job whose result is a `VectorEditResult`."""
        return self._parse(JobAccepted, self._vector_edit(latent_id, vectors, steps, outputs, False))

    # ------------------------------------------------------------------ jobs

    def get_job(self, job_id: str, *, wait: float = 0.0) -> JobInfo:
        """`GET /jobs/{id}`: status, progress and, once terminal, the typed result or the error. With `wait`
        (seconds, at most 30) a long poll: the answer comes when the job next changes, or after `wait`."""
        if wait <= 0:
            return self._job_info(self._send("GET", f"/jobs/{job_id}"))
        timeout = httpx.Timeout(self._timeout, read=self._timeout + wait)  # the server holds the answer
        return self._job_info(self._send("GET", f"/jobs/{job_id}", params={"wait": wait}, timeout=timeout))

    def cancel_job(self, job_id: str) -> JobInfo:
        """`DELETE /jobs/{id}`: a queued job is `canceled` at once, a running one `stopped` at its next step."""
        return self._job_info(self._send("DELETE", f"/jobs/{job_id}"))

    def wait(
        self,
        job: str | JobAccepted | JobInfo,
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        check: bool = True,
        patience: float = 60.0,
    ) -> JobInfo:
        """Follow `GET /jobs/{id}` until the job is terminal and return its last state.

        Long polls (`get_job(wait=...)`): each answer comes as the job changes, and the end is seen at once.
        `poll_interval` paces a server that answers at once (one from before long polls): the pauses start
        short and grow to it. A service that does not answer, or answers 502/503/504 (a gateway restarting in
        a rolling deploy, Redis failing over), is waited out for up to `patience` seconds in a row, with
        growing pauses (or its Retry-After); the job goes on meanwhile.
        `progress(info)` is called whenever status, stage or step/total changes, the terminal state included.
        With `check`, a job that ends `failed`, `stopped` or `canceled` raises `JobFailedError`. `timeout`
        (seconds) raises `WaitTimeoutError`; the job itself goes on (cancel it with `cancel_job`).
        """
        job_id = job if isinstance(job, str) else job.job_id
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.05, poll_interval)  # short jobs finish in well under a second: start fast, back off
        last: tuple[object, ...] | None = None
        hold = 0.0  # the first read answers at once
        failing_since: float | None = None
        while True:
            asked = time.monotonic()
            try:
                info = self.get_job(job_id, wait=hold)
            except (TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in TRANSIENT:
                    raise
                failing_since = failing_since or asked
                late = deadline is not None and time.monotonic() >= deadline
                if late or time.monotonic() - failing_since > patience:
                    raise
                pause = getattr(exc, "retry_after", None) or min(5.0, 0.25 * 2 ** (time.monotonic() - failing_since))
                time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
                continue
            failing_since = None
            held = time.monotonic() - asked
            seen = (info.status, info.progress.stage, info.progress.step, info.progress.total)
            changed = seen != last
            if progress is not None and changed:
                progress(info)
            last = seen
            if info.status.is_terminal:
                if check and info.status != JobStatus.finished:
                    raise JobFailedError(info)
                return info
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                assert timeout is not None
                raise WaitTimeoutError(info, timeout)
            if not changed and held < hold / 2:  # answered at once with nothing new: a server without long polls
                time.sleep(delay if deadline is None else min(delay, deadline - now))
                delay = min(delay * 1.5, poll_interval)
            hold = LONG_POLL if deadline is None else max(0.0, min(LONG_POLL, deadline - time.monotonic()))

    def wait_result(
        self,
        job: str | JobAccepted | JobInfo,
        result_type: type[R],
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
    ) -> R:
        """`wait`, then the job's result as `result_type` (`InvertResult`, `OptimizeEditResult`, ...)."""
        info = self.wait(job, progress=progress, timeout=timeout, poll_interval=poll_interval)
        if not isinstance(info.result, result_type):
            raise TypeError(f"job {info.job_id} is a {info.kind.value} job; it has no {result_type.__name__}")
        return info.result

    # ------------------------------------------------------------------ vector registry

    def list_vectors(self, model: str | None = None) -> VectorList:
        """`GET /vectors`: shipped vectors (version 0) and registry vectors (latest version)."""
        return self._parse(VectorList, self._send("GET", "/vectors", params=_form(model=model)))

    def get_vector(self, model: str, name: str, version: int | None = None) -> VectorInfo:
        """`GET /vectors/{model}/{name}`: metadata and versions."""
        return self._parse(VectorInfo, self._send("GET", f"/vectors/{model}/{name}", params=_form(version=version)))

    def download_vector(self, model: str, name: str, version: int | None = None) -> bytes:
        """`GET /vectors/{model}/{name}/npy`: the official float32 (1, L, S) `.npy`."""
        return self._send("GET", f"/vectors/{model}/{name}/npy", params=_form(version=version)).content

    def upload_vector(
        self,
        npy: Upload,
        name: str,
        *,
        model: str | None = None,
        region: str | None = None,
        classes: Sequence[int] | None = None,
        description: str | None = None,
        scale_range: tuple[float, float] | None = None,
    ) -> VectorInfo:
        """`POST /vectors`: store an official `.npy` as a new version of `name` (give `region` or `classes`)."""
        low, high = scale_range if scale_range is not None else (None, None)
        fields = _form(
            name=name,
            model=model,
            region=region,
            classes=",".join(str(c) for c in classes) if classes else None,
            description=description,
            scale_min=low,
            scale_max=high,
        )
        response = self._send("POST", "/vectors", files={"file": _file(npy, f"{name}.npy")}, data=fields)
        return self._parse(VectorInfo, response)

    def save_edit_vector(self, edit_id: str, name: str, description: str = "") -> VectorInfo:
        """`POST /vectors/from-edit`: keep an optimisation edit's vector (`vector.edit_id`) under a name."""
        body = {"edit_id": edit_id, "name": name, "description": description}
        return self._parse(VectorInfo, self._send("POST", "/vectors/from-edit", json=body))

    def delete_vector(self, model: str, name: str) -> None:
        """`DELETE /vectors/{model}/{name}`: every version (shipped vectors are read-only: `vector_read_only`)."""
        self._send("DELETE", f"/vectors/{model}/{name}")

    # ------------------------------------------------------------------ latents and result images

    def upload_latent(self, npy: Upload, model: str | None = None) -> LatentInfo:
        """`POST /latents`: store a W+ `.npy` ((L, S) or (1, L, S)) to edit it."""
        response = self._send("POST", "/latents", files={"file": _file(npy, "latent.npy")}, data=_form(model=model))
        return self._parse(LatentInfo, response)

    def sample_latent(
        self, model: str | None = None, *, seed: int | None = None, example: int | None = None
    ) -> SampleResult:
        """`POST /latents/sample`: a seeded random sample (or a model's example latent), stored and rendered."""
        body = {k: v for k, v in {"model": model, "seed": seed, "example": example}.items() if v is not None}
        return self._parse(SampleResult, self._send("POST", "/latents/sample", json=body))

    def download_latent(self, latent_id: str) -> LatentData:
        """`GET /latents/{id}`: float32 (1, L, S) `.npy` and its model."""
        response = self._send("GET", f"/latents/{latent_id}")
        return LatentData(latent_id=latent_id, model=response.headers.get("x-model", ""), npy=response.content)

    def download_image(self, ref: str) -> bytes:
        """A result PNG from a link of `ImageLinks` (`/results/img_….png`, absolute or `data:`) or an image id."""
        if ref.startswith("data:"):  # inline results: nothing to fetch
            return base64.b64decode(ref.split(",", 1)[1])
        path = ref if "/" in ref else f"/results/{ref}.png"
        return self._send("GET", path).content

    def save_images(self, images: ImageLinks, directory: str | Path) -> dict[str, Path]:
        """Download every image of a result into `directory` as `<kind>.png` (image.png, segmentation.png, ...)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        saved: dict[str, Path] = {}
        for kind, ref in images.model_dump().items():
            if ref:
                saved[kind] = out / f"{kind}.png"
                saved[kind].write_bytes(self.download_image(ref))
        return saved

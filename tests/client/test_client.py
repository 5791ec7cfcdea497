"""`EditganClient` over real HTTP against `editgan serve` + `editgan worker` (tiny random model).

Each answer is compared with what the same request returns to plain httpx, so the typed models neither
lose nor invent fields. Vector names start with `client_`: the service is shared with tests/service.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

from client import (
    ApiError,
    EditganClient,
    InvalidUrlError,
    JobFailedError,
    RequestTimeoutError,
    TransportError,
    WaitTimeoutError,
)
from schemas.edits import InvertResult, OptimizeEditResult, VectorEditResult, VectorTerm
from schemas.jobs import JobInfo, JobStatus
from tests.client.conftest import load_npy, load_png, npy, photo, png
from tests.live import MAX_UPLOAD, Live
from tests.processes import free_port


def inverted(api: EditganClient, seed: int = 0) -> InvertResult:
    return api.wait_result(api.invert(photo(seed), steps=2), InvertResult, timeout=60)


def test_health_readiness_and_models_match_the_api(api: EditganClient, live: Live) -> None:
    assert api.health().model_dump() == live.http.get("/healthz").json()
    ready = api.readiness()
    raw = live.http.get("/readyz").json()
    assert ready.ready == (raw["status"] == "ready") and ready.checks == raw["checks"]
    assert ready.ready and ready.checks["workers"] >= 1
    assert api.list_models().model_dump(mode="json") == live.http.get("/models").json()
    model = api.get_model("tiny")
    assert model.model_dump(mode="json") == live.http.get("/models/tiny").json()
    assert model.content_box.width == 32 and "grow" in model.vectors


def test_wait_follows_progress_and_returns_the_terminal_job(api: EditganClient, live: Live) -> None:
    job = api.invert(photo(1), steps=200)
    assert job.status == JobStatus.queued and job.location == f"/jobs/{job.job_id}"
    seen: list[JobInfo] = []
    info = api.wait(job, progress=seen.append, timeout=120, poll_interval=0.05)

    assert info.status == JobStatus.finished and isinstance(info.result, InvertResult)
    assert info.model_dump(mode="json") == live.http.get(job.location).json()
    # called on changes only, the terminal state last, steps never going back
    keys = [(i.status, i.progress.stage, i.progress.step, i.progress.total) for i in seen]
    assert len(set(keys)) == len(keys) and seen[-1] == info
    assert not seen[0].status.is_terminal
    steps = [i.progress.step for i in seen]
    assert steps == sorted(steps) and seen[-1].progress.step == seen[-1].progress.total == 200
    assert any(0 < i.progress.step < 200 for i in seen), keys  # seen mid-run, not only before and after

    assert api.wait_result(job, InvertResult) == info.result
    with pytest.raises(TypeError):
        api.wait_result(job, OptimizeEditResult)


def test_invert_accepts_paths_and_open_files(api: EditganClient, tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(photo(2, size=(64, 20)))
    with path.open("rb") as handle:
        jobs = [api.invert(path, fit="pad", steps=1), api.invert(handle, model="tiny", steps=1)]
    for job in jobs:
        assert api.wait(job, timeout=60).status == JobStatus.finished


def test_latents_and_result_images_download_as_the_api_serves_them(
    api: EditganClient, live: Live, tmp_path: Path
) -> None:
    result = inverted(api)
    latent = api.download_latent(result.latent_id)
    assert latent.model == "tiny" and latent.npy == live.http.get(f"/latents/{result.latent_id}").content
    assert load_npy(latent.npy).shape == (1, 8, 32)

    assert result.images.image is not None and result.images.segmentation is not None
    image = api.download_image(result.images.image)
    assert image == live.http.get(result.images.image).content and load_png(image).shape == (24, 32, 3)
    image_id = result.images.image.removeprefix("/results/").removesuffix(".png")
    assert api.download_image(image_id) == image
    saved = api.save_images(result.images, tmp_path / "out")
    expected = {kind for kind, ref in result.images.model_dump().items() if ref}
    assert set(saved) == expected and "segmentation" in expected
    for kind, path in saved.items():
        assert path == tmp_path / "out" / f"{kind}.png"
        assert path.read_bytes() == live.http.get(getattr(result.images, kind)).content

    w = np.random.default_rng(3).normal(size=(8, 32)).astype(np.float32)
    uploaded = api.upload_latent(npy(w))
    assert uploaded.model == "tiny" and uploaded.latent_id.startswith("lat_")
    np.testing.assert_array_equal(load_npy(api.download_latent(uploaded.latent_id).npy)[0], w)


def test_optimize_edit_saves_a_vector_that_applies_again(api: EditganClient, live: Live) -> None:
    result = inverted(api, seed=4)
    assert result.images.segmentation is not None
    labels = load_png(api.download_image(result.images.segmentation)).copy()
    labels[6:14, 8:20] = 1
    job = api.optimize_edit(
        result.latent_id, png(labels), steps=3, save_vector_as="client_block", description="painted block"
    )
    edit = api.wait_result(job, OptimizeEditResult, timeout=60)
    assert edit.vector.saved_as is not None and edit.vector.saved_as.name == "client_block"
    assert 1 in edit.vector.classes and edit.images.region is not None

    again = api.save_edit_vector(edit.vector.edit_id, "client_block_copy", description="copy")
    assert again.version == 1 and again.description == "copy" and again.source == "registry"
    assert again.model_dump(mode="json") == live.http.get("/vectors/tiny/client_block_copy").json()
    applied = api.edit_with_vectors(result.latent_id, [("client_block_copy", 1.0)])
    assert applied.vectors == [VectorTerm(vector="client_block_copy@1", scale=1.0)]
    np.testing.assert_allclose(
        load_npy(api.download_latent(applied.latent_id).npy),
        load_npy(api.download_latent(edit.latent_id).npy),
        atol=1e-5,
    )
    for name in ("client_block", "client_block_copy"):
        api.delete_vector("tiny", name)


def test_vector_registry_round_trip(api: EditganClient, live: Live) -> None:
    delta = np.random.default_rng(5).normal(size=(1, 8, 32)).astype(np.float32)
    info = api.upload_vector(npy(delta), "client_vec", classes=[1, 2], description="d", scale_range=(-1.0, 3.0))
    assert info.version == 1 and info.classes == [1, 2] and info.scale_range == (-1.0, 3.0)
    assert api.upload_vector(npy(delta), "client_vec", region="pair").version == 2
    fetched = api.get_vector("tiny", "client_vec", version=1)
    assert fetched.model_dump(mode="json") == live.http.get("/vectors/tiny/client_vec?version=1").json()
    assert api.get_vector("tiny", "client_vec").versions == [1, 2]
    np.testing.assert_array_equal(load_npy(api.download_vector("tiny", "client_vec", version=1)), delta)
    assert api.download_vector("tiny", "grow") == live.http.get("/vectors/tiny/grow/npy").content

    listing = api.list_vectors(model="tiny")
    assert listing.model_dump(mode="json") == live.http.get("/vectors", params={"model": "tiny"}).json()
    assert {"grow", "client_vec"} <= {v.name for v in listing.vectors} and listing.count == len(listing.vectors)
    assert api.list_vectors().count >= listing.count

    api.delete_vector("tiny", "client_vec")
    with pytest.raises(ApiError) as raised:
        api.get_vector("tiny", "client_vec")
    assert raised.value.status == 404 and raised.value.code == "vector_not_found"


def test_vector_edits_inline_and_refined(api: EditganClient) -> None:
    result = inverted(api)
    body = api.edit_with_vectors(result.latent_id, ["grow"], outputs=["image"], inline=True)
    assert body.images.image is not None and body.images.image.startswith("data:image/png;base64,")
    assert body.images.segmentation is None
    assert load_png(api.download_image(body.images.image)).shape == (24, 32, 3)

    # random weights: a vector of every class, so that its region is never empty
    delta = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32) * 0.1
    api.upload_vector(npy(delta), "client_every", classes=[0, 1, 2, 3, 4])
    job = api.refine_with_vectors(result.latent_id, [VectorTerm(vector="client_every", scale=0.5)], 2)
    assert job.kind == "refine"
    refined = api.wait_result(job, VectorEditResult, timeout=60)
    assert refined.metrics.steps == 2 and refined.vectors[0].vector == "client_every@1"
    api.delete_vector("tiny", "client_every")


def _started(api: EditganClient, job_id: str) -> JobInfo:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = api.get_job(job_id)
        if info.status == JobStatus.started and info.progress.step > 0:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job never reported progress: {info}")


def test_cancel_and_wait_timeouts(api: EditganClient) -> None:
    long = api.invert(photo(3), steps=3000)
    queued = api.invert(photo(4), steps=3)
    _started(api, long.job_id)
    with pytest.raises(WaitTimeoutError) as late:
        api.wait(long, timeout=0.3)
    assert late.value.job.job_id == long.job_id and late.value.job.status == JobStatus.started

    assert api.cancel_job(queued.job_id).status == JobStatus.canceled
    assert api.cancel_job(long.job_id).job_id == long.job_id
    with pytest.raises(JobFailedError) as stopped:
        api.wait(long, timeout=30)
    assert stopped.value.code == "cancelled" and stopped.value.job.status == JobStatus.stopped
    assert stopped.value.job.progress.step < 3000
    assert api.wait(queued, check=False).status == JobStatus.canceled
    with pytest.raises(ApiError) as over:
        api.cancel_job(long.job_id)
    assert over.value.status == 409 and over.value.code == "job_not_cancellable"


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda api: api.get_job("0123456789abcdef"), 404, "job_not_found"),
        (lambda api: api.invert(b"not an image"), 415, "unsupported_media_type"),
        (lambda api: api.invert(b"\0" * (MAX_UPLOAD + 1)), 413, "payload_too_large"),
        (lambda api: api.invert(photo(), steps=4000), 422, "invalid_input"),
        (lambda api: api.invert(photo(), fit="zoom"), 422, "validation_error"),
        (lambda api: api.get_model("nope"), 404, "unknown_model"),
        (lambda api: api.edit_with_vectors("lat_" + "A" * 22, ["grow"]), 404, "latent_not_found"),
        (lambda api: api.edit_with_vectors("lat_" + "A" * 22, ["Bad Name"]), 422, "validation_error"),
        (lambda api: api.delete_vector("tiny", "grow"), 409, "vector_read_only"),
        (lambda api: api.download_image("img_" + "A" * 22), 404, "image_not_found"),
        (lambda api: api.download_latent("lat_" + "A" * 22), 404, "latent_not_found"),
    ],
)  # fmt: skip
def test_api_errors_carry_the_code_message_and_status(
    api: EditganClient, call: Callable[[EditganClient], object], status: int, code: str
) -> None:
    with pytest.raises(ApiError) as raised:
        call(api)
    error = raised.value
    assert (error.status, error.code) == (status, code)
    assert error.message and error.code in str(error) and str(status) in str(error)
    assert error.request_id and f"request {error.request_id}" in str(error)  # the id a report quotes


def test_an_error_is_the_body_the_api_sent(api: EditganClient, live: Live) -> None:
    with pytest.raises(ApiError) as raised:
        api.edit_with_vectors("nope", ["grow"])
    body = live.http.post("/edit/vector", json={"latent_id": "nope", "vectors": [{"vector": "grow"}]}).json()
    assert (raised.value.code, raised.value.message, raised.value.detail) == (
        body["code"],
        body["message"],
        body["detail"],
    )


def test_no_answer_is_a_transport_error_not_an_api_error() -> None:
    with EditganClient(f"http://127.0.0.1:{free_port()}") as nobody, pytest.raises(TransportError) as refused:
        nobody.health()
    assert not isinstance(refused.value, ApiError | RequestTimeoutError) and refused.value.code == "unreachable"

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with EditganClient(url, timeout=0.3) as slow, pytest.raises(RequestTimeoutError) as timed_out:
            slow.list_models()
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.code == "timeout"


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in server: records request headers; other paths answer like a proxy's error page."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers.items()))
        ok = self.path == "/healthz"
        body = json.dumps({"status": "ok"}).encode() if ok else b"<html>bad gateway</html>"
        self.send_response(200 if ok else 502)
        self.send_header("content-type", "application/json" if ok else "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_api_key_is_sent_as_a_bearer_token_and_only_when_given(recorder: str) -> None:
    with EditganClient(recorder, api_key="s3cret") as keyed:
        assert keyed.health().status == "ok"
    with EditganClient(recorder) as anonymous:
        anonymous.health()
    headers = [{k.lower(): v for k, v in h.items()} for h in _Recorder.seen]
    assert headers[0]["authorization"] == "Bearer s3cret" and "authorization" not in headers[1]


def test_an_error_page_that_is_not_the_api_s_still_raises_api_error(recorder: str) -> None:
    with EditganClient(recorder) as api, pytest.raises(ApiError) as raised:
        api.get_model("x")
    assert raised.value.status == 502 and raised.value.code == "http_502" and "bad gateway" in raised.value.message


def test_readiness_reads_every_status_the_gateway_answers_and_a_bad_url_sends_nothing() -> None:
    """The three bodies of `service/routes/health.py` (logic only: a transport returns them)."""
    checks = {"models": True, "redis": True, "workers": 1, "writes": False}
    bodies = {
        "degraded": (200, {"status": "degraded", "checks": checks}),
        "not_ready": (503, {"status": "not_ready", "checks": checks | {"redis": False, "workers": 0},
                            "code": "unavailable", "message": "Redis unreachable"}),
    }  # fmt: skip
    for status, (http_status, body) in bodies.items():
        transport = httpx.MockTransport(lambda request, s=http_status, b=body: httpx.Response(s, json=b))
        with EditganClient("http://service", transport=transport) as api:
            ready = api.readiness()
        assert ready.status == status and ready.ready == (status == "degraded"), status
    for url in ("notaurl", "ftp://host", "http://[::1"):
        with pytest.raises(InvalidUrlError):
            EditganClient(url)


def _job_body(status: str, step: int) -> dict[str, object]:
    return {
        "job_id": "j1",
        "kind": "invert",
        "model": "tiny",
        "status": status,
        "progress": {"stage": "optimizing", "step": step, "total": 3, "losses": {}},
    }


def test_wait_long_polls_and_paces_a_server_that_answers_at_once() -> None:
    """Logic only: which reads `wait` sends (a transport answers them)."""
    answers = [_job_body("started", 1), _job_body("started", 2), _job_body("finished", 3)]
    asked: list[str | None] = []

    def transport(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("wait"))
        return httpx.Response(200, json=answers[min(len(asked), len(answers)) - 1])

    with EditganClient("http://service", transport=httpx.MockTransport(transport)) as api:
        assert api.wait("j1").status == JobStatus.finished
    assert asked == [None, "25.0", "25.0"]  # the first read at once, then long polls

    # A server from before long polls answers every read at once: unchanged answers are paced, as polls.
    answers = [_job_body("started", 1)] * 6 + [_job_body("finished", 3)]
    asked.clear()
    start = time.monotonic()
    with EditganClient("http://service", transport=httpx.MockTransport(transport)) as api:
        api.wait("j1", poll_interval=0.2)
    assert len(asked) == 7 and time.monotonic() - start >= 0.05 + 0.075 + 0.1125 + 0.16875 + 0.2


def test_wait_rides_out_a_restarting_gateway_within_its_patience() -> None:
    """Logic only: a 503 with Retry-After, then no answer at all, then the job; and the limits of that."""
    script: list[Any] = [
        httpx.Response(
            503, json={"code": "unavailable", "message": "Redis unreachable"}, headers={"Retry-After": "0.1"}
        ),
        httpx.ConnectError("connection refused"),
        httpx.Response(200, json=_job_body("finished", 3)),
    ]

    def transport(request: httpx.Request) -> httpx.Response:
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, Exception):
            raise step
        return step

    with EditganClient("http://service", transport=httpx.MockTransport(transport)) as api:
        assert api.wait("j1").status == JobStatus.finished

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"code": "unavailable", "message": "Redis unreachable"})

    start = time.monotonic()
    with EditganClient("http://service", transport=httpx.MockTransport(down)) as api, pytest.raises(ApiError) as late:
        api.wait("j1", patience=0.6)
    assert late.value.status == 503 and 0.6 <= time.monotonic() - start < 5

    def gone(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "job_not_found", "message": "no such job"})

    with EditganClient("http://service", transport=httpx.MockTransport(gone)) as api, pytest.raises(ApiError) as lost:
        api.wait("j1")  # not transient: at once
    assert lost.value.code == "job_not_found"

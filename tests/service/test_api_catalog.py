"""Models, the vector registry, latents, health and metrics over real HTTP."""

from __future__ import annotations

import io
import pickle

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import Live


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_models_describe_classes_regions_and_vectors(live: Live) -> None:
    models = live.http.get("/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny"]
    model = models[0]
    assert model["resolution"] == 32 and model["n_latent"] == 8 and model["style_dim"] == 32
    assert model["content_box"] == {"top": 4, "left": 0, "height": 24, "width": 32}
    ids = [c["id"] for c in model["classes"]]
    assert ids == list(range(5)) and len({c["color"] for c in model["classes"]}) == 5
    assert model["regions"]["pair"] == [1, 2] and "grow" in model["vectors"]
    assert model["default_steps"] == {"invert": 4, "edit": 4, "refine": 4} and model["has_encoder"]
    assert model["max_steps"] == 3000  # the service's EDITGAN_MAX_STEPS (tests/live.py), not the default 2000
    assert live.http.get("/models/nope").json()["code"] == "unknown_model"


def test_registry_versions_round_trip_and_delete(live: Live) -> None:
    rng = np.random.default_rng(7)
    first, second = (rng.normal(size=(1, 8, 32)).astype(np.float32) for _ in range(2))
    for expected_version, array in ((1, first), (2, second)):
        response = live.http.post(
            "/vectors",
            data={"name": "smile", "region": "pair", "description": "test"},
            files={"file": ("smile.npy", npy(array))},
        )
        assert response.status_code == 201, response.text
        assert response.json()["version"] == expected_version and response.json()["classes"] == [1, 2]
    info = live.http.get("/vectors/tiny/smile").json()
    assert info["version"] == 2 and info["versions"] == [1, 2] and info["source"] == "registry"
    for version, array in ((1, first), (2, second), (None, second)):
        params = {"version": version} if version else {}
        data = live.http.get("/vectors/tiny/smile/npy", params=params).content
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), array)
    missing = live.http.get("/vectors/tiny/smile", params={"version": 9}).json()
    assert missing["code"] == "vector_not_found" and "its versions are [1, 2]" in missing["message"]
    head = live.http.head("/vectors/tiny/smile/npy")  # as the other downloads: headers, no body
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content
    names = {v["name"] for v in live.http.get("/vectors", params={"model": "tiny"}).json()["vectors"]}
    assert {"grow", "smile"} <= names
    assert live.http.delete("/vectors/tiny/smile").status_code == 204
    assert live.http.get("/vectors/tiny/smile").json()["code"] == "vector_not_found"
    assert live.http.delete("/vectors/tiny/smile").status_code == 404
    # names are lower case wherever a vector is named: a path that could never name one is invalid, not missing
    for call in (live.http.get, live.http.delete):
        upper = call("/vectors/tiny/Smile")
        assert upper.status_code == 422 and upper.json()["code"] == "validation_error", upper.text


def test_shipped_vectors_are_read_only_and_version_zero(live: Live) -> None:
    info = live.http.get("/vectors/tiny/grow").json()
    assert info["version"] == 0 and info["source"] == "bundle" and info["classes"] == [1]
    assert live.http.delete("/vectors/tiny/grow").status_code == 409
    refused = live.http.post(
        "/vectors", data={"name": "grow", "classes": "1"}, files={"file": npy(np.zeros((8, 32), np.float32))}
    )
    assert refused.status_code == 409 and refused.json()["code"] == "vector_read_only"


def test_uploads_that_are_not_plain_float_arrays_are_refused_and_nothing_is_stored(live: Live) -> None:
    malicious = pickle.dumps({"edit_vector": np.zeros((8, 32), np.float32), "roi_ids": [1]})
    cases = [
        malicious,  # a pickle posing as a vector: never unpickled
        npy(np.array([object()], dtype=object)),  # object dtype needs pickle: refused
        npy(np.zeros((3, 32), np.float32)),  # wrong shape
        npy(np.full((8, 32), np.nan, np.float32)),  # not finite
        b"",
    ]
    for data in cases:
        response = live.http.post("/vectors", data={"name": "evil", "classes": "1"}, files={"file": data})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_input"
    assert live.http.get("/vectors/tiny/evil").status_code == 404


def test_latents_upload_and_download_round_trip(live: Live) -> None:
    w = np.random.default_rng(3).normal(size=(8, 32)).astype(np.float32)
    response = live.http.post("/latents", files={"file": npy(w)})
    assert response.status_code == 201
    latent_id = response.json()["latent_id"]
    back = np.load(io.BytesIO(live.http.get(f"/latents/{latent_id}").content))
    np.testing.assert_array_equal(back[0], w)
    assert live.http.post("/latents", files={"file": npy(w[:4])}).json()["code"] == "invalid_input"


def test_health_readiness_and_metrics(live: Live) -> None:
    assert live.http.get("/healthz").json() == {"status": "ok"}
    ready = live.http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["workers"] >= 1
    for _ in range(3):
        live.http.get("/models/tiny")
    live.http.get("/models/nope")
    text = live.http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["editgan_http_request_duration_seconds"]
    routes = {s.labels.get("route") for s in requests.samples}
    assert "/models/{name}" in routes and "/models/nope" not in routes
    counts = [
        s.value
        for s in requests.samples
        if s.name.endswith("_count") and s.labels["route"] == "/models/{name}" and s.labels["status"] == "200"
    ]
    assert counts and counts[0] >= 3
    assert any(s.labels.get("code") == "unknown_model" for s in families["editgan_http_errors"].samples)
    assert families["editgan_redis_up"].samples[0].value == 1
    assert families["editgan_job_events_subscribed"].samples[0].value == 1  # long polls are woken
    assert families["editgan_job_waiters"].samples[0].value == 0
    # The gateway's own memory, whatever the device; GPU memory only with models on a GPU (not here).
    assert families["process_resident_memory_bytes"].samples[0].value > 50 * 2**20
    assert "editgan_device_memory_bytes" not in families


def test_openapi_documents_the_endpoints(live: Live) -> None:
    spec = live.http.get("/openapi.json").json()
    for path in ("/invert", "/edit/optimize", "/edit/vector", "/jobs/{job_id}", "/vectors", "/models"):
        assert path in spec["paths"], path
    assert "ErrorBody" in spec["components"]["schemas"]
    # the headers a real-time edit sends and reads are described as it behaves
    vector = spec["paths"]["/edit/vector"]["post"]
    assert "Server-Timing" in vector["responses"]["200"]["headers"]
    (key,) = [p for p in vector["parameters"] if p["name"] == "Idempotency-Key"]
    assert "refine_steps" in key["description"] and "real-time edit does not use it" in key["description"]


def test_the_statuses_routes_answer_with_are_documented(live: Live) -> None:
    spec = live.http.get("/openapi.json").json()["paths"]
    for path in ("/invert", "/edit/optimize", "/edit/vector", "/vectors", "/vectors/from-edit"):
        assert "409" in spec[path]["post"]["responses"], path  # idempotency in progress, read-only names
    broken = live.http.post("/edit/vector", content=b'{"latent_id": ', headers={"Content-Type": "application/json"})
    assert str(broken.status_code) in spec["/edit/vector"]["post"]["responses"], broken.status_code
    assert broken.json()["code"] and broken.json()["message"]
    torn = live.http.post(
        "/invert", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert str(torn.status_code) in spec["/invert"]["post"]["responses"], torn.status_code
    assert torn.json()["code"] and torn.json()["message"]
    # The headers those answers carry are documented too: where a job is, and when to retry.
    accepted = spec["/invert"]["post"]["responses"]["202"]["headers"]
    assert {"Location", "Idempotent-Replayed"} <= set(accepted)
    assert "Location" in spec["/vectors"]["post"]["responses"]["201"]["headers"]
    for status in ("409", "429", "503"):
        assert "Retry-After" in spec["/invert"]["post"]["responses"][status]["headers"], status
    health = spec["/readyz"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}

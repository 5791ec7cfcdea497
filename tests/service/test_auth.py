"""API keys and CORS without a server: parsing, constant-time matching, the access policy, CORS closed."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from schemas.settings import Settings
from service.app import create_app
from service.auth import ApiKeyConfigError, Authenticator, owner_of, parse_keys
from service.errors import ApiError

SECRET_A, SECRET_B = "a" * 24, "b" * 24


def test_keys_come_from_a_list_or_a_file_and_short_or_missing_ones_stop_start_up(tmp_path: Path) -> None:
    keys = parse_keys(f"alice:{SECRET_A}, {SECRET_B}")
    assert keys[0].key_id == "alice" and keys[1].key_id.startswith("sha256:")
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2024-05\nalice:{SECRET_A}\nalice:{SECRET_B}\n")
    rotated = parse_keys(str(path))
    assert {k.owner for k in rotated} == {owner_of("alice")}  # one owner across a rotation
    with pytest.raises(ApiKeyConfigError, match="not a file"):
        parse_keys(str(tmp_path / "missing"))
    with pytest.raises(ApiKeyConfigError, match="shorter"):
        parse_keys("alice:short")
    assert parse_keys(None) == [] and parse_keys("") == []


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = Authenticator(parse_keys(f"alice:{SECRET_A},bob:{SECRET_B}"), public_reads=True)
    assert auth.match(SECRET_A) is not None and auth.match(SECRET_A).key_id == "alice"  # type: ignore[union-attr]
    assert len(calls) == 4  # both keys compared each time, even after the first matched
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths, the secret's length hidden
    assert auth.match("c" * 24) is None


def test_the_policy_needs_a_key_for_writes_and_private_reads() -> None:
    auth = Authenticator(parse_keys(SECRET_A), public_reads=True)
    assert auth.needs_key("POST", "/latents/sample") and auth.needs_key("DELETE", "/jobs/x")
    assert auth.needs_key("GET", "/results/img_x.png") and auth.needs_key("GET", "/latents/lat_x")
    assert not auth.needs_key("GET", "/models") and not auth.needs_key("GET", "/")
    closed = Authenticator(parse_keys(SECRET_A), public_reads=False)
    assert closed.needs_key("GET", "/models") and closed.needs_key("GET", "/metrics")
    assert closed.needs_key("GET", "/vectors") and closed.needs_key("GET", "/models/demo-faces")
    # the editor's page and the health probes hold no data, and their callers send no key
    for path in ("/", "/healthz", "/readyz"):
        assert not closed.needs_key("GET", path), path
    assert closed.needs_key("POST", "/healthz")
    with pytest.raises(ApiError) as missing:
        closed.identify("GET", "/models", None, "127.0.0.1")
    assert missing.value.status == 401
    with pytest.raises(ApiError) as wrong:
        closed.identify("GET", "/models", "z" * 24, "127.0.0.1")
    assert wrong.value.status == 403
    caller = closed.identify("GET", "/models", SECRET_A, "127.0.0.1")
    assert caller.owner == parse_keys(SECRET_A)[0].owner and SECRET_A not in caller.rate_id
    off = Authenticator([], public_reads=False)
    assert off.identify("POST", "/invert", None, "10.0.0.1").owner is None


def test_cors_is_closed_by_default_and_open_to_configured_origins(tmp_path: Path) -> None:
    base = {"redis_url": "redis://127.0.0.1:6379/9", "editgan_models_dir": tmp_path}
    closed = TestClient(create_app(Settings(**base)))  # no lifespan: /healthz needs no models
    assert "access-control-allow-origin" not in closed.get("/healthz", headers={"Origin": "https://a.example"}).headers
    opened = TestClient(create_app(Settings(**base, editgan_cors_origins="https://a.example")))
    answer = opened.get("/healthz", headers={"Origin": "https://a.example"})
    assert answer.headers["access-control-allow-origin"] == "https://a.example"
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"location", "retry-after", "server-timing"} <= exposed  # what a page on that origin may read


def test_with_keys_off_an_authorization_header_of_another_scheme_is_ignored(tmp_path: Path) -> None:
    # e.g. a proxy's own Basic credentials passed through: without keys the gateway reads no key header
    base = {"redis_url": "redis://127.0.0.1:6379/9", "editgan_models_dir": tmp_path}
    client = TestClient(create_app(Settings(**base)))  # no lifespan: /healthz needs no models
    assert client.get("/healthz", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 200
    assert client.get("/healthz", headers={"X-API-Key": "not-a-key"}).status_code == 200
    keyed = TestClient(create_app(Settings(**base, editgan_api_keys=SECRET_A)))
    assert keyed.get("/metrics", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
    # With keys on, the health probes still read no key: a probe through such a proxy must not fail.
    for headers in ({"Authorization": "Basic Zm9vOmJhcg=="}, {"X-API-Key": "not-a-key"}):
        assert keyed.get("/healthz", headers=headers).status_code == 200, headers

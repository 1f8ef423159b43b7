"""Operational endpoints and the contract's edges: health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession

from services.gateway.app import create_app
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_health_and_readiness(http: ClientSession, gateway: str) -> None:
    async with http.get(f"{gateway}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{gateway}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}


async def test_metrics_count_requests_and_created_uploads(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    body = {"filename": "m.png", "content_type": "image/png", "size": 10}
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=owner_headers) as resp:
        assert resp.status == 201
    async with http.post(
        f"{gateway}/v1/uploads", json=body | {"size": 0}, headers=owner_headers
    ) as resp:
        assert resp.status == 422
    async with http.get(f"{gateway}/metrics") as resp:
        text = await resp.text()
    assert 'clearance_uploads_created_total{outcome="created",profile="image"}' in text
    assert 'clearance_uploads_created_total{outcome="rejected",profile="image"}' in text
    assert 'clearance_http_requests_total{method="POST",route="/v1/uploads",status="201"}' in text


async def test_a_clients_profile_names_do_not_become_metric_labels(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    names = [f"no-such-profile-{n}" for n in range(5)]
    for name in names:
        body = {"filename": "m.png", "content_type": "image/png", "size": 10, "profile": name}
        async with http.post(f"{gateway}/v1/uploads", json=body, headers=owner_headers) as resp:
            assert resp.status == 422, await resp.text()
    async with http.get(f"{gateway}/metrics") as resp:
        text = await resp.text()
    assert not any(name in text for name in names)
    assert 'clearance_uploads_created_total{outcome="rejected",profile="unknown"}' in text


async def test_openapi_describes_exactly_the_routes_that_exist(
    http: ClientSession, gateway: str, settings: Settings
) -> None:
    async with http.get(f"{gateway}/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    app = create_app(settings)
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method not in ("HEAD", "OPTIONS", "*")
    }
    for r in app.router.routes():
        if r.method == "*" and r.resource is not None:  # class-based view: its own methods
            routes |= {
                (m, r.resource.canonical)
                for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
                if hasattr(r.handler, m.lower())
            }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    create = doc["paths"]["/v1/uploads"]["post"]["requestBody"]["content"]["application/json"]
    schema_name = create["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(doc["components"]["schemas"][schema_name]["properties"]) == {
        "filename",
        "content_type",
        "size",
        "sha256",
        "profile",
        "metadata",
    }


async def test_unknown_routes_and_methods_are_problems(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    async with http.get(f"{gateway}/v1/nothing-here", headers=owner_headers) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
    async with http.patch(f"{gateway}/v1/uploads", headers=owner_headers) as resp:
        assert resp.status == 405
        assert resp.content_type == "application/problem+json"

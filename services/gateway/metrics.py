"""Prometheus metrics for the gateway, in a registry per app (tests build many apps)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clearance_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clearance_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.create_batch_size = Histogram(
            "clearance_create_batch_size",
            "Creates written by one statement, by kind (group commit: services/gateway/creates.py)",
            ["kind"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.uploads_created = Counter(
            "clearance_uploads_created_total",
            "Upload requests per profile and outcome (created, rejected)",
            ["profile", "outcome"],
            registry=self.registry,
        )
        self._created: dict[tuple[str, str], Counter] = {}
        self.transitions = Counter(
            "clearance_upload_transitions_total",
            "Status transitions applied, by target status",
            ["status"],
            registry=self.registry,
        )

    def count_create(self, profile: str, outcome: str) -> None:
        """One more create of `profile` (a configured name: labels stay few) by outcome."""
        child = self._created.get((profile, outcome))
        if child is None:
            child = self._created[(profile, outcome)] = self.uploads_created.labels(
                profile, outcome
            )
        child.inc()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LABEL_CACHE = 1024  # label sets remembered (routes × methods × statuses are few)


def metrics_middleware(metrics: GatewayMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    # The labelled children, looked up once per (route, method, status): prometheus'
    # `labels()` costs more than the rest of the middleware.
    counters: dict[tuple[str, str, int], Counter] = {}
    timers: dict[tuple[str, str], Histogram] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect or aiohttp's own error answer
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            method = request.method
            counter = counters.get((route, method, status))
            if counter is None:
                counter = metrics.requests.labels(route, method, str(status))
                if len(counters) < LABEL_CACHE:
                    counters[(route, method, status)] = counter
            timer = timers.get((route, method))
            if timer is None:
                timer = metrics.latency.labels(route, method)
                if len(timers) < LABEL_CACHE:
                    timers[(route, method)] = timer
            counter.inc()
            timer.observe(time.perf_counter() - start)

    return middleware

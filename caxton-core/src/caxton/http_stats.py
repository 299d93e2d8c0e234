"""What the REST API served: requests by method, route and status, and their durations
(``caxton_http_requests_total``, ``caxton_http_request_duration_seconds``)."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from caxton.samples import Samples

__all__ = ["HttpStats", "route_of"]


class HttpStats:
    def __init__(self) -> None:
        #: (method, route template, status) -> requests answered.
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.durations = Samples()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.durations.pending.append(seconds)


def route_of(request: web.Request) -> str:
    """The route's template (``/api/v1/agents/{name}``), so labels stay few; paths that
    match no route are one ``unmatched``."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"

"""The HTTP layer: one httpx client, bearer auth, retries with backoff on 429 and 503, problem documents
turned into exceptions."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from goldset_client.errors import error_for

RETRY_STATUSES = (429, 503)


class Http:
    """Requests to one Goldset server. ``retries``: how many times a 429 or 503 answer (or a refused
    connection) is retried, waiting ``Retry-After`` when the server says, else an exponential backoff with
    jitter starting at ``backoff`` seconds (capped at ``max_backoff``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff, self.sleep = retries, backoff, max_backoff, sleep
        self.client = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "goldset-client"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://", "/api/")) else "/api/v1" + path

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("Retry-After", "")
            if after.strip().isdigit():
                return min(float(after), self.max_backoff)
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def request(self, method: str, path: str, *, body: Callable[[], Any] | None = None, **kwargs) -> httpx.Response:
        """One request, retried on 429/503; ``body`` makes the request content afresh for each try (a stream
        that was half sent cannot be sent again)."""
        for attempt in range(self.retries + 1):
            if body is not None:
                kwargs["content"] = body()
            try:
                response = self.client.request(method, self.url(path), **kwargs)
            except httpx.ConnectError:
                if attempt == self.retries:
                    raise
                self.sleep(self._wait(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                self.sleep(self._wait(attempt, response))
                continue
            if response.is_error:
                raise error_for(response)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def json(self, method: str, path: str, **kwargs) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, path: str, params: dict | None = None) -> Iterator[httpx.Response]:
        """A streamed GET, retried on 429/503 before any of its body is read."""
        for attempt in range(self.retries + 1):
            with self.client.stream("GET", self.url(path), params=params) as response:
                if response.status_code in RETRY_STATUSES and attempt < self.retries:
                    response.read()
                    self.sleep(self._wait(attempt, response))
                    continue
                if response.is_error:
                    response.read()
                    raise error_for(response)
                yield response
                return

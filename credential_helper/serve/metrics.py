"""The gate's Prometheus metrics (``gate --metrics-listen``), through the official
client library (prometheus_client), from the same per-request records as the log.

Names are fixed (issue 22) so that dashboards and alerts can rely on them. Every
label set is bounded, whatever a caller sends:
- ``user`` is the key's name in authorized_keys; every caller without one (an
  unknown key, an unsigned request, a key on a line without a name) is ``-``;
- ``endpoint`` is one of Ollama's routes (record.ENDPOINTS) or ``other``;
- ``reason`` is a record.REASONS word or ``other``; ``cause`` a fixed word;
- ``model`` is whatever Ollama named in an answer that carried token counts (so a
  model the server has); past MAX_MODELS distinct names, ``other``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import record

if TYPE_CHECKING:
    from .messages import Answer, Head

MAX_MODELS = 200
# Seconds: from a refusal (well under a millisecond) to a long generation.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """An observer of records (``metrics(record)``) and of requests in flight (``flight``)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ollama_gate_requests",
            "Requests answered, by caller, endpoint and status.",
            ("user", "endpoint", "status"),
            registry=registry,
        )
        self.refusals = Counter(
            "ollama_gate_refusals", "Requests refused or failed, by reason class.", ("reason",), registry=registry
        )
        self.in_flight = Gauge(
            "ollama_gate_in_flight", "Requests being relayed to Ollama now, by caller.", ("user",), registry=registry
        )
        self.duration = Histogram(
            "ollama_gate_request_duration_seconds",
            "From the request head to the answer's end.",
            buckets=BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "ollama_gate_tokens",
            "Tokens Ollama reported (prompt_eval_count, eval_count, /v1 usage).",
            ("user", "model", "kind"),
            registry=registry,
        )
        self.bytes = Counter(
            "ollama_gate_response_bytes", "Answer body bytes sent to clients, by caller.", ("user",), registry=registry
        )
        self.upstream_failures = Counter(
            "ollama_gate_upstream_failures",
            "Ollama could not be reached, timed out, answered malformed, or cut its answer.",
            ("cause",),
            registry=registry,
        )
        self._models: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, shown: record.Record) -> None:
        user = user_label(shown.user)
        status = str(shown.status) if shown.status is not None else "-"
        self.requests.labels(user, record.endpoint(shown.path), status).inc()
        if shown.reason:
            self.refusals.labels(record.reason_class(shown.status, shown.reason)).inc()
        if shown.upstream_failure:
            self.upstream_failures.labels(shown.upstream_failure).inc()
        self.duration.observe(shown.ms / 1000)
        if shown.bytes > 0:
            self.bytes.labels(user).inc(shown.bytes)
        if shown.prompt_tokens is not None or shown.completion_tokens is not None:
            model = self._model_label(shown.model)
            self.tokens.labels(user, model, "prompt").inc(shown.prompt_tokens or 0)
            self.tokens.labels(user, model, "completion").inc(shown.completion_tokens or 0)

    def flight(self, user: str, delta: int) -> None:
        self.in_flight.labels(user_label(user)).inc(delta)

    def _model_label(self, model: str) -> str:
        model = model[:200] if model else "-"
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) >= MAX_MODELS:
                return "other"
            self._models.add(model)
            return model

    def serve(self, address: tuple[str, int]) -> Exporter:
        return Exporter(self.registry, address)


def user_label(user: str) -> str:
    return user[:100] if user else "-"


class Exporter:
    """``/metrics`` on its own listener, served by this package's engine (server.py):
    kept-alive connections (Prometheus reuses its connection between scrapes, so a
    scrape costs no accept and no new thread), the same connection cap and time
    bounds as the gate. The text itself is prometheus_client's (``choose_encoder``
    answers OpenMetrics when Prometheus asks for it)."""

    def __init__(self, registry: CollectorRegistry, address: tuple[str, int]) -> None:
        from ..errors import ListenError
        from . import server
        from .limits import Limits

        from .sign import own_hosts

        scrape = _Scrape(registry)
        try:
            self.server = server.Server(
                address,
                scrape,
                upstream=None,
                log=lambda line: None,
                limits=Limits(upstream=10, in_flight=4, connections=16),
                observe=lambda record: None,
            )
        except ListenError as exc:
            raise ListenError(f"--metrics-listen: {exc}") from None
        self.address = self.server.address
        # On loopback only the listener's own names: a web page whose DNS name rebinds to
        # 127.0.0.1 would otherwise read every member's usage (as for the proxy, sign.own_hosts).
        scrape.hosts = own_hosts(self.address) or None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.stop_accepting()
        self.server.close()  # ends its loop, and waits for that
        self.thread.join(timeout=2)


class _Scrape:
    """The exporter's policy: GET or HEAD /metrics, nothing else."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.hosts: frozenset[str] | None = None  # Host values answered (None: any, --metrics-public)

    def decide(self, head: Head) -> Answer:
        from prometheus_client.exposition import choose_encoder

        from .messages import Answer

        if self.hosts is not None and (head.get("host") or "").strip().lower() not in self.hosts:
            return Answer(403, "the Host header must name this listener by its address", keep_alive=True)
        if head.path != "/metrics":
            return Answer(404, "only /metrics is served here", keep_alive=True)
        if head.method not in ("GET", "HEAD"):
            return Answer(405, "GET /metrics", headers=(("Allow", "GET, HEAD"),), keep_alive=True)
        encoder, content_type = choose_encoder(head.get("accept") or "")
        return Answer(200, body=encoder(self.registry), headers=(("Content-Type", content_type),), keep_alive=True)

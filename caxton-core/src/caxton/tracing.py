"""OpenTelemetry traces of a node's messages, exported over OTLP/HTTP.

On when ``observability.enable_tracing`` (needs the ``caxton-core[tracing]`` extra). A
request's trace follows it everywhere: the REST request, the router's routing of each
message (``caxton.route``, or ``caxton.reply`` for an answer), the forward to another
node (``caxton.forward``), the agent's handling (``caxton.agent.handle``, with the fuel
it used) and the reply, back to the client. The W3C ``traceparent`` travels in the
message itself (its ``traceparent`` field), so the trace crosses nodes and agents: a
message an agent sends while handling another continues that one's trace.

Off, the node builds none of this: the router, the forwarding and the agent runtimes
each test one attribute (``tracer is None``). Each node has its own
:class:`~opentelemetry.sdk.trace.TracerProvider` (never the global one), so several
nodes can run in one process. See docs/observability.md#tracing.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from caxton.errors import ConfigError

if TYPE_CHECKING:
    from caxton.config import Config
    from caxton.messaging.message import Message

__all__ = ["Tracing", "build_tracing", "check_tracing", "current_traceparent"]

#: ``00-<trace id>-<span id>-<flags>``
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: Last hex digits of the flags byte with the sampled bit set.
_SAMPLED_DIGITS = frozenset("13579bdf")

log = logging.getLogger("caxton.tracing")

INSTALL_HINT = "pip install 'caxton-core[tracing]'"


def _otlp_traces_url(endpoint: str) -> str:
    """``http://collector:4318`` -> ``http://collector:4318/v1/traces``; a URL with a
    path is used as given."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"observability.otlp_endpoint: expected an http(s) URL of an OTLP/HTTP "
            f"collector such as http://127.0.0.1:4318, got {endpoint!r}"
        )
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def check_tracing(config: Config) -> str | None:
    """What ``observability.enable_tracing`` needs, checked at ``config validate`` and
    at start: the OpenTelemetry extra and a collector URL. Returns the OTLP traces URL
    (None when tracing is off); raises :class:`ConfigError`."""
    observability = config["observability"]
    if not observability["enable_tracing"]:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"observability.enable_tracing needs OpenTelemetry, which is not installed "
            f"({exc.name}): {INSTALL_HINT}"
        ) from None
    endpoint = observability["otlp_endpoint"]
    if not endpoint:
        raise ConfigError(
            "observability.enable_tracing needs observability.otlp_endpoint, the URL "
            "of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318)"
        )
    return _otlp_traces_url(endpoint)


class Tracing:
    """A node's tracer and the few operations the message path needs."""

    def __init__(self, node_id: str, config: Config, *, exporter: Any = None) -> None:
        """``exporter`` replaces the OTLP/HTTP one (benchmarks, tests)."""
        url = check_tracing(config) or ""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from caxton import __version__

        observability = config["observability"]
        self.ratio = float(observability["trace_sample_rate"])
        self.provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": "caxton",
                    "service.instance.id": node_id,
                    "service.version": __version__,
                }
            ),
            sampler=ParentBased(TraceIdRatioBased(self.ratio)),
        )
        self.exporter = exporter or OTLPSpanExporter(
            endpoint=url, timeout=float(observability["otlp_timeout"])
        )
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("caxton", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.node_id = node_id
        from opentelemetry import trace

        self._current_span = trace.get_current_span
        generator = random.Random()
        self._random = generator.random
        self._random_bits = generator.getrandbits

    # -- context -------------------------------------------------------------------

    def context_of(self, message: Message) -> Any:
        """The OpenTelemetry context a span about ``message`` continues: its
        ``traceparent``, else the current one (a REST request's span)."""
        parent = message.traceparent
        if parent is None:
            return None  # the current context
        match = _TRACEPARENT.fullmatch(parent)
        if match is None:
            return None
        from opentelemetry import trace

        context = trace.SpanContext(
            trace_id=int(match.group(1), 16),
            span_id=int(match.group(2), 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(match.group(3), 16)),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(context))

    def extract(self, headers: Any) -> Any:
        return self.propagator.extract(headers)

    def sampled(self, message: Message) -> bool:
        """Whether spans about ``message`` are recorded; the cheap answer first.

        A message whose trace was not sampled where it started keeps its
        ``traceparent`` and gets no span (its flags say so). A message that starts a
        trace (no ``traceparent``, no current span) is sampled at ``trace_sample_rate``
        here, and one that is not gets a ``traceparent`` saying so, so the nodes and
        agents it reaches skip it as cheaply."""
        parent = message.traceparent
        if parent is not None:
            return parent[-1] in _SAMPLED_DIGITS
        if self._current_span().get_span_context().is_valid:
            return True  # a REST request's span: the sampler decided there
        if self._random() < self.ratio:
            return True
        message.traceparent = f"00-{self._random_bits(128):032x}-{self._random_bits(64):016x}-00"
        return False

    @staticmethod
    def _stamp(message: Message, span: Any) -> None:
        context = span.get_span_context()
        if context.is_valid:
            message.traceparent = (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
            )

    # -- spans -----------------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, context: Any = None, **attributes: Any) -> Iterator[Any]:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        kinds = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}
        kind = kinds.get(attributes.pop("kind", ""), SpanKind.INTERNAL)
        given = {key: value for key, value in attributes.items() if value is not None}
        with self.tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=given, record_exception=True
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    @contextlib.contextmanager
    def message_span(self, name: str, message: Message, **attributes: Any) -> Iterator[Any]:
        """A span about ``message`` that becomes the parent of what it leads to: the
        message carries the span's ``traceparent`` from here on. Callers ask
        :meth:`sampled` first."""
        with self.span(
            name,
            self.context_of(message),
            **{
                "caxton.node_id": self.node_id,
                "caxton.message_id": message.message_id,
                "caxton.performative": message.performative.value,
                "caxton.sender": message.sender,
                "caxton.receiver": message.receiver,
                "caxton.conversation_id": message.conversation_id,
                **attributes,
            },
        ) as span:
            self._stamp(message, span)
            yield span

    def routed(self, submit: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the router's ``_submit`` so each sampled message routed gets its span."""
        sampled = self.sampled

        def traced(message: Message, routes: Any, *, wait: bool) -> Any:
            if not sampled(message):
                return submit(message, routes, wait=wait)
            name = "caxton.reply" if message.in_reply_to is not None else "caxton.route"
            with self.message_span(name, message):
                return submit(message, routes, wait=wait)

        return traced

    def shutdown(self) -> None:
        """Export what is buffered and stop (bounded by ``otlp_timeout``)."""
        try:
            self.provider.shutdown()
        except Exception as exc:  # an unreachable collector must not fail the stop
            log.warning("tracing: could not export the last spans: %s", exc)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, if a sampled one is active."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def build_tracing(node_id: str, config: Config) -> Tracing | None:
    """The node's tracing when ``observability.enable_tracing``, else None."""
    if not config["observability"]["enable_tracing"]:
        return None
    return Tracing(node_id, config)

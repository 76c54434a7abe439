"""Request counters and latency histograms, written in the Prometheus text
exposition format (version 0.0.4) by hand: the format is a few documented lines,
and the service needs no client library for it.

Invariants:

* **Bounded labels.** A label is a route template (``/v1/rooms/{room}``, never a
  path with ids), one of a fixed set of methods, or a status code; a request no
  route matched is counted under ``(unmatched)``. So a stranger sending odd
  paths or methods cannot grow the set of series, and no series names a room.
* **Nothing per room unless asked.** The ledger figures are totals; the
  operator may turn on ``metrics_per_room``, which labels each room's ledger
  size with its id (the endpoint is the operator's: see
  :data:`cleanroom.service.access.Access.OPERATOR`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "(unmatched)"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# seconds: from a cached read to a long upload
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def method_label(method: str) -> str:
    """The method, or ``OTHER`` for any method the service has no route for."""
    return method if method in METHODS else "OTHER"


@dataclass(frozen=True)
class Sample:
    """One line of a metric family: the suffix (``_bucket``, ``_sum``...), labels, value."""

    labels: tuple[tuple[str, str], ...]
    value: float
    suffix: str = ""


@dataclass(frozen=True)
class Family:
    """A metric family: its name, type (counter, gauge, histogram), help and samples."""

    name: str
    kind: str
    help: str
    samples: Sequence[Sample]


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += 1
        self.sum += value


class RequestMetrics:
    """What the access log middleware counts: requests by method, route and status,
    their latency by method and route, and the bytes sent back. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._bytes: dict[tuple[str, str], int] = {}

    def observe(
        self, method: str, route: str, status: int, seconds: float, sent_bytes: int
    ) -> None:
        method = method_label(method)
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            histogram = self._latency.setdefault((method, route), _Histogram())
            histogram.observe(seconds)
            self._bytes[(method, route)] = self._bytes.get((method, route), 0) + sent_bytes

    def families(self) -> list[Family]:
        with self._lock:
            requests = sorted(self._requests.items())
            latency = sorted((k, list(h.counts), h.total, h.sum) for k, h in self._latency.items())
            sent = sorted(self._bytes.items())
        latency_samples: list[Sample] = []
        for (method, route), counts, total, seconds in latency:
            labels = (("method", method), ("route", route))
            cumulative = 0
            for bound, count in zip(BUCKETS, counts, strict=True):
                cumulative += count
                le = (("le", _number(bound)),)
                latency_samples.append(Sample(labels + le, cumulative, "_bucket"))
            latency_samples.append(Sample((*labels, ("le", "+Inf")), total, "_bucket"))
            latency_samples.append(Sample(labels, seconds, "_sum"))
            latency_samples.append(Sample(labels, total, "_count"))
        return [
            Family(
                "cleanroom_http_requests_total",
                "counter",
                "HTTP requests answered, by method, route template and status.",
                [
                    Sample((("method", m), ("route", r), ("status", str(s))), n)
                    for (m, r, s), n in requests
                ],
            ),
            Family(
                "cleanroom_http_request_duration_seconds",
                "histogram",
                "Time from a request's arrival to the end of its answer, by method and route.",
                latency_samples,
            ),
            Family(
                "cleanroom_http_response_bytes_total",
                "counter",
                "Bytes of response bodies sent, by method and route template.",
                [Sample((("method", m), ("route", r)), n) for (m, r), n in sent],
            ),
        ]


def gauge(name: str, help_text: str, values: Mapping[tuple[tuple[str, str], ...], float]) -> Family:
    """A gauge family from ``{labels: value}``."""
    return Family(name, "gauge", help_text, [Sample(k, v) for k, v in sorted(values.items())])


def render(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4: ``# HELP``, ``# TYPE``, then the samples."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            selector = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{sample.suffix}{selector} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))

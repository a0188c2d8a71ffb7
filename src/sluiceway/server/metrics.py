"""Prometheus metrics of one server: time to first token, inter-token latency, tokens, streams, ends.

How it works: the hub calls :meth:`Metrics.stream_started` for every generation it starts and hangs
the returned :class:`StreamMetrics` on the generation's ``Meter``; the generation calls it at its
first token, at every later token and once at its end. Everything runs on the event loop, so the
numbers are plain Python ints and floats: a token costs one subtraction, one ``bisect`` and two
additions, with no lock and no prometheus-client call. Prometheus objects are built only when
``GET /metrics`` is scraped, by a collector registered in a :class:`CollectorRegistry` of this app
alone (never the global one: ``create_app`` may be called many times in one process).

Every series carries the labels ``model`` (the model that answered, after any fallback),
``provider`` (its kind: ``openai``, ``echo`` …) and ``protocol`` (the route: ``openai``,
``anthropic``, ``aisdk``, ``websocket``, ``seed``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from sluiceway.events import ErrorEvent, FinishReason
from sluiceway.server.settings import Settings
from sluiceway.streams.generation import Meter

CONTENT_TYPE = CONTENT_TYPE_LATEST
LABELS = ("model", "provider", "protocol")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
Labels = tuple[str, str, str]


@dataclass(slots=True)
class Histogram:
    """Bucket counts (``le`` upper bounds, then +Inf) and the sum of what was observed."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value (``le`` buckets: a value equal to a bound falls into that bound)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts in exposition order, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(slots=True)
class Series:
    """All numbers of one label set."""

    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    output_tokens: int = 0
    active: int = 0
    completed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    failed: dict[str, int] = field(default_factory=dict)


class StreamMetrics:
    """The metrics side of one generation (the ``observer`` of its ``Meter``)."""

    __slots__ = ("_itl", "_metrics", "_started_as", "outcome", "protocol")

    def __init__(self, metrics: Metrics, started_as: Labels) -> None:
        self._metrics = metrics
        self._started_as = started_as
        self.protocol = started_as[2]
        self._itl = metrics.series(started_as).itl
        self.outcome: str | None = None
        """How the generation ended once it has: its finish reason, or its error code."""

    def on_first_token(self, meter: Meter, now: float) -> None:
        self._metrics.series(self._labels(meter)).ttft.observe(now - meter.started)
        self._itl = self._metrics.series(self._labels(meter)).itl

    def on_token(self, meter: Meter, now: float) -> None:
        """A token after the first: the gap since the previous one (``meter.last_token``)."""
        gap = now - (meter.last_token or now)
        itl = self._itl
        itl.counts[bisect_left(itl.bounds, gap)] += 1
        itl.total += gap

    def on_finish(self, meter: Meter, reason: FinishReason, error: ErrorEvent | None) -> None:
        if self.outcome is not None:
            return
        self.outcome = reason
        self._metrics.series(self._started_as).active -= 1
        series = self._metrics.series(self._labels(meter))
        series.output_tokens += meter.usage_so_far().output_tokens
        if error is not None or reason == "error":
            code = error.code if error is not None else "internal"
            series.failed[code] = series.failed.get(code, 0) + 1
            self.outcome = code
        elif reason == "cancelled":
            series.cancelled += 1
        else:
            series.completed[reason] = series.completed.get(reason, 0) + 1

    def _labels(self, meter: Meter) -> Labels:
        model = meter.model or self._started_as[0]
        if model == self._started_as[0]:
            return self._started_as
        return self._metrics.labels(model, self.protocol)


class Metrics:
    """One server's metrics: plain numbers per label set, and a registry that renders them."""

    def __init__(self, providers: Mapping[str, str]) -> None:
        self.providers = dict(providers)
        self._series: dict[Labels, Series] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @classmethod
    def for_settings(cls, settings: Settings) -> Metrics:
        """Metrics for the models ``settings`` configures (their provider kinds label the series)."""
        return cls({name: model.provider for name, model in settings.models.items()})

    def labels(self, model: str, protocol: str) -> Labels:
        """The label set of ``model`` answering through ``protocol``."""
        return (model, self.providers.get(model, "unknown"), protocol or "unknown")

    def series(self, labels: Labels) -> Series:
        """The numbers of one label set (created empty on first use)."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = Series()
        return series

    def stream_started(self, model: str, protocol: str) -> StreamMetrics:
        """Count a new generation as active; return what its meter reports to."""
        labels = self.labels(model, protocol)
        self.series(labels).active += 1
        return StreamMetrics(self, labels)

    def items(self) -> list[tuple[Labels, Series]]:
        """Every label set seen so far, sorted."""
        return sorted(self._series.items())

    def render(self) -> bytes:
        """The text exposition format (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        ttft = HistogramMetricFamily(
            "sluiceway_time_to_first_token_seconds",
            "Seconds from the start of a generation to its first text.",
            labels=LABELS,
        )
        itl = HistogramMetricFamily(
            "sluiceway_inter_token_latency_seconds",
            "Seconds between two consecutive texts of one generation.",
            labels=LABELS,
        )
        tokens = CounterMetricFamily(
            "sluiceway_output_tokens", "Output tokens generated (the provider's count).", labels=LABELS
        )
        active = GaugeMetricFamily("sluiceway_active_streams", "Generations running now.", labels=LABELS)
        completed = CounterMetricFamily(
            "sluiceway_generations_completed",
            "Generations that ended normally, by finish reason.",
            labels=(*LABELS, "reason"),
        )
        cancelled = CounterMetricFamily(
            "sluiceway_generations_cancelled",
            "Generations cancelled (Stop, or the last reader left).",
            labels=LABELS,
        )
        failed = CounterMetricFamily(
            "sluiceway_generations_failed",
            "Generations that ended in an error, by error code.",
            labels=(*LABELS, "code"),
        )
        for labels, s in self.metrics.items():
            values = list(labels)
            ttft.add_metric(values, s.ttft.buckets(), s.ttft.total)
            itl.add_metric(values, s.itl.buckets(), s.itl.total)
            tokens.add_metric(values, s.output_tokens)
            active.add_metric(values, s.active)
            cancelled.add_metric(values, s.cancelled)
            for reason, count in sorted(s.completed.items()):
                completed.add_metric([*values, reason], count)
            for code, count in sorted(s.failed.items()):
                failed.add_metric([*values, code], count)
        yield from (ttft, itl, tokens, active, completed, cancelled, failed)

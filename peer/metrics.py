"""Prometheus metrics, read from the daemon's Status at scrape time: the
training loop pays nothing for them, and the numbers cannot disagree with
`dasgd-peer status`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dasgd.v1 import peer_pb2


class StatusCollector(Collector):
    def __init__(self, status: Callable[[], peer_pb2.StatusResponse]):
        self._status = status

    def collect(self) -> Iterator:
        s = self._status()
        labels = ["peer", "run"]
        ids = [s.id, s.run_id]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(name, doc, labels=labels)
            metric.add_metric(ids, value)
            return metric

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            metric = CounterMetricFamily(name, doc, labels=labels)
            metric.add_metric(ids, value)
            return metric

        yield counter("dasgd_steps", "Local training steps taken", s.step)
        yield gauge("dasgd_loss", "Training loss of the last local batch", s.loss)
        yield gauge("dasgd_accuracy", "Test accuracy at the last evaluation", s.accuracy)
        yield gauge("dasgd_samples_per_second", "Local training throughput", s.samples_per_s)
        yield counter("dasgd_samples", "Training examples in local steps", s.samples)
        yield counter("dasgd_updates_applied", "Received updates applied", s.updates_applied)
        yield counter("dasgd_updates_rejected", "Received updates rejected", s.updates_rejected)
        yield counter(
            "dasgd_updates_discarded",
            "Received updates the strategy did not apply (late round model, already held)",
            s.updates_discarded,
        )
        yield gauge(
            "dasgd_bootstrap_reachable",
            "1 if the last call to the bootstrap got through, else 0",
            1.0 if s.bootstrap_reachable else 0.0,
        )
        yield counter("dasgd_sent_bytes", "Payload bytes sent to neighbors", s.bytes_sent)
        yield counter("dasgd_received_bytes", "Payload bytes received", s.bytes_received)
        yield gauge("dasgd_staleness_avg", "Average staleness of applied updates", s.staleness.avg)
        yield gauge("dasgd_staleness_max", "Maximum staleness of applied updates", s.staleness.max)
        quantiles = GaugeMetricFamily(
            "dasgd_staleness", "Staleness percentiles (recent window)", labels=[*labels, "quantile"]
        )
        for q, value in (
            ("0.5", s.staleness.p50),
            ("0.95", s.staleness.p95),
            ("0.99", s.staleness.p99),
        ):
            quantiles.add_metric([*ids, q], value)
        yield quantiles
        yield gauge(
            "dasgd_neighbors",
            "Neighbors this peer sends to",
            sum(1 for n in s.neighbors if n.sending),
        )
        neighbor_labels = [*labels, "neighbor"]
        per_neighbor = {
            "queue_depth": GaugeMetricFamily(
                "dasgd_neighbor_queue_depth", "Updates waiting to be sent", labels=neighbor_labels
            ),
            "dropped": CounterMetricFamily(
                "dasgd_neighbor_dropped", "Updates dropped on a full queue", labels=neighbor_labels
            ),
            "coalesced": CounterMetricFamily(
                "dasgd_neighbor_coalesced",
                "Updates summed into a queued one",
                labels=neighbor_labels,
            ),
            "send_errors": CounterMetricFamily(
                "dasgd_neighbor_send_errors", "Failed Push streams", labels=neighbor_labels
            ),
            "resent": CounterMetricFamily(
                "dasgd_neighbor_resent",
                "Updates sent again after a Push stream failed before confirming them",
                labels=neighbor_labels,
            ),
        }
        for n in s.neighbors:
            for field, metric in per_neighbor.items():
                metric.add_metric([*ids, n.id], getattr(n, field))
        yield from per_neighbor.values()


def serve_metrics(
    port: int, status: Callable[[], peer_pb2.StatusResponse], host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """Starts the /metrics endpoint (`.server_port` is the bound port). Each daemon has
    its own registry, so several can live in one process (tests, embedding)."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server

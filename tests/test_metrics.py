"""Prometheus endpoint of a running peer reports what Status reports."""

import re
import urllib.request

import pytest

from bootstrap.service import BootstrapDaemon
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from tests.conftest import wait_until


@pytest.fixture
def peer():
    bootstrap = BootstrapDaemon("127.0.0.1:0", ttl=5.0).start()
    daemon = PeerDaemon(
        PeerConfig(bootstrap=bootstrap.address, run_id="metrics", metrics_port=0, step_delay_ms=5)
    )
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.shutdown()
        bootstrap.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_metrics_endpoint_tracks_training(peer):
    wait_until(lambda: peer.trainer.stats.step >= 20 and peer.trainer.stats.accuracy > 0, 30)
    text = scrape(peer.metrics_port)
    assert f'peer="{peer.member_id}"' in text and 'run="metrics"' in text
    assert metric(text, "dasgd_steps_total") >= 20
    assert 0 < metric(text, "dasgd_accuracy") <= 1
    assert metric(text, "dasgd_staleness_avg") >= 0
    assert 'quantile="0.95"' in text
    later = wait_until(
        lambda: (
            metric(scrape(peer.metrics_port), "dasgd_steps_total") >= 40
            and scrape(peer.metrics_port)
        ),
        30,
    )
    assert metric(later, "dasgd_steps_total") > metric(text, "dasgd_steps_total")


def test_status_returns_evaluations_since_a_time(peer):
    wait_until(lambda: len(peer.trainer.evaluations) >= 5, 30)
    everything = peer.status(evaluations_since=1.0).evaluations
    assert len(everything) >= 5 and peer.status().evaluations == []
    middle = everything[len(everything) // 2].at
    later = peer.status(evaluations_since=middle).evaluations
    assert later and all(e.at > middle for e in later)
    steps = [e.step for e in everything]
    assert steps == sorted(steps) and all(0 <= e.accuracy <= 1 for e in everything)


def test_updates_the_strategy_discarded_are_shown(peer):
    # Before, only the trainer counted them: Status and /metrics had applied
    # and rejected updates, and a late round model or a warm start's
    # duplicate was in neither.
    wait_until(lambda: peer.trainer.stats.step >= 5, 30)
    peer.trainer.stats.updates_discarded = 3
    assert peer.status().updates_discarded == 3
    assert metric(scrape(peer.metrics_port), "dasgd_updates_discarded_total") == 3

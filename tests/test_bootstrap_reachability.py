"""A peer says whether its bootstrap answers: Status, `dasgd-peer status`
and /metrics. Before, a peer whose --bootstrap was mistyped trained alone,
and only warnings in its log told."""

import socket
import time
from collections.abc import Iterator

import pytest

from bootstrap.service import BootstrapDaemon
from peer.cli import _format_bootstrap
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from tests.conftest import wait_until
from tests.test_metrics import metric, scrape


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """A loopback address that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def start_peer(bootstrap: str, **settings) -> PeerDaemon:
    daemon = PeerDaemon(
        PeerConfig(bootstrap=bootstrap, run_id="reach", metrics_port=0, step_delay_ms=5, **settings)
    )
    daemon.start()
    return daemon


def test_a_bootstrap_that_never_answered_is_shown_with_a_hint(refusing_address):
    started = time.time()
    peer = start_peer(refusing_address, join_timeout_s=0.5)
    try:
        status = peer.status()
        assert status.state == "TRAINING"
        assert status.bootstrap == refusing_address
        assert not status.bootstrap_reachable and not status.bootstrap_ever_joined
        assert status.bootstrap_error == "UNAVAILABLE"
        assert started <= status.bootstrap_unreachable_since <= time.time()
        line = _format_bootstrap(status, now=status.bootstrap_unreachable_since + 7)
        assert line == (
            f"bootstrap {refusing_address} UNREACHABLE for 7 s (UNAVAILABLE): never reached "
            "since start: is --bootstrap right? training with the peers it can find meanwhile"
        )
        assert metric(scrape(peer.metrics_port), "dasgd_bootstrap_reachable") == 0
    finally:
        peer.shutdown()


def test_a_bootstrap_that_goes_away_and_comes_back_is_followed():
    bootstrap = BootstrapDaemon("127.0.0.1:0", ttl=1.5).start()
    address = bootstrap.address
    peer = start_peer(address)
    try:
        status = peer.status()
        assert status.bootstrap_reachable and status.bootstrap_ever_joined
        assert status.bootstrap_unreachable_since == 0 and status.bootstrap_error == ""
        assert _format_bootstrap(status).startswith(f"bootstrap {address} reachable")
        assert metric(scrape(peer.metrics_port), "dasgd_bootstrap_reachable") == 1

        gone_at = time.time()
        bootstrap.stop(grace=0)
        assert wait_until(lambda: not peer.status().bootstrap_reachable, 10)
        status = peer.status()
        assert status.bootstrap_ever_joined and status.bootstrap_unreachable_since >= gone_at
        assert "training with the neighbors it knows" in _format_bootstrap(status)
        assert metric(scrape(peer.metrics_port), "dasgd_bootstrap_reachable") == 0

        bootstrap = BootstrapDaemon(address, ttl=1.5).start()
        assert wait_until(lambda: peer.status().bootstrap_reachable, 15)
        assert peer.status().bootstrap_unreachable_since == 0
    finally:
        peer.shutdown()
        bootstrap.stop()

"""Start-up as an operator meets it: a stop while starting, and a peer whose
bootstrap is down."""

import signal
import socket
import time

from tests.conftest import member_ids, peer_status, start_peer, wait_until


def test_sigterm_while_waiting_for_members_leaves_at_once_and_exits_0(spawn):
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "60").address()
    peer = start_peer(spawn, bootstrap, "early", "--min-members", "3")
    peer_id = peer.wait_for_line("listening on").split()[1]  # announced before waiting
    wait_until(lambda: "waiting up to" in peer.log(), 30)
    assert member_ids(bootstrap, "early") == {peer_id}
    peer.signal(signal.SIGTERM)
    assert peer.process.wait(20) == 0
    # Left: not dropped by its 60 s lease.
    assert member_ids(bootstrap, "early") == set()


def test_sigterm_while_the_bootstrap_is_unreachable_exits_0(spawn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    peer = start_peer(spawn, f"127.0.0.1:{closed}", "nobody", "--join-timeout-s", "60")
    wait_until(lambda: "bootstrap not reachable" in peer.log(), 60)
    peer.signal(signal.SIGTERM)
    assert peer.process.wait(20) == 0


def test_a_peer_whose_bootstrap_is_down_trains_alone_without_waiting_for_members(spawn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    started = time.monotonic()
    peer = start_peer(spawn, f"127.0.0.1:{closed}", "alone", "--join-timeout-s", "1")
    address = peer.address()
    wait_until(lambda: peer_status(address).step > 0, 30)
    # Not the 60 s it used to wait for a "first member" it did not count itself as.
    assert time.monotonic() - started < 40
    assert peer_status(address).state == "TRAINING"

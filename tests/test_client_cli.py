"""`dasgd-peer status|peers|leave`: what an operator reads."""

import socket

import grpc

from dasgd.v1 import peer_pb2
from peer.cli import _format_status, _hint, as_plain_dict, build_parser
from tests.conftest import peer_cli


def test_status_text_says_how_the_peer_started():
    resumed = _format_status(peer_pb2.StatusResponse(resumed_step=1359, checkpoint_step=1400))
    assert "resumed from its checkpoint at step 1359" in resumed
    assert "last checkpoint at step 1400" in resumed
    warm = _format_status(peer_pb2.StatusResponse(warm_started_from="p-1", initial_accuracy=0.93))
    assert "warm-started from p-1, accuracy 0.9300 before its first step" in warm
    assert "started from the initial model" in _format_status(peer_pb2.StatusResponse())
    counts = _format_status(peer_pb2.StatusResponse(updates_applied=9, updates_discarded=2))
    assert "applied 9, rejected 0, discarded 2" in counts


def test_a_peer_that_does_not_answer_gets_a_hint_about_tls():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = peer_cli("status", "--peer", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "If it uses TLS, pass --tls-ca" in result.stderr
    assert "Traceback" not in result.stderr


def test_hints_for_a_missing_token_and_a_missing_client_certificate():
    args = build_parser().parse_args(["status", "--peer", "h:1", "--tls-ca", "ca.pem"])
    assert "--token-file" in _hint(grpc.StatusCode.UNAUTHENTICATED, args)
    assert "--tls-cert/--tls-key" in _hint(grpc.StatusCode.UNAVAILABLE, args)
    assert _hint(grpc.StatusCode.INVALID_ARGUMENT, args) == ""


def test_status_json_gives_64_bit_counts_as_numbers():
    status = peer_pb2.StatusResponse(id="p-1", step=2**40, bytes_sent=7)
    status.vector_clock["p-2"] = 12
    status.staleness.max = 3
    status.neighbors.add(id="p-2", updates_sent=5, staleness=peer_pb2.StalenessStats(max=4))
    shown = as_plain_dict(status)
    assert shown["step"] == 2**40 and shown["bytesSent"] == 7
    assert shown["vectorClock"] == {"p-2": 12}
    assert shown["staleness"]["max"] == 3 and shown["staleness"]["count"] == 0
    neighbor = shown["neighbors"][0]
    assert neighbor["updatesSent"] == 5 and neighbor["staleness"]["max"] == 4
    assert shown["updatesApplied"] == 0  # every field shown, zero included
    assert shown["id"] == "p-1"

"""Start-up failures a new user meets first: a taken port, a TLS key that is
not the certificate's, a bad environment variable. Each must end the
daemon with one sentence naming the cause and a non-zero exit, no traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.cli import build_parser
from peer.config import load_config
from rpc import Security, start_server
from tests.certs import Pki, make_pki
from tests.daemons import ROOT


def cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0):
    """`python -m MODULE ARGS` from this checkout, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket is bound and listening on for the whole test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def assert_one_clear_line(result: subprocess.CompletedProcess, prog: str, message: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "Failed to bind" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_start_server_names_a_taken_port(taken_port: int):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken_port}: address already"):
        start_server(f"127.0.0.1:{taken_port}", Security(), lambda server: [])


def test_start_server_names_an_address_of_another_machine():
    # 192.0.2.0/24 is reserved for documentation: never an address of this machine.
    with pytest.raises(OSError, match="cannot listen on 192.0.2.1:0: not an address of this"):
        start_server("192.0.2.1:0", Security(insecure=True), lambda server: [])


def test_tls_files_are_checked_when_loaded(pki: Pki, tmp_path: Path):
    daemon, other = pki.daemon, pki.client
    with pytest.raises(ValueError, match=f"TLS key {other.key} does not match certificate"):
        Security.from_files(tls_cert=str(daemon.cert), tls_key=str(other.key))
    with pytest.raises(ValueError, match=f"TLS certificate {daemon.key} is not a PEM cert"):
        Security.from_files(tls_cert=str(daemon.key), tls_key=str(daemon.key))
    with pytest.raises(ValueError, match=f"TLS CA bundle {daemon.key} holds no usable"):
        Security.from_files(tls_ca=str(daemon.key))
    missing = tmp_path / "missing.pem"
    with pytest.raises(OSError, match=f"cannot read TLS certificate {missing}: No such file"):
        Security.from_files(tls_cert=str(missing), tls_key=str(daemon.key))
    good = Security.from_files(
        tls_cert=str(daemon.cert), tls_key=str(daemon.key), tls_ca=str(pki.ca.cert)
    )
    assert good.describe() == "no token, mTLS"


# The daemons' command lines up to the listen address; "--bootstrap
# 127.0.0.1:1" is never reached: the peer stops before it joins.
DAEMONS = {
    "dasgd-bootstrap": ("bootstrap.cli", "run"),
    "dasgd-peer": ("peer.cli", "run", "--bootstrap", "127.0.0.1:1"),
}


@pytest.mark.parametrize("program", DAEMONS)
def test_a_daemon_on_a_taken_port_says_so_before_serving(program: str, taken_port: int):
    result = cli(*DAEMONS[program], "--listen", f"127.0.0.1:{taken_port}", timeout=60)
    assert result.returncode == 2 and "listening on" not in result.stdout
    assert_one_clear_line(
        result, program, f"cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )


@pytest.mark.parametrize("program", DAEMONS)
def test_a_daemon_with_a_key_of_another_certificate_says_so(program: str, pki: Pki):
    result = cli(
        *DAEMONS[program], "--listen", "127.0.0.1:0",
        "--tls-cert", str(pki.daemon.cert), "--tls-key", str(pki.client.key),
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert_one_clear_line(
        result, program, f"TLS key {pki.client.key} does not match certificate {pki.daemon.cert}"
    )


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DASGD_QUEUE_SIZE", "abc", "DASGD_QUEUE_SIZE=abc: not an integer"),
        ("DASGD_RHO", "x", "DASGD_RHO=x: not a number"),
        ("DASGD_WARM_START", "maybe", "DASGD_WARM_START=maybe: not a boolean"),
    ],
)
def test_a_bad_environment_variable_is_named(name: str, value: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, {name: value})


def test_a_bad_setting_in_the_config_file_is_named(tmp_path: Path):
    config_file = tmp_path / "peer.toml"
    config_file.write_text('queue_size = "many"\n')
    with pytest.raises(ValueError, match=re.escape(f"{config_file}: queue_size = 'many': not an")):
        load_config(None, {"DASGD_CONFIG": str(config_file)})


def test_a_config_file_that_is_missing_or_not_toml_is_named(tmp_path: Path):
    # Before: "[Errno 2] No such file or directory: ..." and "Invalid value
    # (at end of document)", the second without the file's name.
    missing = tmp_path / "missing.toml"
    with pytest.raises(ValueError, match=re.escape(f"--config {missing}: No such file")):
        load_config(None, {"DASGD_CONFIG": str(missing)})
    broken = tmp_path / "broken.toml"
    broken.write_text("queue_size = [\n")
    with pytest.raises(ValueError, match=re.escape(f"--config {broken}: not valid TOML: ")):
        load_config(None, {"DASGD_CONFIG": str(broken)})


def test_peer_cli_names_a_bad_environment_variable():
    result = cli("peer.cli", "run", env={"DASGD_QUEUE_SIZE": "abc"}, timeout=60)
    assert result.returncode == 2
    assert_one_clear_line(result, "dasgd-peer", "DASGD_QUEUE_SIZE=abc: not an integer")


def run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def test_peer_help_shows_each_default_once_and_its_environment_variable():
    text = " ".join(run_parser().format_help().split())  # argparse wraps anywhere
    assert not re.search(r"\(default[^)]*\)\s*\(default", text), text
    assert "(default: '')" not in text
    assert "(then coalesce/drop) (default 8) [env DASGD_QUEUE_SIZE]" in text
    assert "(default: the bound address) [env DASGD_ADVERTISE]" in text
    assert "network (default on) [env DASGD_WARM_START]" in text
    for action in run_parser()._actions:
        flag = action.option_strings[-1] if action.option_strings else ""
        if flag.startswith("--") and flag != "--help":
            name = flag[2:].removeprefix("no-").replace("-", "_").upper()
            assert f"[env DASGD_{name}]" in action.help, (flag, action.help)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workload", "nope"], "--workload 'nope': use one of digits-mlp, digits-wide or"),
        (["--workload", "nosuch.mod:make"], "--workload 'nosuch.mod:make': no module 'nosuch.mod'"),
        (["--strategy", "bogus"], "--strategy 'bogus': choose one of adag, aeasgd, average"),
        (["--compression", "zip"], "--compression 'zip': choose raw, fp16, bf16"),
        # Before: a ValueError traceback; the others were accepted, and a run
        # with a target of 2 or a slowdown of 0 started.
        (["--slowdowns", "x,1"], "--slowdowns 'x,1': give numbers, e.g. 4,1,1,1"),
        (["--slowdowns", "0,1"], "--slowdowns '0,1': every factor must be > 0"),
        (["--slowdowns", "1,1,1"], "--slowdowns has 3 factors for 2 peers"),
        (["--target-accuracy", "95"], "--target-accuracy 95.0: a fraction in [0, 1] (0.95 for"),
        (["--max-seconds", "0"], "--max-seconds 0.0: must be > 0"),
    ],
)
def test_local_refuses_a_bad_peer_flag_before_starting_anything(
    flags: list[str], message: str, tmp_path: Path
):
    # Before: the bootstrap and the peers started, and the launcher printed
    # the tail of a peer's log (its whole config) seconds later.
    logs = tmp_path / "logs"
    result = cli("peer.cli", "local", "--peers", "2", "--log-dir", str(logs), *flags, timeout=60)
    assert result.returncode == 2
    assert_one_clear_line(result, "dasgd-peer local", message)
    assert not logs.exists() or not any(logs.iterdir()), "a process was started"


def test_a_workload_factory_that_is_missing_is_named_without_a_traceback():
    # Before: ModuleNotFoundError / AttributeError tracebacks from the daemon.
    result = cli(
        *DAEMONS["dasgd-peer"], "--listen", "127.0.0.1:0", "--workload", "peer.workloads:nothing",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert_one_clear_line(
        result, "dasgd-peer", "workload 'peer.workloads:nothing': 'peer.workloads' has no factory"
    )


def test_the_names_checked_before_torch_are_the_registries():
    from peer.config import STRATEGY_NAMES, WORKLOAD_NAMES
    from peer.strategies import REGISTRY
    from peer.workloads import BUILTIN

    assert sorted(STRATEGY_NAMES) == sorted(REGISTRY)
    assert sorted(WORKLOAD_NAMES) == sorted(BUILTIN)


@pytest.mark.parametrize(
    "factory, message",
    [
        ("float64", "parameter 0.weight is float64; updates are exchanged as float32"),
        ("on_meta_device", "parameter 0.weight is on meta; peers train on the CPU"),
        ("not_a_workload", "the factory returned dict, not a peer.workloads.Workload"),
    ],
)
def test_a_workload_the_wire_cannot_carry_is_refused_before_training(factory: str, message: str):
    # Before: the daemon started, its training thread died on the first step
    # (a float64 gradient into a float32 update, numpy() of a non-CPU tensor)
    # and the process exited 0.
    result = cli(
        *DAEMONS["dasgd-peer"], "--listen", "127.0.0.1:0",
        "--workload", f"tests.odd_workloads:{factory}", timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    expected = f"workload 'tests.odd_workloads:{factory}': {message}"
    assert_one_clear_line(result, "dasgd-peer", expected)


def test_the_installed_command_finds_a_workload_module_in_its_directory(tmp_path: Path):
    # Before: `dasgd-peer` (the console script, unlike `python -m`) did not
    # search the directory it ran in: "no module 'my_workload' to import".
    (tmp_path / "my_workload.py").write_text(
        "def make(shard_index=0, shard_count=1, **kwargs):\n"
        "    raise ValueError('my_workload.make was called')\n"
    )
    script = Path(sys.executable).with_name("dasgd-peer")
    result = subprocess.run(
        [str(script), "run", "--bootstrap", "127.0.0.1:1", "--listen", "127.0.0.1:0",
         "--workload", "my_workload:make"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert_one_clear_line(result, "dasgd-peer", "my_workload.make was called")


def test_a_taken_metrics_port_is_named_before_joining(taken_port: int):
    # Before: found only after the join (15 s with no bootstrap), as
    # "[Errno 98] Address already in use"; a port above 65535 was a traceback.
    result = cli(*DAEMONS["dasgd-peer"], "--listen", "127.0.0.1:0",
                 "--metrics-port", str(taken_port), timeout=60)  # fmt: skip
    assert result.returncode == 2 and "going on as" not in result.stderr
    assert_one_clear_line(
        result, "dasgd-peer", f"--metrics-port {taken_port}: cannot listen on 127.0.0.1:"
    )
    result = cli(*DAEMONS["dasgd-peer"], "--listen", "127.0.0.1:0", "--metrics-port", "99999")
    assert result.returncode == 2
    assert_one_clear_line(result, "dasgd-peer", "--metrics-port 99999: -1 (off), 0 (any")


@pytest.mark.parametrize(
    "where, message",
    [("file", "a file, not a directory"), ("file/sub", "Not a directory")],
)
def test_an_unusable_checkpoint_directory_is_refused_at_start(
    tmp_path: Path, where: str, message: str
):
    # Before: the peer trained, and every checkpoint failed (an ERROR in its
    # log every interval) with nothing saved.
    (tmp_path / "file").write_text("not a directory")
    result = cli(*DAEMONS["dasgd-peer"], "--listen", "127.0.0.1:0",
                 "--checkpoint-dir", str(tmp_path / where), timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert_one_clear_line(result, "dasgd-peer", f"--checkpoint-dir {tmp_path / where}: {message}")

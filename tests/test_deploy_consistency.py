"""Deploy files agree with the daemons and with deploy/README.md: every flag,
environment variable and port they use exists and lines up, the compose
file really uses the token the README promises, and the image's health
check works with the TLS the Dockerfile suggests."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from bootstrap.cli import parse_args
from bootstrap.service import BootstrapDaemon
from peer.cli import build_parser
from rpc import Security
from rpc.server import split_host_port
from tests.certs import Pki, issue, make_pki
from tests.test_deploy import (
    BOOTSTRAP_UNIT,
    COMPOSE,
    DEPLOY,
    K8S_BOOTSTRAP,
    K8S_PEERS,
    PEER_UNIT,
    compose_commands,
    exec_start,
    k8s_args,
    peer_config,
    readme_env,
)

DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
TOKEN = "/run/secrets/dasgd-token"


def bootstrap_help() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["run", "--help"], {})
    return out.getvalue()


def peer_run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def env_names(help_text: str) -> set[str]:
    return set(re.findall(r"\[env (DASGD_[A-Z_]+)\]", " ".join(help_text.split())))


def flags(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


BOOTSTRAP_ENV = env_names(bootstrap_help())
PEER_ENV = env_names(peer_run_parser().format_help())
HEALTHCHECK_ENV = {
    "DASGD_HEALTHCHECK_SERVER_NAME",
    "DASGD_TLS_CERT",
    "DASGD_TLS_KEY",
    "DASGD_TLS_CA",
}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "token")


def test_help_texts_name_the_environment_variables():
    assert {"DASGD_BOOTSTRAP_LISTEN", "DASGD_TOKEN_FILE", "DASGD_INSECURE"} <= BOOTSTRAP_ENV
    assert {"DASGD_BOOTSTRAP", "DASGD_QUEUE_SIZE", "DASGD_CONFIG"} <= PEER_ENV


def test_every_environment_variable_in_deploy_files_is_read_by_something():
    known = BOOTSTRAP_ENV | PEER_ENV | HEALTHCHECK_ENV
    for path in deploy_files():
        for name in set(re.findall(r"\bDASGD_[A-Z_]*[A-Z]\b", path.read_text())):
            assert name in known, f"{path.relative_to(DEPLOY)} uses {name}, which nothing reads"


def test_readme_environment_files_name_their_own_daemons_variables():
    assert set(readme_env("/etc/dasgd/bootstrap.env")) <= BOOTSTRAP_ENV
    assert set(readme_env("/etc/dasgd/peer-worker1.env")) <= PEER_ENV


def test_every_flag_the_readme_names_exists():
    known = flags(peer_run_parser()) | {
        option
        for line in bootstrap_help().splitlines()
        for option in re.findall(r"(--[a-z][a-z-]+)", line)
    }
    named = set(re.findall(r"`(--[a-z][a-z-]+)`", README.read_text()))
    assert named and named <= known, named - known


def every_command_line() -> list[tuple[str, str, list[str]]]:
    """(file, daemon, argv after the program name) of each command line in deploy/."""
    found = []
    for service, argv in compose_commands(COMPOSE.read_text()).items():
        found.append(
            ("compose " + service, "bootstrap" if service == "bootstrap" else "peer", argv)
        )
    [bootstrap] = k8s_args(K8S_BOOTSTRAP.read_text())
    [peer] = k8s_args(K8S_PEERS.read_text())
    found += [("k8s bootstrap", "bootstrap", bootstrap), ("k8s peers", "peer", peer)]
    found.append(("systemd bootstrap", "bootstrap", exec_start(BOOTSTRAP_UNIT)[1:]))
    found.append(("systemd peer", "peer", exec_start(PEER_UNIT)[1:]))
    return found


COMMAND_LINES = every_command_line()


@pytest.mark.parametrize("where, daemon, argv", COMMAND_LINES, ids=[w for w, _, _ in COMMAND_LINES])
def test_every_flag_on_a_deploy_command_line_is_accepted(where, daemon, argv):
    known = (
        flags(peer_run_parser())
        if daemon == "peer"
        else set(re.findall(r"(--[a-z][a-z-]+)", bootstrap_help()))
    )
    used = {a for a in argv if a.startswith("--")}
    assert used <= known, f"{where}: {used - known}"
    if daemon == "peer":
        build_parser().parse_args(argv)  # exits on a value the flag refuses
    else:
        parse_args(argv, {"DASGD_BOOTSTRAP_LISTEN": "0.0.0.0:7000"})


def test_compose_uses_the_token_the_readme_promises():
    text = COMPOSE.read_text()
    assert "with a token" in README.read_text()
    commands = compose_commands(text)
    bootstrap = parse_args(commands.pop("bootstrap"), {})
    assert bootstrap.token_file == TOKEN
    for args in commands.values():
        assert peer_config(args).token_file == TOKEN
    # One secret, from deploy/token, mounted in every service; never committed.
    assert re.search(r"^secrets:\n  dasgd-token:\n    file: \./token$", text, re.M)
    assert text.count("- dasgd-token") == 2  # the bootstrap's and the peers' shared one
    assert "/token" in (DEPLOY / ".gitignore").read_text().split()
    assert "> deploy/token" in README.read_text()


def test_compose_yaml_mounts_the_secret_in_every_service():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["secrets"] == {"dasgd-token": {"file": "./token"}}
    for name, service in compose["services"].items():
        assert service["secrets"] == ["dasgd-token"], name


def port_of(argv: list[str], flag: str) -> int:
    return split_host_port(argv[argv.index(flag) + 1])[1] if flag in argv else -1


def test_ports_line_up_across_files():
    dockerfile = DOCKERFILE.read_text()
    bootstrap_stage, peer_stage = dockerfile.split("FROM base AS peer")
    env_listen = re.search(r"DASGD_BOOTSTRAP_LISTEN=(\S+)", bootstrap_stage).group(1)
    bootstrap_port = split_host_port(env_listen)[1]
    assert re.search(rf"^EXPOSE {bootstrap_port}$", bootstrap_stage, re.M)
    assert f'"dasgd-healthcheck", "127.0.0.1:{bootstrap_port}"' in bootstrap_stage
    peer_port = int(re.search(r"^EXPOSE (\d+)$", peer_stage, re.M).group(1))

    compose = COMPOSE.read_text()
    commands = compose_commands(compose)
    assert port_of(commands["bootstrap"], "--listen") == bootstrap_port
    assert f'"127.0.0.1:{bootstrap_port}:{bootstrap_port}"' in compose
    assert f'"dasgd-healthcheck", "127.0.0.1:{bootstrap_port}"' in compose
    assert f'"dasgd-healthcheck", "127.0.0.1:{peer_port}"' in compose
    for service, argv in commands.items():
        if service != "bootstrap":
            assert port_of(argv, "--listen") == peer_port
            assert port_of(argv, "--advertise") == peer_port
            assert argv[argv.index("--bootstrap") + 1] == f"bootstrap:{bootstrap_port}"

    [bootstrap] = k8s_args(K8S_BOOTSTRAP.read_text())
    assert port_of(bootstrap, "--listen") == bootstrap_port
    assert f"containerPort: {bootstrap_port}" in K8S_BOOTSTRAP.read_text()
    peers = K8S_PEERS.read_text()
    [peer] = k8s_args(peers)
    assert port_of(peer, "--listen") == peer_port
    assert peer[peer.index("--bootstrap") + 1] == f"dasgd-bootstrap:{bootstrap_port}"
    metrics = int(peer[peer.index("--metrics-port") + 1])
    assert f"containerPort: {peer_port}" in peers and f"containerPort: {metrics}" in peers


def test_dockerfile_bootstrap_default_command_starts_with_its_environment():
    stage = DOCKERFILE.read_text().split("FROM base AS bootstrap")[1].split("FROM base AS")[0]
    env = dict(re.findall(r"(DASGD_[A-Z_]+)=(\S+)", stage))
    cmd = shlex.split(re.search(r'^CMD \["(.*)"\]$', stage, re.M).group(1))
    args = parse_args(cmd, {**env, "DASGD_INSECURE": "1"})
    assert (args.listen, args.state) == ("0.0.0.0:7000", "/var/lib/dasgd/bootstrap.db")


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(cert, key, ca=None) -> dict[str, str]:
    env = {"DASGD_TLS_CERT": str(cert), "DASGD_TLS_KEY": str(key)}
    return env | ({"DASGD_TLS_CA": str(ca)} if ca else {})


def test_healthcheck_speaks_tls_and_mutual_tls_from_the_daemons_variables(pki: Pki, capsys):
    healthcheck = load_healthcheck()
    env = tls_env(pki.daemon.cert, pki.daemon.key, pki.ca.cert)
    security = Security.from_files(None, env["DASGD_TLS_CERT"], env["DASGD_TLS_KEY"],
                                   env["DASGD_TLS_CA"])  # fmt: skip
    with BootstrapDaemon("127.0.0.1:0", security=security) as daemon:
        assert healthcheck.main([daemon.address], env) == 0
        assert healthcheck.main([daemon.address], {}) == 1  # plaintext cannot talk to it
    assert "SERVING" in capsys.readouterr().out


def test_healthcheck_with_a_certificate_that_does_not_name_loopback(pki: Pki, tmp_path: Path):
    healthcheck = load_healthcheck()
    named = issue(pki.ca, tmp_path, "named", alt_names=("DNS:bootstrap.example.internal",))
    env = tls_env(named.cert, named.key, pki.ca.cert)
    security = Security.from_files(None, str(named.cert), str(named.key))
    with BootstrapDaemon("127.0.0.1:0", security=security) as daemon:
        assert healthcheck.main([daemon.address], env) == 1
        override = ["--server-name", "bootstrap.example.internal", daemon.address]
        assert healthcheck.main(override, env) == 0
        by_env = env | {"DASGD_HEALTHCHECK_SERVER_NAME": "bootstrap.example.internal"}
        assert healthcheck.main([daemon.address], by_env) == 0
    assert healthcheck.main(["--server-name"], env) == 2

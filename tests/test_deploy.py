"""Deploy files: present, well-formed, and using only flags the daemons accept.

PyYAML is not a dependency, so the YAML is read with two narrow readers
(compose `command:` values, Kubernetes `args:` lists) that are enough to get
the command lines out; where PyYAML is installed the files are also parsed
in full.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from bootstrap.cli import parse_args
from bootstrap.service import BootstrapDaemon
from peer.cli import build_parser
from peer.config import PeerConfig, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S_BOOTSTRAP = DEPLOY / "k8s" / "bootstrap.yaml"
K8S_PEERS = DEPLOY / "k8s" / "peers.yaml"
BOOTSTRAP_UNIT = DEPLOY / "systemd" / "dasgd-bootstrap.service"
PEER_UNIT = DEPLOY / "systemd" / "dasgd-peer@.service"

# Set on the command line of every peer in compose and Kubernetes.
PEER_REQUIRED = {
    "--bootstrap",
    "--listen",
    "--advertise",
    "--run-id",
    "--workload",
    "--strategy",
    "--shard",
}


def compose_commands(text: str) -> dict[str, list[str]]:
    """`command:` of each service, plain or folded (`>-`)."""
    commands: dict[str, list[str]] = {}
    service = None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.fullmatch(r"  [a-z0-9-]+:", line):
            service = line.strip()[:-1]
        match = re.fullmatch(r"(\s+)command: (.*)", line)
        if match and service:
            indent, value = len(match.group(1)), match.group(2)
            if value == ">-":
                folded = []
                for following in lines[index + 1 :]:
                    if len(following) - len(following.lstrip()) <= indent:
                        break
                    folded.append(following.strip())
                value = " ".join(folded)
            commands[service] = shlex.split(value)
    return commands


def k8s_args(text: str) -> list[list[str]]:
    """Each container's `args:` list, unquoted."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.fullmatch(r"(\s+)args:", line)
        if not match:
            continue
        args = []
        for following in lines[index + 1 :]:
            item = re.fullmatch(r"\s+- (.*)", following)
            if not item or len(following) - len(following.lstrip()) < len(match.group(1)):
                break
            args.append(item.group(1).strip().strip('"'))
        found.append(args)
    return found


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def exec_start(path: Path) -> list[str]:
    return shlex.split(unit(path)["Service"]["ExecStart"].replace("\\\n", " "))


def peer_config(args: list[str], environ: dict[str, str] | None = None) -> PeerConfig:
    """What the real `dasgd-peer` makes of a deploy file's command line."""
    assert args[0] == "run", args
    config = load_config(build_parser().parse_args(args), environ or {})
    config.shard_pair()
    return config


def readme_env(name: str) -> dict[str, str]:
    """The example environment file `name` shown in deploy/README.md."""
    text = (DEPLOY / "README.md").read_text()
    block = text[text.index(f"# {name}") :]
    environ = {}
    for line in block.splitlines()[1:]:
        if "=" not in line or line.startswith("#"):
            break
        key, _, value = line.partition("=")
        environ[key] = value
    assert environ, f"no example of {name} in deploy/README.md"
    return environ


def test_deploy_files_exist():
    for name in [
        "Dockerfile",
        "docker-compose.yml",
        "README.md",
        "healthcheck.py",
        "systemd/dasgd-bootstrap.service",
        "systemd/dasgd-peer@.service",
        "k8s/kustomization.yaml",
        "k8s/namespace.yaml",
        "k8s/secret.yaml",
        "k8s/bootstrap.yaml",
        "k8s/peers.yaml",
    ]:
        assert (DEPLOY / name).is_file(), name


def test_dockerfile_builds_both_daemons_as_non_root():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim AS base" in text
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in text
    assert text.index("download.pytorch.org") < text.index("pip install /src")
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["dasgd-bootstrap"]' in text and 'ENTRYPOINT ["dasgd-peer"]' in text
    assert "FROM base AS bootstrap" in text and "FROM base AS peer" in text


def test_compose_runs_a_bootstrap_and_three_peers_with_healthchecks():
    text = COMPOSE.read_text()
    commands = compose_commands(text)
    assert set(commands) == {"bootstrap", "peer0", "peer1", "peer2"}
    bootstrap = parse_args(commands["bootstrap"], {})
    assert (bootstrap.listen, bootstrap.insecure) == ("0.0.0.0:7000", True)
    for index in range(3):
        args = commands[f"peer{index}"]
        assert PEER_REQUIRED <= set(args)
        config = peer_config(args)
        assert (config.bootstrap, config.listen, config.advertise, config.run_id) == (
            "bootstrap:7000",
            "0.0.0.0:7100",
            f"peer{index}:7100",
            "demo",
        )
        assert (config.workload, config.strategy, config.shard_pair()) == (
            "digits-mlp",
            "dasgd",
            (index, 3),
        )
        assert config.insecure
    assert text.count("healthcheck:") == 2  # the bootstrap's and the peers' shared one
    assert "dasgd-healthcheck" in text and "service_healthy" in text


def test_kubernetes_manifests_have_probes_token_and_downward_api():
    bootstrap = K8S_BOOTSTRAP.read_text()
    peers = K8S_PEERS.read_text()
    for kind in ["kind: Deployment", "kind: Service"]:
        assert kind in bootstrap
    for kind in ["kind: StatefulSet", "kind: Service", "clusterIP: None"]:
        assert kind in peers
    assert "serviceName: dasgd-peers" in peers and "name: dasgd-peers" in peers
    for text, port in [(bootstrap, 7000), (peers, 7100)]:
        probes = re.findall(rf"(\w+Probe):\n\s+grpc:\n\s+port: {port}\n", text)
        assert {"readinessProbe", "livenessProbe"} <= set(probes), probes
        assert "secretName: dasgd-token" in text and "/etc/dasgd/token/token" in text
    assert "fieldPath: status.podIP" in peers

    [bootstrap_args] = k8s_args(bootstrap)
    parsed = parse_args(bootstrap_args, {})
    assert parsed.token_file == "/etc/dasgd/token/token"
    [peer_args] = k8s_args(peers)
    assert PEER_REQUIRED <= set(peer_args)
    # Kubernetes substitutes $(VAR) before the process starts.
    substituted = [a.replace("$(SHARD_INDEX)", "2") for a in peer_args]
    config = peer_config(substituted)
    assert config.advertise == "$(POD_IP):7100"
    assert config.token_file == "/etc/dasgd/token/token"
    assert config.shard_pair() == (2, 3)
    assert "replicas: 3" in peers and "$(SHARD_INDEX)/3" in peer_args


def test_yaml_parses():
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose["services"]) == {"bootstrap", "peer0", "peer1", "peer2"}
    assert all("healthcheck" in s for s in compose["services"].values())
    kinds = [
        doc["kind"]
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    assert sorted(kinds) == sorted(
        ["Kustomization", "Namespace", "Secret", "Deployment", "Service", "StatefulSet", "Service"]
    )


@pytest.mark.parametrize("path", [BOOTSTRAP_UNIT, PEER_UNIT], ids=["bootstrap", "peer"])
def test_systemd_units_stop_gracefully_and_are_hardened(path: Path):
    service = unit(path)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "15"
    assert service["EnvironmentFile"].startswith("/etc/dasgd/")
    assert service["User"] == "dasgd"
    for option in ["NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"]:
        assert service[option] in ("yes", "strict"), option
    assert "WantedBy" in unit(path)["Install"]


def test_systemd_exec_start_lines_with_the_readme_environment():
    bootstrap = exec_start(BOOTSTRAP_UNIT)
    assert Path(bootstrap[0]).name == "dasgd-bootstrap" and bootstrap[1] == "run"
    parsed = parse_args(bootstrap[1:], readme_env("/etc/dasgd/bootstrap.env"))
    assert parsed.state == "/var/lib/dasgd-bootstrap/members.db"
    assert (parsed.listen, parsed.token_file) == ("0.0.0.0:7000", "/etc/dasgd/token")

    peer = exec_start(PEER_UNIT)
    assert Path(peer[0]).name == "dasgd-peer" and peer[1] == "run"
    config = peer_config(peer[1:], readme_env("/etc/dasgd/peer-worker1.env"))
    assert config.checkpoint_dir == "/var/lib/dasgd-peer/%i"
    assert (config.bootstrap, config.run_id, config.shard_pair()) == (
        "bootstrap.example.internal:7000",
        "demo",
        (0, 3),
    )
    assert config.token_file == "/etc/dasgd/token" and config.tls_ca


def test_healthcheck_script_reports_serving_and_unreachable(capsys):
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    with BootstrapDaemon("127.0.0.1:0") as daemon:
        assert healthcheck.main([daemon.address]) == 0
        port = daemon.port
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main([f"127.0.0.1:{port}"]) == 1
    assert healthcheck.main([]) == 2

"""Throwaway certificate authorities for TLS tests, made with the openssl CLI.

EC P-256 keys: generated in milliseconds, and accepted by gRPC's TLS stack.
Daemon certificates carry both serverAuth and clientAuth, because a peer
presents the same certificate when it dials others under mutual TLS.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_DAYS = "2"


@dataclass(frozen=True)
class KeyPair:
    """PEM files of one certificate and its private key."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], check=True, capture_output=True, text=True, timeout=30
    )


def require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to generate test certificates")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def make_ca(directory: Path, name: str) -> KeyPair:
    """A self-signed certificate authority."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", pair.key, "-out", pair.cert, "-days", _DAYS,
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    usages: tuple[str, ...] = ("serverAuth", "clientAuth"),
    alt_names: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost"),
) -> KeyPair:
    """A leaf certificate signed by `ca` (by default valid for 127.0.0.1 and localhost)."""
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    _new_key(pair.key)
    _openssl("req", "-new", "-key", pair.key, "-out", request, "-subj", f"/CN={name}")
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={','.join(usages)}",
    ]
    if alt_names:
        lines.append(f"subjectAltName={','.join(alt_names)}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", pair.cert, "-days", _DAYS, "-extfile", extensions,
    )  # fmt: skip
    return pair


@dataclass(frozen=True)
class Pki:
    """The run's CA with a daemon and a client certificate, plus an unrelated
    CA with its own client certificate (what an outsider would hold)."""

    ca: KeyPair
    daemon: KeyPair
    client: KeyPair
    other_ca: KeyPair
    other_client: KeyPair


def make_pki(directory: Path) -> Pki:
    require_openssl()
    ca = make_ca(directory, "run-ca")
    other_ca = make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        daemon=issue(ca, directory, "daemon"),
        client=issue(ca, directory, "client", usages=("clientAuth",), alt_names=()),
        other_ca=other_ca,
        other_client=issue(other_ca, directory, "outsider", usages=("clientAuth",), alt_names=()),
    )

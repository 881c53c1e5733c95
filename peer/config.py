"""One typed config for the peer, from a TOML file, `DASGD_*` environment
variables and flags, in rising order of precedence. Printed in full at
start-up with secrets masked, so a log says exactly what ran."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import tomllib

# Names checked here, before torch is imported; peer.strategies.REGISTRY and
# peer.workloads.BUILTIN hold what they stand for (a test keeps them equal).
STRATEGY_NAMES = ("dasgd", "average", "easgd", "aeasgd", "downpour", "adag", "dynsgd", "gossip")
WORKLOAD_NAMES = ("digits-mlp", "digits-wide")


def search_current_directory() -> None:
    """Lets `--workload mymodule:make` find mymodule.py in the directory the
    command runs in, as `python -m` would: the `dasgd-peer` script alone
    does not put it on sys.path."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _importable(module: str) -> bool:
    """Whether `module` can be found, without running it (it may import torch)."""
    search_current_directory()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class PeerConfig:
    bootstrap: str = _opt("127.0.0.1:7000", "bootstrap HOST:PORT")
    listen: str = _opt("127.0.0.1:0", "HOST:PORT to serve on (port 0: any free port)")
    advertise: str = _opt("", "HOST:PORT other peers reach us at (default: the bound address)")
    run_id: str = _opt("default", "run to join; runs are isolated from each other")
    member_id: str = _opt("", "identity to join with (default: kept in the checkpoint, or new)")
    workload: str = _opt("digits-mlp", "built-in workload name or module:factory")
    strategy: str = _opt("dasgd", "training strategy")
    shard: str = _opt("0/1", "I/N: train on shard I of N")
    learning_rate: float = _opt(0.0, "override the workload's learning rate (0: keep)")
    broadcast_every: int = _opt(1, "dasgd: send the summed gradient every k local steps")
    window: int = _opt(0, "communication window (lambda or tau) for window-based strategies")
    rho: float = _opt(5.0, "easgd/aeasgd: elastic force rho (alpha = lr * rho)")
    round_timeout_s: float = _opt(2.0, "synchronous strategies: deadline of a round")
    topology: str = _opt("all", "neighbor choice: all, ring, random-k, exponential")
    fanout: int = _opt(2, "random-k: number of neighbors")
    compression: str = _opt("raw", "tensor codec on the wire: raw, fp16, bf16")
    chunk_kib: int = _opt(1024, "data chunk size on the wire, KiB")
    tune_allocator: bool = _opt(
        True,
        "glibc malloc thresholds (freed message buffers reused), two arenas, huge pages "
        "for torch's large tensors",
    )
    min_send_interval_ms: float = _opt(
        10.0, "least time between two updates to one neighbor; what comes meanwhile is summed"
    )
    max_send_rate: float = _opt(
        100.0, "updates per second to all neighbors together (0: no limit besides the interval)"
    )
    training_cpus: str = _opt(
        "", "run the training thread on these CPUs (e.g. 0 or 0-3) and all others on the rest"
    )
    queue_size: int = _opt(8, "per-neighbor send queue bound (then coalesce/drop)")
    inbox_size: int = _opt(256, "received updates waiting to be applied (then backpressure)")
    inbox_mb: float = _opt(
        0.0, "and at most this many MB of them (0: four updates of the model, at least 64 MB)"
    )
    step_delay_ms: float = _opt(0.0, "sleep this long after each step (emulate a slower device)")
    slowdown: float = _opt(1.0, "multiply --step-delay-ms by this factor")
    eval_every: int = _opt(10, "evaluate on the test split every N local steps")
    eval_every_s: float = _opt(
        0.25, "also evaluate this often (s) when received updates changed the model (0: off)"
    )
    min_members: int = _opt(1, "wait until this many members (self included) joined to step")
    min_members_timeout_s: float = _opt(60.0, "stop waiting for --min-members after this long")
    max_steps: int = _opt(0, "stop after this many local steps (0: run until stopped)")
    checkpoint_dir: str = _opt("", "directory for checkpoints (empty: no checkpoints)")
    checkpoint_every_steps: int = _opt(500, "checkpoint every N local steps")
    checkpoint_every_s: float = _opt(30.0, "checkpoint at least every S seconds")
    seed_peers: str = _opt("", "HOST:PORT,... of peers to ask for members if the bootstrap is down")
    join_timeout_s: float = _opt(
        15.0, "train alone (and keep trying) if no bootstrap answers by then"
    )
    warm_start: bool = _opt(True, "pull the model from a neighbor when joining a running network")
    fault_partition_file: str = _opt(
        "", "testing aid: while this file lists member ids (or *), send nothing to them"
    )
    token_file: str = _opt("", "file holding the run's shared secret", secret=True)
    tls_cert: str = _opt("", "TLS certificate (PEM)")
    tls_key: str = _opt("", "TLS private key (PEM)")
    tls_ca: str = _opt("", "CA bundle to verify others (and require client certs: mTLS)")
    insecure: bool = _opt(False, "allow plaintext on a non-loopback address")
    metrics_port: int = _opt(-1, "Prometheus metrics port (-1: off, 0: any free port)")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING, ERROR")

    def shard_pair(self) -> tuple[int, int]:
        index, sep, count = self.shard.partition("/")
        try:
            i, n = int(index), int(count)
        except ValueError:
            raise ValueError(f"--shard {self.shard!r}: expected I/N, e.g. 0/4") from None
        if not sep or n < 1 or not 0 <= i < n:
            raise ValueError(f"--shard {self.shard!r}: need 0 <= I < N")
        return i, n

    def validate(self) -> PeerConfig:
        """Fails at start-up, with the flag's name, instead of mid-run."""
        from peer.codec import CODECS
        from peer.topology import TOPOLOGIES

        self.shard_pair()
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(
                f"--strategy {self.strategy!r}: choose one of {', '.join(sorted(STRATEGY_NAMES))}"
            )
        module, sep, factory = self.workload.partition(":")
        if self.workload not in WORKLOAD_NAMES and not (sep and module and factory):
            raise ValueError(
                f"--workload {self.workload!r}: use one of {', '.join(WORKLOAD_NAMES)} "
                "or module:factory"
            )
        if sep and not _importable(module):
            raise ValueError(f"--workload {self.workload!r}: no module {module!r} to import")
        if self.compression not in CODECS:
            raise ValueError(f"--compression {self.compression!r}: choose {', '.join(CODECS)}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"--topology {self.topology!r}: choose {', '.join(TOPOLOGIES)}")
        for name in (
            "queue_size",
            "inbox_size",
            "eval_every",
            "chunk_kib",
            "broadcast_every",
            "fanout",
            "min_members",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in (
            "step_delay_ms",
            "slowdown",
            "eval_every_s",
            "checkpoint_every_s",
            "min_send_interval_ms",
            "max_send_rate",
            "inbox_mb",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"--metrics-port {self.metrics_port}: -1 (off), 0 (any free port) or a port "
                "up to 65535"
            )
        if self.training_cpus:
            from peer.cpus import split_cpus

            split_cpus(self.training_cpus)
        return self

    def describe(self) -> str:
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            lines.append(f"  {f.name} = {value!r}")
        return "\n".join(lines)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean (1/0, true/false)"}


def env_name(name: str) -> str:
    """The environment variable that sets field `name`."""
    return "DASGD_" + name.upper()


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """`value` as the field's type; `source` (e.g. `DASGD_QUEUE_SIZE=abc`)
    names where it came from when it is not one."""
    kind = type(f.default)
    if kind is bool and isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    elif not isinstance(value, bool):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{source}: not {_KIND_NAMES.get(kind, 'a string')}")


def add_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Adds one flag per field; unset flags stay absent so lower layers show through."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with any of these settings; the environment and flags override it "
        "[env DASGD_CONFIG]",
    )
    for f in dataclasses.fields(PeerConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_help(f, "on" if f.default else "off"),
            )
        else:
            parser.add_argument(
                flag,
                type=type(f.default),
                default=argparse.SUPPRESS,
                help=_help(f, repr(f.default) if isinstance(f.default, str) else str(f.default)),
            )


def _help(f: dataclasses.Field, default: str) -> str:
    """The field's help, its default once (unless the text already says what
    an unset value does) and its environment variable, as the bootstrap does."""
    text = f.metadata["help"]
    if "(default" not in text and "(empty" not in text and default:
        text += f" (default {default})"
    return f"{text} [env {env_name(f.name)}]".replace("%", "%%")


def load_config(args: argparse.Namespace | None = None, environ: dict | None = None) -> PeerConfig:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(PeerConfig)}
    config_file = getattr(args, "config", None) or environ.get("DASGD_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as error:
            raise ValueError(f"--config {config_file}: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"--config {config_file}: not valid TOML: {error}") from None
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(fields[name], value, f"{config_file}: {key} = {value!r}")
    for name, f in fields.items():
        env = environ.get(env_name(name))
        if env is not None:
            values[name] = _coerce(f, env, f"{env_name(name)}={env}")
    for name in fields:
        if args is not None and hasattr(args, name):
            values[name] = getattr(args, name)
    return PeerConfig(**values).validate()

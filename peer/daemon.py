"""The peer daemon: wires config, workload, strategy, trainer, transport and
membership together, and owns start-up and shutdown order."""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np
import torch

from dasgd.v1 import membership_pb2, peer_pb2, peer_pb2_grpc
from peer import __version__, checkpoint
from peer.codec import TensorSpec, payload_bytes
from peer.config import PeerConfig
from peer.cpus import format_cpus, pin_all_threads, split_cpus
from peer.membership import DEFAULT_TTL_S, MembershipClient
from peer.metrics import serve_metrics
from peer.staleness import StalenessSummary
from peer.strategies import (
    Incoming,
    Outgoing,
    StrategyContext,
    make_strategy,
    strategy_parameters,
)
from peer.strategies.base import BUFFERS, CENTER, MODEL
from peer.topology import neighbors as choose_neighbors
from peer.trainer import Trainer
from peer.transport import Outbox, PeerServicer, add_peer_service, pull_model
from peer.workloads import floating_buffers, load_workload, trainable_parameters
from rpc import Security, ServerHandle, make_channel, start_server
from rpc.allocator import tune_allocator
from rpc.server import advertise_address, split_host_port

log = logging.getLogger(__name__)

MAX_UPDATE_BYTES = 4 << 30
MAX_LEARNED_MEMBERS = 1024
# The inbox's default bound: a few updates. More only adds staleness and
# memory; a full inbox makes senders wait and sum their gradients instead.
INBOX_UPDATES = 4
INBOX_MIN_BYTES = 64 << 20


def inbox_bytes(inbox_mb: float, specs: list[TensorSpec]) -> int:
    """--inbox-mb in bytes; 0: INBOX_UPDATES float32 updates of the model."""
    if inbox_mb:
        return int(inbox_mb * 1e6)
    return max(INBOX_MIN_BYTES, INBOX_UPDATES * payload_bytes(specs, "raw"))


def _staleness_pb(summary: StalenessSummary) -> peer_pb2.StalenessStats:
    return peer_pb2.StalenessStats(**summary.as_dict())


class PeerDaemon:
    def __init__(self, config: PeerConfig, security: Security | None = None):
        self.config = config
        self.security = security or Security.from_files(
            config.token_file or None,
            config.tls_cert or None,
            config.tls_key or None,
            config.tls_ca or None,
            config.insecure,
        )
        self.run_id = config.run_id
        self.member_id = config.member_id
        self.state = "STARTING"
        self.started_at = time.time()
        self.stopped = threading.Event()
        self._leave_requested = threading.Event()
        self._members: dict[str, membership_pb2.Member] = {}
        self._members_lock = threading.Lock()
        # Members the bootstrap dropped, and until when their updates are
        # still taken (see is_member).
        self._departed: dict[str, float] = {}
        self._members_version = 0  # of the last list applied (see _on_members)
        self._duplicate_reported = ""  # the other address of our id, once logged
        self.address = ""  # what the bootstrap lists for us; set by start()
        self._last_refresh = 0.0
        self.rejected: dict[str, int] = {}
        self._rejected_lock = threading.Lock()
        self.server: ServerHandle | None = None
        self.membership: MembershipClient | None = None

        torch.set_num_threads(1)
        if config.tune_allocator:
            tune_allocator()
        shard_index, shard_count = config.shard_pair()
        self.workload = load_workload(
            config.workload, shard_index, shard_count, config.learning_rate or None
        )
        self.specs = [
            TensorSpec(name, tuple(p.shape), str(p.dtype).removeprefix("torch."))
            for name, p in trainable_parameters(self.workload.model)
        ]
        self.buffer_specs = [
            TensorSpec(name, tuple(b.shape), "float32")
            for name, b in floating_buffers(self.workload.model)
        ]
        self.max_update_bytes = MAX_UPDATE_BYTES
        self.context = StrategyContext(
            member_id=self.member_id,
            model=self.workload.model,
            optimizer=self.workload.optimizer,
            wire_codec=config.compression,
        )
        self.strategy = make_strategy(config.strategy, self.context, **self._strategy_options())
        self.accepts = self.strategy.accepts
        self.trainer = Trainer(
            member_id=self.member_id,
            workload=self.workload,
            strategy=self.strategy,
            send=self._send,
            inbox_size=config.inbox_size,
            inbox_bytes=inbox_bytes(config.inbox_mb, self.specs),
            eval_every=config.eval_every,
            eval_every_s=config.eval_every_s,
            step_delay_s=config.step_delay_ms * config.slowdown / 1000.0,
            max_steps=config.max_steps,
        )
        log.info(
            "model: %d tensors, %s parameters (%.3g MB); inbox: at most %d updates, %.0f MB",
            len(self.specs),
            f"{sum(spec.numel for spec in self.specs):,}",
            payload_bytes(self.specs, "raw") / 1e6,
            config.inbox_size,
            self.trainer.inbox.max_bytes / 1e6,
        )
        self.outbox: Outbox | None = None
        self.servicer = PeerServicer(self, chunk_bytes=config.chunk_kib * 1024)
        self.warm_started_from = ""
        self.initial_accuracy = 0.0
        self.resumed_step = 0
        self.checkpoint_step = 0
        self._checkpoint_lock = threading.Lock()
        self.metrics_server = None
        self._cut_links: set[str] = set()
        self._fault_read_at = 0.0
        if config.checkpoint_dir:
            checkpoint.check_directory(config.checkpoint_dir)
            self._resume(checkpoint.load(config.checkpoint_dir))

    # --- checkpoints --------------------------------------------------------
    def _resume(self, state: dict | None) -> None:
        """Restores model, optimizer, step, clock, strategy state and identity."""
        if state is None:
            return
        for key in ("run_id", "workload", "strategy"):
            if state.get(key) != getattr(self.config, key):
                raise ValueError(
                    f"checkpoint in {self.config.checkpoint_dir} is for {key} "
                    f"{state.get(key)!r}, not {getattr(self.config, key)!r}: use another "
                    "--checkpoint-dir or the same settings"
                )
        self.workload.model.load_state_dict(state["model"])
        self.workload.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy_state"])
        self.trainer.stats.step = self.resumed_step = self.checkpoint_step = state["step"]
        self.trainer.clock.entries = dict(state["clock"])
        if not self.member_id:
            self.member_id = state["member_id"]
            self.context.member_id = self.trainer.member_id = self.member_id
        log.info("resumed %s from its checkpoint at step %d", self.member_id, state["step"])

    def _capture_state(self) -> dict:
        """A copy of everything a checkpoint holds; runs on the training thread."""
        return {
            "member_id": self.member_id,
            "run_id": self.run_id,
            "workload": self.config.workload,
            "strategy": self.config.strategy,
            "step": self.trainer.stats.step,
            "clock": self.trainer.clock.snapshot(),
            "model": {k: v.detach().clone() for k, v in self.workload.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.workload.optimizer.state_dict()),
            "strategy_state": copy.deepcopy(self.strategy.state_dict()),
            "saved_at": time.time(),
        }

    def save_checkpoint(self) -> None:
        """Captures between steps, writes beside training."""
        if not self.config.checkpoint_dir:
            return
        with self._checkpoint_lock:
            if self.trainer.failure is not None:
                # The model may be half-updated: the last good checkpoint stays.
                raise RuntimeError(
                    f"not saved: the training loop failed (the checkpoint at step "
                    f"{self.checkpoint_step} stays)"
                )
            state = self.trainer.call(self._capture_state, timeout=30.0)
            if self.trainer.failure is not None:
                raise RuntimeError("not saved: the training loop failed while capturing")
            checkpoint.save(self.config.checkpoint_dir, state)
            self.checkpoint_step = state["step"]

    def _checkpoint_loop(self) -> None:
        last_time, last_step = time.monotonic(), self.trainer.stats.step
        while not self.stopped.wait(0.5):
            step = self.trainer.stats.step
            due = (
                step - last_step >= self.config.checkpoint_every_steps
                or time.monotonic() - last_time >= self.config.checkpoint_every_s
            )
            if not due or step == last_step or not self.trainer.running:
                continue
            try:
                self.save_checkpoint()
            except (OSError, RuntimeError, TimeoutError) as error:
                log.error("checkpoint failed: %s", error)
            last_time, last_step = time.monotonic(), step

    def _strategy_options(self) -> dict:
        """The config's strategy settings that the chosen strategy takes."""
        c = self.config
        options = {
            "broadcast_every": c.broadcast_every,
            "window": c.window,
            "rho": c.rho,
            "round_timeout_s": c.round_timeout_s,
            "topology": c.topology,
            "fanout": c.fanout,
        }
        return {k: v for k, v in options.items() if k in strategy_parameters(c.strategy)}

    # --- start-up -----------------------------------------------------------
    def start(self, announce: Callable[[], None] | None = None) -> None:
        """Serves, joins, waits for the network, warm-starts and trains.

        `announce` is called once the peer has its id and address (before it
        waits for other members). A leave requested meanwhile (SIGTERM while
        starting) cuts the start short; `shutdown` then leaves cleanly.
        """
        self.server = start_server(
            self.config.listen, self.security, self._register, max_workers=64
        )
        if self.config.metrics_port >= 0:  # now: a taken port is found before joining
            host = split_host_port(self.config.listen)[0] or "127.0.0.1"
            try:
                self.metrics_server = serve_metrics(self.config.metrics_port, self.status, host)
            except OSError as error:
                self.server.stop(grace=0)
                raise OSError(
                    f"--metrics-port {self.config.metrics_port}: cannot listen on "
                    f"{host}: {error.strerror or error}"
                ) from None
            self.metrics_port = self.metrics_server.server_port
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        self.address = self.config.advertise or advertise_address(
            self.config.listen, self.server.port, self.config.bootstrap
        )
        if not self.config.advertise and self.address != self.server.address:
            log.info("advertising %s (the address that reaches the bootstrap)", self.address)
        self.membership = MembershipClient(
            make_channel(self.config.bootstrap, self.security),
            self.run_id,
            self.address,
            self.member_id,
            on_change=self._on_members,
            labels={"workload": self.config.workload, "strategy": self.config.strategy},
        )
        if self._leave_requested.is_set():
            return
        joined = self.membership.join_with_retry(deadline_s=self.config.join_timeout_s)
        if self._leave_requested.is_set():
            return
        if not joined:
            if not self.member_id:
                self.member_id = f"p-{random.getrandbits(32):08x}"
                self.membership.member_id = self.member_id
            log.warning(
                "bootstrap %s unreachable; going on as %s with the peers we can find, "
                "and joining when it answers",
                self.config.bootstrap,
                self.member_id,
            )
        self.member_id = self.membership.member_id
        if announce is not None:
            announce()
        self.context.member_id = self.member_id
        self.trainer.member_id = self.member_id
        self.trainer.clock.owner = self.member_id
        self.outbox = Outbox(
            self.run_id,
            self.member_id,
            self.address,
            lambda address: make_channel(address, self.security),
            self.specs,
            codec_name=self.config.compression,
            max_queue=self.config.queue_size,
            chunk_bytes=self.config.chunk_kib * 1024,
            link_up=self._link_up,
            min_send_interval_s=self.config.min_send_interval_ms / 1000.0,
            max_send_rate=self.config.max_send_rate,
        )
        self._on_members(self._member_list())
        if not joined:
            self._ask_seed_peers()
        self._wait_for_members()
        if self._leave_requested.is_set():
            return
        if self.config.warm_start:
            self._warm_start()
        if self._leave_requested.is_set():
            return
        self.server.set_serving(True)  # joined (or on our own) and the model is ready
        self.trainer.evaluate()
        self.initial_accuracy = self.trainer.stats.accuracy
        if self.config.checkpoint_dir:
            threading.Thread(target=self._checkpoint_loop, name="checkpoint", daemon=True).start()
        if self.config.training_cpus:
            training, rest = split_cpus(self.config.training_cpus)
            pin_all_threads(rest)  # threads started later inherit it
            self.trainer.cpus = training
            log.info("threads other than training's on CPU %s", format_cpus(rest))
        self.trainer.start()
        self.membership.start()
        threading.Thread(target=self._maintenance, name="maintenance", daemon=True).start()
        self.state = "TRAINING"
        log.info("peer %s of run %s serving on %s", self.member_id, self.run_id, self.address)

    def _wait_for_members(self) -> None:
        """Lets a cluster that is launched together start stepping together.

        Only a network that has not started waits: a restarted member, or one
        joining while others already train, goes ahead at once.
        """
        wanted = self.config.min_members
        end = time.monotonic() + self.config.min_members_timeout_s
        next_probe = 0.0
        if self._members_known() < wanted and not self.resumed_step:
            log.info(
                "waiting up to %.0fs for %d members (self included; %d so far)",
                self.config.min_members_timeout_s,
                wanted,
                self._members_known(),
            )
        while self._members_known() < wanted and not self._leave_requested.is_set():
            if self.resumed_step:
                return
            if time.monotonic() > end:
                log.warning(
                    "only %d of %d members after %.0fs; starting anyway",
                    self._members_known(),
                    wanted,
                    self.config.min_members_timeout_s,
                )
                return
            if time.monotonic() > next_probe:
                next_probe = time.monotonic() + 0.5
                if self._training_member() is not None:
                    return
            try:
                self.membership.refresh(timeout=2.0)
            except grpc.RpcError:
                pass
            time.sleep(0.05)

    def _training_member(self) -> tuple[membership_pb2.Member, int] | None:
        """Some other member that has taken steps already, with its step."""
        for member in self._member_list():
            if member.id == self.member_id:
                continue
            try:
                with make_channel(member.address, self.security) as channel:
                    status = peer_pb2_grpc.PeerStub(channel).Status(
                        peer_pb2.StatusRequest(), timeout=2.0
                    )
            except grpc.RpcError:
                continue
            if status.step > 0:
                return member, status.step
        return None

    def _register(self, server: grpc.Server) -> list[str]:
        return [add_peer_service(server, self.servicer)]

    def _warm_start(self) -> None:
        """Joining a network that already trains: start from a neighbor's model."""
        found = self._training_member()
        if found is None:
            return
        member, step = found
        try:
            with make_channel(member.address, self.security) as channel:
                arrays, clock = pull_model(channel, self.run_id, self.member_id, self.specs, MODEL)
                center = None
                if CENTER in self.accepts or hasattr(self.strategy, "center_replica"):
                    try:
                        # The replica with the clock of what it holds: commits
                        # in it may also be on their way here.
                        center, clock = pull_model(
                            channel, self.run_id, self.member_id, self.specs, CENTER
                        )
                    except grpc.RpcError:
                        center = None
                buffers = None
                if self.buffer_specs:
                    try:
                        buffers, _ = pull_model(
                            channel, self.run_id, self.member_id, self.buffer_specs, BUFFERS
                        )
                    except (grpc.RpcError, ValueError) as error:
                        log.warning("buffers from %s not taken (%s)", member.id, error)
        except (grpc.RpcError, ValueError) as error:
            log.warning("warm start from %s failed (%s); starting from own model", member.id, error)
            return
        self.strategy.load_model(arrays, center, clock)
        if buffers is not None:
            self.strategy.set_buffers(buffers)
        # We have now seen what the neighbor had seen (our own earlier
        # updates included, if we are a restarted member); with a center
        # replica, what that replica holds.
        for owner, count in clock.items():
            self.trainer.clock.entries[owner] = max(count, self.trainer.clock.entries.get(owner, 0))
        self.warm_started_from = member.id
        log.info("warm-started from %s at its step %d", member.id, step)

    # --- membership -----------------------------------------------------------
    def _members_known(self) -> int:
        """Members of the run we know of, this peer included (joined or not)."""
        return len({m.id for m in self._member_list()} | {self.member_id})

    def _member_list(self) -> list[membership_pb2.Member]:
        with self._members_lock:
            return list(self._members.values())

    def _on_members(
        self,
        members: Sequence[membership_pb2.Member],
        version: int | None = None,
        new_session: bool = False,
    ) -> None:
        """Authoritative list from the bootstrap, at its membership `version`.

        Lists come from several threads (the watch, a re-join, a refresh for
        an unknown sender); one older than the last applied is stale and
        ignored, or a member that left would come back. A join's list is
        taken whatever its version (a bootstrap restarted without its state
        counts again from 0)."""
        now = time.monotonic()
        grace = self.membership.ttl_s if self.membership is not None else DEFAULT_TTL_S
        with self._members_lock:
            if version is not None:
                if not new_session and version < self._members_version:
                    return
                self._members_version = version
            current = {m.id: m for m in members if m.run_id in ("", self.run_id)}
            self._check_own_entry(current.get(self.member_id), version)
            for gone in self._members.keys() - current.keys():
                self._departed[gone] = now + grace
            self._departed = {
                member: until
                for member, until in self._departed.items()
                if until > now and member not in current
            }
            while len(self._departed) > MAX_LEARNED_MEMBERS:
                self._departed.pop(min(self._departed, key=self._departed.__getitem__))
            self._members = current
        self._update_neighbors()

    def _check_own_entry(self, own: membership_pb2.Member | None, version: int | None) -> None:
        """Two peers started with one --member-id: the bootstrap keeps the
        address of the last to join, and neither peer's updates reach the
        other. The one whose address was replaced says so."""
        if version is None or own is None or not self.address or own.address == self.address:
            return
        if self._duplicate_reported != own.address:
            self._duplicate_reported = own.address
            log.error(
                "the bootstrap lists this peer's id %s at %s, not at %s: another peer "
                "runs with the same --member-id (or this one's address changed)",
                self.member_id,
                own.address,
                self.address,
            )

    def learn_members(self, members: Sequence[membership_pb2.Member]) -> None:
        """Peer exchange: adds members others know (never removes).

        Only while the bootstrap is unreachable: when it answers, its list is
        the truth, and a ListPeers caller must not be able to make itself a
        member by naming itself.
        """
        if self.membership is not None and self.membership.connected:
            return
        changed = False
        with self._members_lock:
            for m in members:
                if (
                    m.run_id in ("", self.run_id)
                    and 0 < len(m.id) <= 128
                    and 0 < len(m.address) <= 262
                    and m.id not in self._members
                    and len(self._members) < MAX_LEARNED_MEMBERS
                ):
                    self._members[m.id] = m
                    changed = True
        if changed:
            self._update_neighbors()

    def _update_neighbors(self) -> None:
        if self.outbox is None:
            return
        members = {m.id: m.address for m in self._member_list() if m.id != self.member_id}
        chosen = choose_neighbors(
            self.config.topology, self.member_id, list(members), fanout=self.config.fanout
        )
        self.outbox.set_neighbors({mid: members[mid] for mid in chosen})
        self.context.neighbors = chosen
        self.context.members = sorted(members)

    def is_member(self, member_id: str) -> bool:
        """Whether to take updates from `member_id`: a member, or one the
        bootstrap dropped less than a lease ago. A peer too busy to heartbeat
        in time (a loaded host) is dropped and joins again moments later;
        its gradients meanwhile are real work, and DASGD never recovers a
        gradient a peer refused (there is no averaging to undo the gap).
        It is no longer sent to."""
        with self._members_lock:
            if member_id in self._members:
                return True
            if self._departed.get(member_id, 0.0) > time.monotonic():
                return True
        # A member that joined a moment ago may push before its watch event
        # reaches us: ask the bootstrap once (rate-limited) before refusing.
        now = time.monotonic()
        if self.membership is not None and now - self._last_refresh > 0.5:
            self._last_refresh = now
            try:
                self.membership.refresh(timeout=2.0)
            except grpc.RpcError:
                return False
            with self._members_lock:
                return member_id in self._members
        return False

    def members(self) -> list[membership_pb2.Member]:
        return self._member_list()

    def _self_member(self) -> membership_pb2.Member:
        return membership_pb2.Member(id=self.member_id, address=self.address, run_id=self.run_id)

    def _exchange_members(self, address: str) -> None:
        """ListPeers both ways: tells `address` who we know (us included), learns
        whom it knows."""
        with make_channel(address, self.security) as channel:
            response = peer_pb2_grpc.PeerStub(channel).ListPeers(
                peer_pb2.ListPeersRequest(
                    run_id=self.run_id, known=[self._self_member(), *self._member_list()]
                ),
                timeout=2.0,
            )
        self.learn_members(m for m in response.members if m.id != self.member_id)

    def _ask_seed_peers(self) -> None:
        for address in filter(None, (a.strip() for a in self.config.seed_peers.split(","))):
            try:
                self._exchange_members(address)
            except grpc.RpcError as error:
                log.info("seed peer %s: %s", address, error.code().name)

    def _maintenance(self) -> None:
        """Peer exchange while the bootstrap is away."""
        while not self.stopped.wait(2.0):
            if self.membership is None or self.membership.connected:
                continue
            others = [m for m in self._member_list() if m.id != self.member_id]
            if not others:
                self._ask_seed_peers()
                continue
            try:
                self._exchange_members(random.choice(others).address)
            except grpc.RpcError:
                pass

    def _link_up(self, member_id: str) -> bool:
        """False while --fault-partition-file cuts the link to `member_id`."""
        path = self.config.fault_partition_file
        if not path:
            return True
        now = time.monotonic()
        if now - self._fault_read_at > 0.2:
            self._fault_read_at = now
            try:
                with open(path) as fh:
                    self._cut_links = set(fh.read().split())
            except OSError:
                self._cut_links = set()
        return not ({"*", member_id} & self._cut_links)

    # --- data path ------------------------------------------------------------
    def _send(self, message: Outgoing, clock: dict[str, int]) -> None:
        if self.outbox is not None:
            self.outbox.send(
                message.kind, message.arrays, clock, message.clock_ticks, message.round, message.to
            )

    def deliver(self, update: Incoming) -> bool:
        try:
            self.trainer.inbox.put(update, timeout=10.0)
            return True
        except Exception:
            return False

    def snapshot(self, kind: str) -> tuple[list[np.ndarray], dict[str, int]]:
        def take():
            arrays = self.strategy.snapshot(kind)
            if arrays is None:
                raise LookupError(f"strategy {self.strategy.name} has no {kind}")
            return arrays, self.trainer.clock.snapshot()

        return self.trainer.call(take)

    def count_rejection(self, code: grpc.StatusCode) -> None:
        with self._rejected_lock:  # from many gRPC threads at once
            self.rejected[code.name] = self.rejected.get(code.name, 0) + 1

    # --- status -----------------------------------------------------------------
    def status(self, evaluations_since: float = 0.0) -> peer_pb2.StatusResponse:
        trainer = self.trainer
        stats = trainer.stats
        neighbors = []
        staleness_by_sender = dict(trainer.staleness.by_sender)
        members = {m.id: m.address for m in self._member_list()}
        for sender in self.outbox.senders() if self.outbox else []:
            window = staleness_by_sender.get(sender.member_id)
            neighbors.append(
                peer_pb2.NeighborStatus(
                    id=sender.member_id,
                    address=sender.address,
                    queue_depth=sender.queue_depth,
                    updates_sent=sender.stats.sent,
                    bytes_sent=sender.stats.bytes_sent,
                    updates_applied=trainer.applied_by_sender.get(sender.member_id, 0),
                    dropped=sender.stats.dropped,
                    coalesced=sender.stats.coalesced,
                    send_errors=sender.stats.errors,
                    resent=sender.stats.resent,
                    sending=True,
                    staleness=_staleness_pb(window.summary() if window else StalenessSummary()),
                )
            )
        listed = {n.id for n in neighbors}
        for sender_id, window in staleness_by_sender.items():
            if sender_id not in listed:  # receives from it without sending to it
                neighbors.append(
                    peer_pb2.NeighborStatus(
                        id=sender_id,
                        address=members.get(sender_id, ""),
                        updates_applied=trainer.applied_by_sender.get(sender_id, 0),
                        staleness=_staleness_pb(window.summary()),
                    )
                )
        membership = self.membership
        return peer_pb2.StatusResponse(
            id=self.member_id,
            run_id=self.run_id,
            address=self.address,
            strategy=self.config.strategy,
            workload=self.config.workload,
            state=self.state,
            step=stats.step,
            loss=stats.loss,
            accuracy=stats.accuracy,
            accuracy_at=stats.accuracy_at,
            staleness=_staleness_pb(trainer.staleness.overall.summary()),
            neighbors=neighbors,
            updates_applied=stats.updates_applied,
            updates_rejected=sum(self.rejected.values()),
            updates_discarded=stats.updates_discarded,
            # Every byte since start, to neighbors gone too: a counter.
            bytes_sent=sum(n.bytes_sent for n in neighbors)
            + (self.outbox.retired_bytes_sent if self.outbox else 0),
            bytes_received=self.servicer.bytes_received,
            vector_clock=trainer.clock.snapshot(),
            samples_per_s=trainer.samples_per_s(),
            samples=stats.samples,
            uptime_s=time.time() - self.started_at,
            membership_version=membership.version if membership else 0,
            bootstrap=self.config.bootstrap,
            bootstrap_reachable=bool(membership and membership.connected),
            bootstrap_unreachable_since=membership.unreachable_since if membership else 0.0,
            bootstrap_error=membership.last_error if membership else "",
            bootstrap_ever_joined=bool(membership and membership.joined.is_set()),
            version=__version__,
            first_step_at=stats.first_step_at,
            warm_started_from=self.warm_started_from,
            initial_accuracy=self.initial_accuracy,
            resumed_step=self.resumed_step,
            checkpoint_step=self.checkpoint_step,
            evaluations=[
                peer_pb2.Evaluation(at=at, step=step, accuracy=accuracy, loss=loss)
                for at, step, accuracy, loss in list(trainer.evaluations)
                if evaluations_since and at > evaluations_since
            ][-2000:],
        )

    # --- shutdown ---------------------------------------------------------------
    def request_leave(self) -> None:
        self._leave_requested.set()
        if self.state == "STARTING" and self.membership is not None:
            self.membership.cancel_join()  # `shutdown` still leaves

    def wait(self) -> None:
        """Blocks until asked to leave (Leave RPC) or the trainer finished."""
        while not self._leave_requested.wait(0.2):
            if not self.trainer.running:
                break

    def shutdown(self, flush_timeout_s: float = 3.0) -> None:
        """SIGTERM path: NOT_SERVING, stop stepping, flush, Leave, stop server."""
        if self.stopped.is_set():
            return
        self.state = "DRAINING"
        if self.server is not None:
            self.server.set_serving(False)
        self.trainer.stop()
        if self.outbox is not None:
            self.outbox.close(flush_timeout_s)
        try:
            self.save_checkpoint()
        except (OSError, RuntimeError) as error:
            log.error("final checkpoint: %s", error)
        if self.membership is not None:
            self.membership.leave()
            self.membership.stop()
        self.stopped.set()
        if self.server is not None:
            self.server.stop(grace=1.0)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        saved = (
            f"; final checkpoint at step {self.checkpoint_step} in {self.config.checkpoint_dir}"
            if self.config.checkpoint_dir and self.checkpoint_step
            else ""
        )
        log.info("peer %s stopped at step %d%s", self.member_id, self.trainer.stats.step, saved)

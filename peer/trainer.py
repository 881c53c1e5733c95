"""The training loop. One thread owns the model: it drains the inbox, applies
received updates, takes a local step, and hands what the strategy wants sent
to the transport, which never blocks it. Nothing else writes parameters, so
there are no locks on them; other threads that need the model (Pull,
checkpoints) ask the loop to run a function for them between steps."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from peer.bounded import put_recent
from peer.cpus import format_cpus, pin_this_thread
from peer.staleness import StalenessTracker, VectorClock
from peer.strategies import Incoming, Outgoing, Strategy
from peer.workloads import Workload

log = logging.getLogger(__name__)

SendFn = Callable[[Outgoing, dict[str, int]], None]


@dataclass
class TrainerStats:
    step: int = 0
    loss: float = float("nan")
    accuracy: float = 0.0
    eval_loss: float = float("nan")
    accuracy_at: float = 0.0
    first_step_at: float = 0.0
    samples: int = 0
    updates_applied: int = 0
    updates_discarded: int = 0


class Trainer:
    def __init__(
        self,
        member_id: str,
        workload: Workload,
        strategy: Strategy,
        send: SendFn,
        inbox_size: int = 256,
        inbox_bytes: int = 1 << 30,
        eval_every: int = 10,
        eval_every_s: float = 0.0,
        step_delay_s: float = 0.0,
        max_steps: int = 0,
        clock: VectorClock | None = None,
    ):
        self.member_id = member_id
        self.workload = workload
        self.strategy = strategy
        self.send = send
        # Received updates and requests to run on this thread, in arrival order:
        # one queue, so waiting for either is one blocking get.
        self.inbox = Inbox(inbox_size, inbox_bytes)
        self.eval_every = eval_every
        self.eval_every_s = eval_every_s
        # (time, step, accuracy, loss) of recent evaluations, for progress plots.
        self.evaluations: deque[tuple[float, int, float, float]] = deque(maxlen=20_000)
        self._applied_at_eval = 0
        self.step_delay_s = step_delay_s
        self.max_steps = max_steps
        self.clock = clock or VectorClock(member_id)
        strategy.context.clock = self.clock
        self.staleness = StalenessTracker()
        self.applied_by_sender: dict[str, int] = {}
        self.stats = TrainerStats()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        # What ended the loop, if it was an error (the daemon then exits 1
        # and keeps its last checkpoint instead of saving this model).
        self.failure: BaseException | None = None
        self._loop_owner: int | None = None
        self.cpus: set[int] | None = None  # pin the training thread to these

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pause(self, paused: bool) -> None:
        """Stops taking local steps (updates are still applied)."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        """Runs `fn` on the training thread between steps and returns its result.

        Before the loop starts or after it ends nobody else touches the model,
        so `fn` runs right here.
        """
        if not self.running or threading.get_ident() == self._loop_owner:
            return fn()
        request = _Request(fn, Future())
        self.inbox.put(request)  # never waits: requests pass the updates' bound
        return request.future.result(timeout)  # TimeoutError if the loop is stuck

    # --- the loop ----------------------------------------------------------
    def _run(self) -> None:
        self._loop_owner = threading.get_ident()
        if self.cpus:
            pin_this_thread(self.cpus)
            log.info(
                "training thread (%d) on CPU %s", threading.get_native_id(), format_cpus(self.cpus)
            )
        try:
            while not self._stop.is_set():
                self.drain_inbox()
                for message in self.strategy.on_idle(time.time()):
                    self._emit(message)
                if self._paused.is_set():
                    self._wait(0.05)
                    continue
                if not self.strategy.ready_to_step():
                    self._wait(0.01)
                    continue
                self.local_step()
                if self.max_steps and self.stats.step >= self.max_steps:
                    break
                self._maybe_evaluate()
        except Exception as error:
            self.failure = error
            log.exception("training loop failed: %r", error)
        finally:
            self._finish_requests()
            self._loop_owner = None

    def _wait(self, seconds: float) -> None:
        """Idles for `seconds` (an emulated slower device, a paused loop, a
        synchronous round), applying updates and serving requests as they come:
        received gradients are applied as soon as they arrive."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                item = self.inbox.get(timeout=remaining)
            except queue.Empty:
                return
            self._handle(item)

    def drain_inbox(self) -> int:
        applied = 0
        inbox = self.inbox
        # Peeked without the lock: called between steps, where an empty
        # inbox is the rule and a raised queue.Empty costs ~7 us (of a
        # ~400 us digits-mlp step); an update landing meanwhile waits a step.
        while inbox.queue:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            applied += self._handle(item)
        return applied

    def _handle(self, item: Incoming | _Request) -> bool:
        if isinstance(item, _Request):
            item.run()
            return False
        return self.apply(item)

    def _finish_requests(self) -> None:
        """The loop ended: answer waiting requests (updates are dropped)."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                item.run()

    def apply(self, update: Incoming) -> bool:
        update.staleness = self.clock.staleness_of(update.clock)
        applied = self.strategy.apply(update)
        replies, self.strategy.replies = self.strategy.replies, []
        for message in replies:
            self._emit(message)
        if not applied:
            self.stats.updates_discarded += 1
            return False
        self.clock.tick(update.sender, update.clock_ticks)
        self.staleness.record(update.sender, update.staleness)
        applied = self.applied_by_sender.get(update.sender, 0) + 1
        put_recent(self.applied_by_sender, update.sender, applied)
        self.stats.updates_applied += 1
        return True

    def local_step(self) -> None:
        w = self.workload
        inputs, targets = w.next_batch()
        w.optimizer.zero_grad(set_to_none=True)
        loss = w.loss_fn(w.model(inputs), targets)
        loss.backward()
        seen = self.clock.snapshot()  # what this gradient was computed from
        if self.step_delay_s:
            self._emulate_compute_time(self.step_delay_s)
        w.optimizer.step()
        stats = self.stats
        if not stats.first_step_at:  # this process's first (the step count may be resumed)
            stats.first_step_at = time.time()
        stats.step += 1
        stats.samples += len(targets)
        stats.loss = loss.item()
        if self.strategy.clock_per_step:
            self.clock.tick(self.member_id)
            seen[self.member_id] = self.clock.entries[self.member_id]
        self.strategy.context.step_clock = seen
        for message in self.strategy.after_local_step(stats.step):
            # A gradient carries the clock of the model it was computed on.
            self._emit(message, seen if self.strategy.clock_per_step else None)
        if stats.step % self.eval_every == 0:
            self.evaluate()

    def _emulate_compute_time(self, seconds: float) -> None:
        """Stands in for a slower device (--step-delay-ms): the gradient just
        computed is applied only `seconds` later, and updates arriving
        meanwhile are applied first, so it is as stale as a slow device's
        gradient would be (the staleness its neighbors measure grows with it)."""
        params = list(self.workload.model.parameters())
        gradients = [p.grad for p in params]
        for p in params:
            p.grad = None  # received updates run the optimizer in between
        try:
            self._wait(seconds)
        finally:
            for p, g in zip(params, gradients):
                p.grad = g

    def _maybe_evaluate(self) -> None:
        """Also evaluate every `eval_every_s` seconds if received updates changed
        the model: a slow peer's accuracy then shows when it is reached, not
        only every `eval_every` of its own slow steps."""
        stats = self.stats
        if (
            self.eval_every_s
            and stats.updates_applied != self._applied_at_eval
            and time.time() - stats.accuracy_at >= self.eval_every_s
        ):
            self.evaluate()

    def _emit(self, message: Outgoing, clock: dict[str, int] | None = None) -> None:
        if not self.strategy.clock_per_step and message.to is None:
            self.clock.tick(self.member_id, message.clock_ticks)
        if message.clock is not None:
            own = self.clock.entries.get(self.member_id, 0)
            clock = {**message.clock, self.member_id: own}
        self.send(message, clock if clock is not None else self.clock.snapshot())

    def evaluate(self) -> None:
        self._applied_at_eval = self.stats.updates_applied
        eval_loss, accuracy = self.workload.evaluate()
        self.stats.eval_loss, self.stats.accuracy = eval_loss, accuracy
        self.stats.accuracy_at = time.time()
        self.evaluations.append((self.stats.accuracy_at, self.stats.step, accuracy, eval_loss))

    def samples_per_s(self) -> float:
        if not self.stats.first_step_at:
            return 0.0
        elapsed = time.time() - self.stats.first_step_at
        return self.stats.samples / elapsed if elapsed > 0 else 0.0


def _payload_bytes(item: Incoming | _Request) -> int:
    return sum(a.nbytes for a in item.arrays) if isinstance(item, Incoming) else 0


class Inbox(queue.Queue):
    """The trainer's queue, bounded by count and by the bytes of the updates
    in it: with 100 MB updates a count alone (256) would let a trainer that
    falls behind hold 25 GB. An update that does not fit waits (`put` with a
    timeout, as for a full count); one is always let into an inbox that
    holds no payload, so an update larger than the bound still gets through.
    """

    def __init__(self, maxsize: int, max_bytes: int):
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0  # payload bytes queued; changed under self.mutex

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        size = _payload_bytes(item)
        deadline = None if timeout is None else time.monotonic() + timeout
        # A request to run something on the training thread (a checkpoint, a
        # Pull) carries no payload and is not held back by the updates' bound.
        bounded = not isinstance(item, _Request)
        with self.not_full:
            while bounded and (
                (0 < self.maxsize <= self._qsize())
                or (size and self.bytes and self.bytes + size > self.max_bytes)
            ):
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise queue.Full
                self.not_full.wait(remaining)
            self._put(item)
            self.bytes += size
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _get(self):
        item = super()._get()
        self.bytes -= _payload_bytes(item)
        # Room in bytes may let a different waiter in than room in count.
        self.not_full.notify_all()
        return item


class _Request:
    """A function to run on the training thread, and its result."""

    def __init__(self, fn: Callable[[], object], future: Future):
        self.fn = fn
        self.future = future

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except Exception as exc:  # handed to the caller
            self.future.set_exception(exc)

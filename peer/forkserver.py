"""Starts peer processes by forking one that has already imported torch.

Importing torch (and the compiler machinery its optimizers pull in) costs
~3 s of CPU per process; N peers starting at once on a small machine pay it
N times and start-up grows with N. This server pays it once and forks each
peer from there. It never imports gRPC, whose threads do not survive fork;
each child imports it fresh. Peers forked from it back large tensors with
huge pages (rpc/allocator.py) whatever their --tune-allocator says.

Protocol (one JSON object per line): request `{"argv": [...], "stdout":
PATH, "stderr": PATH}` on stdin, reply `{"pid": N}` on stdout. Each child
runs `dasgd-peer ARGV` in its own session (so its process group can be
signalled). Closing stdin makes the server wait for its children and exit.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys


def _preload() -> None:
    # Torch settles whether large tensors get huge pages at its first
    # allocation, which happens here, before any peer's settings are read.
    # (rpc.allocator.TORCH_HUGE_PAGES_ENV; importing rpc would import gRPC.)
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    import torch

    torch.set_num_threads(1)
    import torch._dynamo  # noqa: F401  (what torch.optim imports on first use)

    from peer.workloads.digits import load_split

    load_split()


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Loaded here, not in the child: it may be called between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent: int | None = None) -> None:
    """Asks the kernel to send this process SIGTERM when its parent dies
    (Linux; elsewhere a no-op), so children of a launcher killed outright
    (SIGKILL, a crash) leave cleanly instead of training on as orphans.
    `parent`: the pid expected; if it already died, SIGTERM now."""
    if _LIBC is None or _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _reap(signum=None, frame=None) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(request: dict, server: int) -> None:
    os.setsid()
    die_with_parent(server)  # the server dies with the launcher, so do we
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    code = 1
    try:
        from peer.cli import main

        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    _preload()
    signal.signal(signal.SIGCHLD, _reap)
    print(json.dumps({"ready": True}), flush=True)
    server = os.getpid()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, server)
        print(json.dumps({"pid": pid}), flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    serve()

"""Network faults on loopback for tests and benches: a TCP proxy that can
go quiet or reset every connection through it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class CuttableProxy:
    """A TCP proxy on loopback that can swallow what clients send (as a
    network that has gone quiet) and cut every connection with a reset."""

    def __init__(self, target: str = "", port: int = 0):
        self.target = target  # where connections go; may be set once listening
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.swallow = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                host, port = self.target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
            except (OSError, ValueError):
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, swallowable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if not (swallowable and self.swallow.is_set()):
                    sink.sendall(data)

    def cut(self) -> None:
        """Resets every connection; new ones are carried as usual."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        self.swallow.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread; stops listening
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()

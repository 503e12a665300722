"""A TCP proxy, run by threads of the test process, to put a fault between seqrec and a store.

``TcpProxy(upstream_port).start()`` listens on a free port of 127.0.0.1 and forwards every
connection to ``127.0.0.1:upstream_port`` (PostgreSQL, a private redis-server). While it runs
the test can:

- ``delay_s = 0.2``: hold every chunk the store sends back for that long (a slow store);
- ``close()``: stop listening and drop every open connection (the store is gone: new
  connections are refused), then ``start()`` again on the same port (it is back);
- ``cut_after = n``: ``close()`` by itself once ``n`` bytes went from clients to the store
  (the store went away part-way through a command's work).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from seqrec.testing import free_port


class TcpProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``upstream_port``, with faults on demand."""

    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        #: seconds each chunk from the store waits before it is passed on
        self.delay_s = 0.0
        #: close() once this many bytes went to the store (None: never)
        self.cut_after: int | None = None
        #: bytes passed to the store, connections accepted, chunks delayed (since creation)
        self.bytes_up = 0
        self.accepted = 0
        self.delayed = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpProxy:
        """Listen (again) on ``port`` and forward what arrives."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        """Stop listening and reset every open connection: the store is unreachable."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            _reset(conn)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the threads ------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)  # the store itself is down: so is the proxy's connection
                continue
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    _reset(client)
                    _reset(upstream)
                    return
                self._conns |= {client, upstream}
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65_536)
                if not data:
                    break
                if up:
                    with self._lock:
                        self.bytes_up += len(data)
                        cut = self.cut_after is not None and self.bytes_up >= self.cut_after
                    if cut:
                        self.cut_after = None
                        self.close()
                        return
                elif self.delay_s > 0:
                    with self._lock:
                        self.delayed += 1
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        self._end_pair(src, dst)

    def _end_pair(self, src: socket.socket, dst: socket.socket) -> None:
        """``src`` ended (or failed): end the pair once, from whichever side noticed first."""
        with self._lock:
            mine = src in self._conns
            self._conns -= {src, dst}
        if mine:  # one side ended: end the other
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (no orderly shutdown): what a crashed server's peer sees."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked reading it
    sock.close()

"""The fresh machine's only way out: an HTTP proxy reached through a Unix socket.

The pristine root runs in its own network namespace (its ports cannot clash
with this machine's, and nothing in it can reach anything but the package
mirrors). Two halves:

* ``Proxy`` (this machine's namespace, a thread of the test): listens on a
  Unix socket, answers ``CONNECT host:443`` (pip over HTTPS) with a tunnel and
  forwards absolute-form ``GET http://host/...`` (apt) to the origin, one
  request per connection. Only ports 80 and 443 are let through.
* ``relay`` (``python3 egress.py relay PORT SOCKET``, started inside the
  namespace with this machine's python before the chroot): listens on
  ``127.0.0.1:PORT`` and pipes each connection to the Unix socket.

Standard library only: the relay runs with whatever python3 this machine has.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from pathlib import Path

ALLOWED_PORTS = (80, 443)
_HEAD_LIMIT = 64 * 1024


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides are done, then close both."""
    t = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    t.start()
    _pipe(a, b)
    t.join()
    a.close()
    b.close()


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk or len(buf) > _HEAD_LIMIT:
            raise ConnectionError("no request head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _handle(conn: socket.socket) -> None:
    try:
        head, rest = _read_head(conn)
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        if method == "CONNECT":
            host, _, port_s = target.rpartition(":")
            port = int(port_s)
        else:
            scheme, _, after = target.partition("://")
            if scheme != "http":
                raise ConnectionError(f"not a proxy request: {request_line}")
            hostport, _, path = after.partition("/")
            host, _, port_s = hostport.partition(":")
            port = int(port_s or 80)
        if port not in ALLOWED_PORTS:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        upstream = socket.create_connection((host.strip("[]"), port), timeout=60)
        upstream.settimeout(None)
    except (OSError, ValueError, ConnectionError):
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        conn.close()
        return
    if method == "CONNECT":
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
    else:
        # One request per connection: the next one may be for another host.
        kept = [h for h in headers if h.split(":", 1)[0].strip().lower()
                not in ("connection", "proxy-connection", "keep-alive")]
        lines = [f"{method} /{path} {version}", *kept, "Connection: close", "", ""]
        upstream.sendall("\r\n".join(lines).encode("latin-1") + rest)
    _splice(conn, upstream)


class Proxy:
    """The outer half: a threaded HTTP proxy on a Unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self._thread = threading.Thread(target=self._serve, name="fresh-egress", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def relay(port: int, unix_path: str) -> None:
    """The inner half: 127.0.0.1:port -> the Unix socket, one pipe per connection."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        out = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            out.connect(unix_path)
        except OSError:
            conn.close()
            out.close()
            continue
        threading.Thread(target=_splice, args=(conn, out), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "relay":
        sys.exit("usage: egress.py relay PORT UNIX_SOCKET")
    relay(int(sys.argv[2]), sys.argv[3])

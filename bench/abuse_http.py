"""A minimal HTTP/1.1 client on asyncio streams for bench/abuse's 200 concurrent API clients.

httpx's async pool scans every connection on each request (``has_expired`` →
``getpeername`` per connection), so 200 clients sharing one pool spend the
load generator's core on bookkeeping and the bench measured its own client,
not the controller. Here each simulated client owns one keep-alive connection
and nothing is shared: a request is one write and two reads. It speaks just
what the controller answers (Content-Length or chunked bodies, keep-alive or
close); JSON in, bytes out.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit


class ConnError(Exception):
    """The connection failed or closed before a whole response arrived."""


@dataclass
class Reply:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class RawHttp:
    """One keep-alive connection to ``base_url``, optionally from ``local_address`` (a loopback alias)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, local_address: str | None = None,
                 timeout: float = 30.0) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.local = (local_address, 0) if local_address else None
        self.timeout = timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {self.host}:{self.port}\r\nUser-Agent: prov-bench-abuse\r\n{extra}"
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        """Drop the connection (no wait for the peer: this also runs while a task is being cancelled)."""
        if self._conn is not None:
            writer = self._conn[1]
            self._conn = None
            writer.close()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      json_body: Any = None) -> Reply:
        """Raises TimeoutError past ``timeout`` and ConnError when the connection fails."""
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n"
        if json_body is not None:
            head += "Content-Type: application/json\r\n"
        data = head.encode() + b"\r\n" + body
        reused = self._conn is not None
        try:
            return await asyncio.wait_for(self._exchange(data), self.timeout)
        except ConnError:
            await self.close()
            if not (reused and method == "GET"):
                raise
        except BaseException:
            await self.close()  # a timed-out or cancelled exchange leaves the stream mid-response
            raise
        # a kept-alive connection the server closed meanwhile (its keep-alive timeout): once more, fresh
        try:
            return await asyncio.wait_for(self._exchange(data), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _exchange(self, data: bytes) -> Reply:
        try:
            if self._conn is None:
                self._conn = await asyncio.open_connection(self.host, self.port, local_addr=self.local)
            reader, writer = self._conn
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunks.append(await reader.readexactly(size + 2))
                    if size == 0:
                        break
                body = b"".join(c[:-2] for c in chunks)
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            raise ConnError(type(exc).__name__) from exc
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, body)

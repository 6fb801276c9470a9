"""A small W3C WebDriver client (the protocol over HTTP, httpx) for Debian's chromium + chromedriver.

Just what the console's browser tests need: navigate, find, click, type, run a script, prompts,
window size, screenshots. No Selenium dependency: the protocol is a handful of JSON calls.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    def __init__(self, base: str, session_id: str) -> None:
        self.http = httpx.Client(base_url=f"{base}/session/{session_id}", timeout=60)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, path, json=body if method == "POST" else None)
        data = r.json()
        if r.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {data.get('value', data)}")
        return data.get("value")

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._call("GET", "/url"))

    def find(self, css: str) -> str:
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(found, dict) or ELEMENT not in found:
            raise RuntimeError(f"no element {css!r}: {found!r}; page: {self.js('return document.title')!r}")
        return str(found[ELEMENT])

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def alert_text(self) -> str | None:
        try:
            return str(self._call("GET", "/alert/text"))
        except RuntimeError:
            return None

    def alert(self, accept: bool) -> None:
        self._call("POST", "/alert/accept" if accept else "/alert/dismiss", {})

    def size(self, width: int, height: int) -> None:
        self._call("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def wait(self, script: str, *args: Any, timeout: float = 5.0) -> Any:
        """Run ``script`` until it returns something truthy; its last value on timeout (falsy)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)


def chromium_paths() -> tuple[str, str] | None:
    chrome = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


@contextlib.contextmanager
def chromium(log: Path) -> Iterator[Browser]:
    """Headless Debian chromium driven by chromedriver on a free loopback port."""
    paths = chromium_paths()
    assert paths is not None
    chrome, driver = paths
    port = _free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen([driver, f"--port={port}"], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    session_id = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/status", timeout=1).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"chromedriver did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": chrome, "args": [
                "--headless=new", "--no-sandbox",  # root in a container: no user namespace sandbox
                "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800", "--hide-scrollbars",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"]},
        }}}
        r = httpx.post(f"{base}/session", json=caps, timeout=60)
        if r.status_code >= 400:
            raise RuntimeError(f"new session: {r.text[:2000]}")
        session_id = r.json()["value"]["sessionId"]
        yield Browser(base, session_id)
    finally:
        if session_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{base}/session/{session_id}", timeout=20)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

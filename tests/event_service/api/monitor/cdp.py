"""Debian's chromium, headless, driven over the DevTools protocol: just what the page tests need."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from websockets.sync.client import ClientConnection, connect

from event_service.api.server import free_port

T = TypeVar("T")
CHROMIUM = ("chromium", "chromium-browser")


class BrowserError(RuntimeError):
    """The browser did not start, or a DevTools call failed."""


def chromium_path() -> str | None:
    return next((found for name in CHROMIUM if (found := shutil.which(name))), None)


class Page:
    """One tab: DevTools calls, the events they produce, and small helpers over them."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout_s: float = 15.0, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 15.0) -> Any:
        """Evaluate until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page did not show {what} within {timeout_s} s (last: {value!r}); page text: "
                             f"{self.evaluate('document.body.innerText')[:2000]!r}")

    def navigate(self, url: str, timeout_s: float = 15.0) -> None:
        """Load ``url`` and wait for its load event."""
        seen = len(self.events)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not load within {timeout_s} s")
            self.events.append(json.loads(self.socket.recv(timeout=max(0.01, deadline - time.monotonic()))))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def drain(self) -> None:
        """Collect the events that arrived since the last call."""
        self.call("Runtime.evaluate", expression="0")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's own error log entries, so far."""
        self.drain()
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params["exceptionDetails"])[:1000])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log ({params['entry']['source']}): {params['entry']['text']} "
                             f"{params['entry'].get('url', '')}")
        return found

    def requested_urls(self) -> list[str]:
        self.drain()
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 (loopback only)
        return json.loads(reply.read())


def _wait(probe: Callable[[], T | None], what: str, timeout_s: float, process: subprocess.Popen[bytes]) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with {process.returncode} before {what}")
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise BrowserError(f"chromium: no {what} within {timeout_s} s")


@contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 1000) -> Iterator[Page]:
    """A headless chromium on a free DevTools port of 127.0.0.1 with a throw-away profile; yields its tab."""
    binary = chromium_path()
    if binary is None:
        raise BrowserError("chromium is not installed (tools/ensure-test-deps.sh installs Debian's chromium)")
    port = free_port()
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
         f"--window-size={width},{height}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def tab() -> str | None:
            return next((t["webSocketDebuggerUrl"] for t in _get_json(f"{base}/json/list") if t["type"] == "page"),
                        None)

        with connect(_wait(tab, "page target", 30, process), max_size=None, open_timeout=10) as socket:
            page = Page(socket)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.call(f"{domain}.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
            yield page
    finally:
        log.close()
        # chromium and the helpers it started, all in the session it leads (its process id is the group's)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue

"""A headless Debian chromium driven over the DevTools protocol (no Playwright, no Selenium).

`Chromium(profile)` starts `chromium --headless --remote-debugging-port=0`, reads the port it
chose from the profile's DevToolsActivePort file and talks to it over one WebSocket (the
`websockets` package uvicorn already brings). `page = browser.page()` opens a tab with the
Runtime, Log and Page domains on, so `page.errors` collects what a person would see in the
console as an error: uncaught exceptions, console.error / console.assert, and the browser's own
error entries (a failed resource load, a CSP violation). `page.visit(url, until=js)` navigates
and waits until the expression is true; `page.screenshot(path)` saves the whole page as PNG.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from websockets.sync.client import connect

from tests.e2e.test_dashboard_browser import CHROMIUM

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


class Chromium:
    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        self.profile, self.width, self.height = Path(profile), width, height
        self.proc = None
        self.ws = None
        self._ids = itertools.count(1)
        self._events: list[dict] = []

    def __enter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={self.width},{self.height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._conn = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024, open_timeout=10)
        self.ws = self._conn.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self._conn.__exit__(None, None, None)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        mid = next(self._ids)
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + timeout
        while True:
            got = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.time())))
            if got.get("id") == mid:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})
            self._events.append(got)

    def pump(self, seconds: float) -> None:
        """Read events for `seconds` (they land in the pages' error lists)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                self._events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.time()))))
            except TimeoutError:
                return

    def page(self) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=session)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.b, self.session = browser, session

    @property
    def errors(self) -> list[str]:
        out = []
        for e in self.b._events:
            if e.get("sessionId") != self.session:
                continue
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def evaluate(self, expression: str):
        r = self.b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=self.session)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text"))
        return r["result"].get("value")

    def visit(self, url: str, *, until: str = "document.body && document.body.dataset.ready === '1'",
              timeout: float = 30) -> None:
        self.b.send("Page.navigate", {"url": url}, session=self.session)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.evaluate(until):
                    self.b.pump(0.3)  # late console messages of the first render
                    return
            except RuntimeError:
                pass  # navigating: the old context is gone
            self.b.pump(0.1)
        raise TimeoutError(f"{url}: {until!r} not true after {timeout} s; errors: {self.errors}")

    def screenshot(self, path: Path, max_height: int = 6000) -> Path:
        size = self.b.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.b.width, "height": min(max_height, max(self.b.height, size["height"])),
                "scale": 1}
        data = self.b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                           session=self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

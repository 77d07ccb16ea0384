"""Headless Chromium for tests: find or install it, then drive it over the DevTools protocol on a pipe.

`ensure_chromium()` returns a Chromium executable, installing Debian's `chromium` package with apt-get
when none is on PATH; `BrowserUnavailableError` says why when that cannot be done. `Browser` starts it
with `--remote-debugging-pipe`: Chromium reads protocol commands on its file descriptor 3 and writes
replies and events on 4, each message JSON ended by a NUL byte. Only the standard library is used, every
read has a timeout (a hung browser fails the test, it does not hang CI) and the browser is always
terminated.

    with Browser() as browser:
        page = browser.open("file:///.../report.html", width=390, height=844, mobile=True, scale=2)
        assert page.evaluate("document.title") == "..."
        assert page.errors == []
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Browser", "BrowserError", "BrowserUnavailableError", "Page", "ensure_chromium", "find_chromium"]

NAMES = ("chromium", "chromium-browser", "google-chrome")

# Headless, no sandbox (tests often run as root in containers), and nothing that reaches the network:
# no background services, updates, metrics or safe-browsing look-ups, and every host name fails to resolve.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--no-pings",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)

# Runs in the child: put the two pipe ends (argv 1, 2) at fds 3 and 4, then exec the browser (argv 3...).
_TRAMPOLINE = """\
import fcntl, os, sys
ends = [int(fd) for fd in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in {*ends, *high} - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class BrowserUnavailableError(RuntimeError):
    """No Chromium on PATH and no way to install one here."""


class BrowserError(RuntimeError):
    """The browser exited, timed out, or answered a command with an error."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def find_chromium() -> str | None:
    """The first of `NAMES` on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt_get(prefix: list[str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrowserUnavailableError(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from exc


def install_chromium(timeout: float = 1200) -> str:
    """Install Debian's `chromium` with apt-get (as root, else through `sudo -n`); return its path."""
    if shutil.which("apt-get") is None:
        raise BrowserUnavailableError("Chromium is not on PATH and there is no apt-get to install it")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        raise BrowserUnavailableError("Chromium is not on PATH; installing it needs root or sudo")
    install = ("install", "-y", "--no-install-recommends", "chromium")
    result = _apt_get(prefix, *install, timeout=timeout)
    if result.returncode != 0:
        # Mostly missing or stale package lists (a fresh container): fetch them and try once more.
        update = _apt_get(prefix, "update", timeout=timeout)
        if update.returncode != 0:
            raise BrowserUnavailableError(f"apt-get update failed:\n{_tail(update.stderr)}")
        result = _apt_get(prefix, *install, timeout=timeout)
    if result.returncode != 0:
        raise BrowserUnavailableError(f"apt-get could not install chromium:\n{_tail(result.stderr)}")
    path = find_chromium()
    if path is None:
        raise BrowserUnavailableError(f"apt-get installed chromium, yet none of {NAMES} is on PATH")
    return path


def ensure_chromium() -> str:
    """A Chromium executable: the one on PATH, else a freshly installed one."""
    return find_chromium() or install_chromium()


class Browser:
    """One headless Chromium process, driven over `--remote-debugging-pipe`; a context manager.

    `send` runs one protocol command and returns its result; events are kept and dispatched to the
    `Page` of their session while waiting. Every wait is bounded by `timeout` seconds.
    """

    def __init__(self, executable: str | None = None, *, timeout: float = 30.0) -> None:
        self.executable = executable or ensure_chromium()
        self.timeout = timeout
        self._dir = Path(tempfile.mkdtemp(prefix="cdp-browser-"))
        self._ids = itertools.count(1)
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._pages: dict[str, Page] = {}
        self._closed = False
        self._log = (self._dir / "chromium.log").open("wb")
        # Chromium wants the pipe ends as its fds 3 (commands in) and 4 (messages out). Hand them over with
        # pass_fds, and let a tiny Python trampoline move them to 3 and 4 and exec Chromium.
        cmd_r, self._cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        args = [*FLAGS, f"--user-data-dir={self._dir / 'profile'}", "about:blank"]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _TRAMPOLINE, str(cmd_r), str(msg_w), self.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_r, msg_w),
                start_new_session=True,
            )
        except BaseException:
            for fd in (self._cmd_w, msg_r):
                os.close(fd)
            self._log.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        finally:
            # Only the child keeps these ends, so its exit closes the message pipe (EOF for the reader).
            os.close(cmd_r)
            os.close(msg_w)
        self._reader = threading.Thread(target=self._read, args=(msg_r,), daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except BaseException:
            self.close()
            raise

    # -- the pipe --------------------------------------------------------------------------------
    def _read(self, fd: int) -> None:
        """Reader thread: split the message pipe at NUL bytes and queue the parsed messages; None at EOF."""
        pending: list[bytes] = []  # the pieces of a message not yet ended
        try:
            with os.fdopen(fd, "rb", buffering=0) as pipe:
                while chunk := pipe.read(1 << 20):
                    *ended, rest = chunk.split(b"\0")
                    for piece in ended:
                        self._inbox.put(json.loads(b"".join([*pending, piece])))
                        pending = []
                    pending.append(rest)
        finally:
            self._inbox.put(None)

    def _pump(self, deadline: float) -> bool:
        """Take one message (waiting until `deadline` at most) and file it; False if none came in time."""
        try:
            message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if message is None:
            self._inbox.put(None)  # stay at EOF for later waits
            raise BrowserError(f"Chromium closed the pipe (exit code {self._proc.poll()}){self._log_tail()}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self._events.append(message)
            page = self._pages.get(message.get("sessionId", ""))
            if page is not None:
                page._on_event(message["method"], message.get("params", {}))
        return True

    def _log_tail(self) -> str:
        self._log.flush()
        text = (self._dir / "chromium.log").read_text(errors="replace")
        return f"\nChromium's log ends:\n{_tail(text)}" if text.strip() else ""

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run one protocol command (in a target's `session` if given) and return its result."""
        if self._closed:
            raise BrowserError("the browser is closed")
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(f"cannot send {method}: {exc}{self._log_tail()}") from exc
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while msg_id not in self._replies:
            if not self._pump(deadline):
                raise BrowserError(f"no reply to {method} within {limit:.0f} s{self._log_tail()}")
        reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait_event(
        self,
        method: str,
        *,
        session: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The params of the first kept event `method` (of `session`, and `where` they match), taken from
        the kept events, waiting for it if need be."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        seen = 0
        while True:
            for i, event in enumerate(self._events[seen:], seen):
                params: dict[str, Any] = event.get("params", {})
                if (
                    event["method"] == method
                    and (session is None or event.get("sessionId") == session)
                    and (where is None or where(params))
                ):
                    del self._events[i]
                    return params
            seen = len(self._events)
            if not self._pump(deadline):
                raise BrowserError(f"no {method} event within {limit:.0f} s")

    def drain(self) -> None:
        """File every message that has already arrived (so pages see their latest events)."""
        while self._pump(time.monotonic()):
            pass

    # -- pages -----------------------------------------------------------------------------------
    def open(
        self,
        url: str,
        *,
        width: int = 1280,
        height: int = 900,
        mobile: bool = False,
        scale: float = 1,
        timeout: float | None = None,
    ) -> Page:
        """A new tab with a `width`×`height` CSS-pixel viewport that has loaded `url` (load event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        page.viewport = {"width": width, "height": height, "mobile": mobile, "scale": scale}
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile},
        )
        if mobile:
            page.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
        page.send("Page.setLifecycleEventsEnabled", {"enabled": True})
        nav = page.send("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise BrowserError(f"cannot open {url}: {nav['errorText']}")
        # The load event of this navigation (its loader), not a late one from about:blank.
        self.wait_event(
            "Page.lifecycleEvent",
            session=session,
            where=lambda e: e.get("name") == "load" and e.get("loaderId") == nav.get("loaderId"),
            timeout=timeout,
        )
        # Forget the tab's other events (they are filed on the page already).
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return page

    def close(self) -> None:
        """End Chromium (Browser.close, else SIGTERM, else SIGKILL to its process group) and remove its
        profile; safe to call twice."""
        if self._closed:
            return
        polite = False
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", timeout=min(5.0, self.timeout))
            polite = True
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self._cmd_w)
        for sig, wait in ((None, 5.0 if polite else 0.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            if sig is not None:
                # Chromium leads its own session (start_new_session): its group is this browser only.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=wait)
                break
        self._reader.join(timeout=5)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Page:
    """One tab of a `Browser`, attached in flat mode; collects its console errors and exceptions."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session
        self.viewport: dict[str, Any] = {}
        self._errors: list[str] = []

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self._errors.append(f"console.error: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            where = f"{details.get('url', '')}:{details.get('lineNumber', 0) + 1}"
            self._errors.append(f"exception at {where}: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self._errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        self.browser.drain()
        return list(self._errors)

    def send(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """`Browser.send` in this tab's session."""
        return self.browser.send(method, params, session=self.session, **kw)

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """The value of a JS expression (promises awaited), returned by value; a JS error raises."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JS error in {expression[:60]!r}...: {text}")
        return result["result"].get("value")

    def screenshot(self, *, full_page: bool = True, timeout: float | None = None) -> bytes:
        """A PNG of the viewport, or of the whole page beyond it (`full_page`)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", params, timeout=timeout)["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        """Close the tab."""
        self.browser.send("Target.closeTarget", {"targetId": self.target})
        self.browser._pages.pop(self.session, None)


@contextlib.contextmanager
def opened(browser: Browser, url: str, **viewport: Any) -> Iterator[Page]:
    """`browser.open(url, **viewport)` as a context manager that closes the tab afterwards."""
    page = browser.open(url, **viewport)
    try:
        yield page
    finally:
        with contextlib.suppress(BrowserError):
            page.close()

"""The status page (``/``) in a real browser, following a job from running to done.

Rules: the daemon runs in-process (``daemon.serve``) on a real SQLite file with
``[server] listen = "127.0.0.1:0"``. Headless chromium (skipped when it is not
installed) starts in its own session, is driven over the DevTools protocol
(httpx2 for ``/json``, trio-websocket for the target) and its whole process
group is killed at the end, whatever happened. It starts on ``about:blank``
and is sent to the page with ``Page.navigate`` once attached, so the test
awaits the page's load event instead of racing it. Nothing sleeps on the wall
clock: every wait awaits an answer -- chromium's ``DevTools listening`` line,
a DevTools reply or event, a DOM change in the page -- under a bounded
timeout. The page's state is read with ``Runtime.evaluate`` on a promise that
resolves at the page's next DOM mutation (or at once when one happened since
the previous read), so the polling loop goes at the page's pace and never
misses its last state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from deepmox import config
from deepmox.client import JobSpec
from deepmox.daemon import Daemon, serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
]

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0",
)
#: chromium's start, up to its DevTools line, on a busy 2-core machine
BROWSER_START_S = 45.0  # a cold start on a loaded 2-core machine took over 15 s
#: page reads allowed per wait; each one awaits a DOM change, so this is generous
MAX_READS = 2_000

#: the page's state after its next DOM change (``since``: the last change seen)
READ_PAGE = """
((since) => new Promise((resolve) => {
  const w = window.__deepmoxTest || (window.__deepmoxTest = (() => {
    const w = {version: 0, waiters: []};
    new MutationObserver(() => {
      w.version++;
      const waiters = w.waiters; w.waiters = [];
      for (const f of waiters) f();
    }).observe(document.body, {subtree: true, childList: true, attributes: true,
                               characterData: true});
    return w;
  })());
  const answer = () => resolve({
    version: w.version,
    conn: document.getElementById("conn").className,
    stats: document.getElementById("stats").textContent,
    running: [...document.querySelectorAll("#running tbody tr")].map((tr) => ({
      job: tr.dataset.job,
      progress: Number(tr.querySelector("td[data-progress]").dataset.progress),
    })),
    finished: [...document.querySelectorAll("#finished tbody tr")].map((tr) => ({
      job: tr.dataset.job,
      state: (tr.querySelector("td.completed, td.failed, td.cancelled") || {}).className,
    })),
  });
  if (w.version > since) answer(); else w.waiters.push(answer);
}))(%d)
"""


@contextlib.asynccontextmanager
async def running(cfg: config.Config) -> AsyncIterator[Daemon]:
    """An in-process daemon on ``cfg``, drained on exit."""
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve(cfg, handle_signals=False, task_status=task_status))
        try:
            yield daemon
        finally:
            daemon.stop()


class DevTools:
    """One DevTools target over its websocket: calls answered in order, events kept."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = msgspec.json.decode(await self.ws.get_message())
        return message

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        call_id = self.next_id
        await self.ws.send_message(msgspec.json.encode(
            {"id": call_id, "method": method, "params": params}).decode())
        while True:
            message = await self._receive()
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            if "method" in message:
                self.events.append(message)

    async def event(self, method: str) -> dict[str, Any]:
        """The first event ``method`` not yet taken, waiting for it."""
        while True:
            for i, message in enumerate(self.events):
                if message["method"] == method:
                    return self.events.pop(i)
            message = await self._receive()
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in answer:
            raise AssertionError(f"the page threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")


class Page:
    """The status page's state, read at each of its DOM changes."""

    def __init__(self, devtools: DevTools) -> None:
        self.devtools = devtools
        self.version = -1
        self.seen: list[dict[str, Any]] = []

    async def wait_for(self, what: str, condition: Any, timeout: float) -> dict[str, Any]:
        """Read the page at each change until ``condition(state)``; the state."""
        with trio.move_on_after(timeout):
            for _ in range(MAX_READS):
                state: dict[str, Any] = await self.devtools.evaluate(READ_PAGE % self.version)
                self.version = state["version"]
                self.seen.append(state)
                if condition(state):
                    return state
        raise AssertionError(f"the page never showed {what}; its last states:\n"
                             + "\n".join(map(str, self.seen[-5:])))


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[str]:
    """Headless chromium on ``about:blank`` in its own session; yields its
    DevTools origin (``127.0.0.1:PORT``)."""
    exe = shutil.which("chromium")
    assert exe is not None
    process = await trio.lowlevel.open_process(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    assert process.stderr is not None
    stderr = process.stderr
    output = bytearray()
    origin = ""
    listening = trio.Event()

    async def drain() -> None:
        # read chromium's stderr to its end, so that its noise never fills the pipe
        nonlocal origin
        async for chunk in stderr:
            start = max(0, len(output) - 200)
            output.extend(chunk)
            if listening.is_set():
                continue
            *complete, _ = bytes(output[start:]).split(b"\n")  # whole lines only
            for line in complete:
                if line.startswith(b"DevTools listening on ws://"):
                    origin = line.split(b"ws://", 1)[1].split(b"/", 1)[0].decode()
                    listening.set()
        listening.set()  # stderr closed: chromium exited

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.move_on_after(BROWSER_START_S):
                await listening.wait()
            if not origin:
                raise AssertionError(
                    f"chromium did not report its DevTools port within {BROWSER_START_S:g} s "
                    f"(returncode {process.poll()}); its stderr:\n"
                    + output.decode(errors="replace")[-3000:])
            yield origin
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
            await stderr.aclose()


async def test_the_status_page_follows_a_job_to_completion(tmp_path: Path) -> None:
    cfg = config.decode(
        f'[d1]\npath = "{tmp_path / "page.db"}"\n[r2]\npath = "{tmp_path / "r2"}"\n'
        f'[server]\nlisten = "127.0.0.1:0"\n[supervisor]\nnode = "a"\npoll_max_s = 0.1\n')
    with trio.fail_after(40):
        async with running(cfg) as daemon, chromium(tmp_path / "profile") as origin:
            async with httpx2.AsyncClient() as http:
                targets = (await http.get(f"http://{origin}/json")).json()
            pages = [t for t in targets if t["type"] == "page"]
            assert pages, targets
            async with open_websocket_url(pages[0]["webSocketDebuggerUrl"],
                                          max_message_size=16 * 2**20) as ws:
                devtools = DevTools(ws)
                await devtools.call("Page.enable")
                navigated = await devtools.call("Page.navigate",
                                                url=f"http://{daemon.api_address}/")
                assert "errorText" not in navigated, navigated
                await devtools.event("Page.loadEventFired")
                page = Page(devtools)
                # the snapshot has arrived (it fills #stats): the page is on the feed
                await page.wait_for("the feed's snapshot",
                                    lambda s: s["conn"] == "up" and s["stats"], 10)

                ((job, _),) = await daemon.client.submit_many(
                    [(JobSpec(kind="sleep", payload={"seconds": 3, "steps": 6}), None)])

                def in_progress(state: dict[str, Any]) -> bool:
                    return any(r["job"] == job.id and 0 < r["progress"] < 1
                               for r in state["running"])

                def completed(state: dict[str, Any]) -> bool:
                    return any(f["job"] == job.id and f["state"] == "completed"
                               for f in state["finished"])

                await page.wait_for(f"{job.id} running with 0 < progress < 1", in_progress, 10)
                last = await page.wait_for(f"{job.id} completed", completed, 15)
                assert job.id not in [r["job"] for r in last["running"]]
                # it went through several progress values on the way
                progress = {r["progress"] for s in page.seen for r in s["running"]
                            if r["job"] == job.id}
                assert len({p for p in progress if 0 < p < 1}) >= 2, progress

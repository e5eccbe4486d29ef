"""Use `distill demo` as a person would, in headless Chromium: open the page, upload an image, click a point, wait
for every model's mask, take a screenshot. Driven over Chrome's DevTools protocol (websocket-client), so nothing
but Debian's chromium is needed.

    python benchmarks/demo_in_browser.py MODEL [MODEL ...] --image IMAGE --screenshot docs/img/demo.png [--click 0.5,0.5]

starts the demo on a free local port with those models; ``--url http://127.0.0.1:7860/`` drives one already running.
Prints the page's state as JSON (masks drawn, answers, error, each panel's line); exit 0 when the page answered
without an error.
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from check_report_html import find_chromium  # the same script folder: one way to find the browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """The few DevTools-protocol calls a person's actions need: open a page, pick a file, click, read, screenshot."""

    def __init__(self, websocket_url: str):
        import websocket

        self.socket = websocket.create_connection(websocket_url, timeout=60)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 120) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.2)
        status = self.evaluate("document.getElementById('status').textContent")
        raise TimeoutError(f"timed out waiting for {expression}; the page says: {status}")


def drive(url: str, image: Path, screenshot: Path | None, click: tuple[float, float] = (0.5, 0.5)) -> dict:
    """Upload ``image`` on the page at ``url``, click at ``click`` (fractions of the first canvas), wait for the
    answer; returns the page's state."""
    browser_binary = find_chromium()
    if browser_binary is None:
        raise SystemExit("no chromium binary found (apt-get install chromium)")
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([browser_binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--disable-background-networking", f"--user-data-dir={profile}",
                                    f"--remote-debugging-port={port}", "--window-size=1280,900", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration):
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
            tools = DevTools(page["webSocketDebuggerUrl"])
            tools.call("Page.enable")
            tools.call("Page.navigate", url=url)
            tools.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
            root = tools.call("DOM.getDocument")["root"]["nodeId"]
            node = tools.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            tools.call("DOM.setFileInputFiles", nodeId=node, files=[str(Path(image).resolve())])
            tools.wait_for("window.demoState.loaded === true")
            x, y = tools.evaluate(f"(() => {{ const r = document.querySelector('canvas').getBoundingClientRect();"
                                  f" return [r.left + r.width * {click[0]}, r.top + r.height * {click[1]}]; }})()")
            for event in ("mousePressed", "mouseReleased"):
                tools.call("Input.dispatchMouseEvent", type=event, x=x, y=y, button="left", clickCount=1)
            tools.wait_for("window.demoState.responses >= 1 || window.demoState.error !== null")
            state = tools.evaluate("({masksDrawn: window.demoState.masksDrawn, responses: window.demoState.responses,"
                                   " error: window.demoState.error, panels: document.querySelectorAll('.panel').length,"
                                   " iouCells: document.querySelectorAll('#iou td').length,"
                                   " stats: [...document.querySelectorAll('.stats')].map(s => s.textContent)})")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"]))
            return state
        finally:
            browser.terminate()
            browser.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="model files or ONNX export folders to serve")
    parser.add_argument("--url", help="drive a demo already running here instead")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--click", default="0.5,0.5", help="where to click, as fractions of the image: x,y")
    args = parser.parse_args()
    click = tuple(float(v) for v in args.click.split(","))
    server = None
    if args.url is None:
        if not args.models:
            parser.error("give model files to serve, or --url of a running demo")
        import torch
        import uvicorn

        from sam_distill.serve.app import Demo, create_app
        from sam_distill.serve.models import open_model

        port = free_port()
        demo = Demo([open_model(path, torch.device("cpu")) for path in args.models])
        server = uvicorn.Server(uvicorn.Config(create_app(demo), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        args.url = f"http://127.0.0.1:{port}/"
        while not server.started:
            time.sleep(0.1)
    try:
        state = drive(args.url, args.image, args.screenshot, click)
    finally:
        if server is not None:
            server.should_exit = True
    print(json.dumps(state))
    return 0 if state["responses"] >= 1 and not state["error"] else 1


if __name__ == "__main__":
    sys.exit(main())

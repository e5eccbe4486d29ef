"""Open a report.html in headless Chromium: it must load without console errors and show its plot.

    python benchmarks/check_report_html.py runs/quickstart/reports/report.html --screenshot shot.png

Exit 0 and "plot visible" when the page is clean and the screenshot holds the plot's own colours
(the Pareto front's green and the student markers' blue); exit 1 with the reason otherwise.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONSOLE_ERROR = re.compile(r"Uncaught|CONSOLE.*(Error|error)|Failed to load resource|net::ERR_")
PLOT_COLOURS = {"Pareto front green": (0x27, 0xAE, 0x60), "student marker blue": (0x24, 0x71, 0xA3)}


def find_chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def coloured_pixels(png: Path, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).sum())


def check(html: Path, screenshot: Path, window: str = "1280,2000") -> list[str]:
    browser = find_chromium()
    if browser is None:
        return ["no chromium binary found (apt-get install chromium)"]
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", f"--screenshot={screenshot}", f"--window-size={window}", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=90)
    problems = [line.strip() for line in proc.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    if not screenshot.exists():
        return problems + [f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"]
    for name, rgb in PLOT_COLOURS.items():
        if coloured_pixels(screenshot, rgb) < 20:
            problems.append(f"screenshot shows no {name}: the plot is not visible")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, default=Path("report-screenshot.png"))
    args = parser.parse_args()
    problems = check(args.html, args.screenshot)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return 1
    print(f"loaded without console errors; plot visible; screenshot {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of what a user sees: TensorBoard's HParams dashboard of a search, and its report.

    python scripts/screenshots.py --project demo-runs/demo [--out docs/img]

Starts `tune board` on the search, opens it in headless Chromium (Debian's
``chromium`` and ``chromium-driver`` packages, driven through selenium: ``pip install
selenium``), and saves the HParams table and parallel-coordinates views; then writes
the search's report (`tune report`) and saves its first screen. No network is needed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

# TensorBoard's HParams dashboard lives in nested shadow roots: find an element by its text anywhere.
_FIND = """
const wanted = arguments[0].toLowerCase();
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) { const hit = walk(el.shadowRoot); if (hit) return hit; }
    const text = (el.innerText || el.textContent || '').trim().toLowerCase();
    if (text === wanted && el.children.length <= 1) return el;
  }
  return null;
}
const el = walk(document);
if (el) { el.scrollIntoView(); el.click(); return true; }
return false;
"""


def start_board(project: Path):
    proc = subprocess.Popen([sys.executable, "-m", "xtune", "board", "--project", str(project), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"(http://\S+:\d+/)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit("tune board did not start")


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def click_text(driver, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(_FIND, text):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} on the page")
        time.sleep(0.5)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    proc, url = start_board(args.project)
    driver = browser(args.width, args.height)
    try:
        driver.get(url + "#hparams")
        click_text(driver, "table view")  # the dashboard has loaded once its tabs show
        time.sleep(4)
        driver.save_screenshot(str(args.out / "hparams-table.png"))
        click_text(driver, "parallel coordinates view")
        time.sleep(4)
        driver.save_screenshot(str(args.out / "hparams-parallel.png"))
        subprocess.run([sys.executable, "-m", "xtune", "report", "--project", str(args.project)], check=True,
                       capture_output=True)
        driver.get((args.project / "report.html").resolve().as_uri())
        time.sleep(3)
        driver.save_screenshot(str(args.out / "report.png"))
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    for name in ("hparams-table.png", "hparams-parallel.png", "report.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()

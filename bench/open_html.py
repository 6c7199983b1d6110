"""Times how long an HTML report takes to open in headless Chromium (bench/run.py runs it with
the bench venv's python, where Playwright is installed).

    open_html.py CHROMIUM RUNS FILE...

For each file: RUNS loads, each in a fresh offline browser context, from navigation until the
page's load event has fired and the next frame has been painted (scripts that draw on load have
then drawn).  Prints one JSON object: {file: {"median_s": .., "runs": [..], "errors": [..]}}.
Console errors and page errors are collected, so a page that opens fast but broken shows.
"""
import json
import statistics
import sys
import time

from playwright.sync_api import sync_playwright

PAINTED = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def open_once(browser, path):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, offline=True)
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.monotonic()
    page.goto("file://" + path, wait_until="load", timeout=120000)
    page.evaluate(PAINTED)
    seconds = time.monotonic() - t0
    ctx.close()
    return seconds, errors


def main():
    chromium, runs, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox", "--disable-gpu"])
        open_once(browser, files[0])  # warm-up: the browser's own start
        for f in files:
            times, errors = [], []
            for _ in range(runs):
                s, e = open_once(browser, f)
                times.append(s)
                errors += e
            out[f] = {"median_s": statistics.median(times), "runs": times,
                      "errors": errors[:5]}
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

// A thin remote control for headless Chromium, driven by the Python browser tests.
//
// It reads one JSON command per line on stdin and answers each with one JSON line on
// stdout: {"id": N, "ok": true, "result": ...} or {"id": N, "ok": false, "error": "..."}.
// Lines without an "id" are events: {"event": "console", "text": ...} for the page's
// console and errors, so the Python side can keep them as the test's log. The assertions
// live in the Python test; this file only does what it is told.
//
// Commands: launch {executablePath, args}, init_script {script}, goto {url}, eval {expr}, wait {expr, timeout},
// text {selector}, fill {selector, value}, press {selector, key}, screenshot {path}, close.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

let browser = null;
let page = null;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const ops = {
  async launch({ executablePath, args = [], viewport = { width: 1280, height: 800 } }) {
    browser = await chromium.launch({ executablePath, args, headless: true });
    const context = await browser.newContext({ viewport });
    page = await context.newPage();
    page.on("console", (msg) => emit({ event: "console", type: msg.type(), text: msg.text() }));
    page.on("pageerror", (err) => emit({ event: "console", type: "pageerror", text: String(err) }));
    page.on("requestfailed", (req) =>
      emit({
        event: "console",
        type: "requestfailed",
        text: `${req.method()} ${req.url()}: ${req.failure()?.errorText}`,
      }),
    );
    page.on("response", (res) => {
      if (res.status() >= 400)
        emit({ event: "console", type: "http", text: `${res.status()} ${res.url()}` });
    });
    page.on("websocket", (ws) => {
      emit({ event: "console", type: "websocket", text: `open ${ws.url()}` });
      ws.on("close", () => emit({ event: "console", type: "websocket", text: `close ${ws.url()}` }));
    });
    return browser.version();
  },
  async init_script({ script }) {
    // Runs in every page of the context before the page's own scripts.
    await page.context().addInitScript({ content: script });
    return null;
  },
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: "load" });
    return response ? response.status() : null;
  },
  async eval({ expr }) {
    // `expr` is a function body's expression, e.g. "window.foo" or "(async () => 1)()".
    return await page.evaluate(expr);
  },
  async wait({ expr, timeout = 20000 }) {
    // Polls `expr` until it is truthy; a Promise counts by what it resolves to (unlike
    // page.waitForFunction, where a pending Promise is already truthy). Errors (e.g. a name
    // not defined yet) count as false and the last one is reported on timeout.
    const deadline = Date.now() + timeout;
    const check = `(async () => Boolean(await (${expr})))()`;
    let lastError = null;
    for (;;) {
      try {
        if (await page.evaluate(check)) return true;
        lastError = null;
      } catch (err) {
        lastError = err;
      }
      if (Date.now() > deadline) {
        const why = lastError ? ` (last error: ${lastError.message})` : "";
        throw new Error(`timed out after ${timeout} ms waiting for: ${expr}${why}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  },
  async text({ selector }) {
    return await page.locator(selector).allInnerTexts();
  },
  async fill({ selector, value }) {
    await page.locator(selector).fill(value);
    return null;
  },
  async press({ selector, key }) {
    await page.locator(selector).press(key);
    return null;
  },
  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: false });
    return path;
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
// Commands run one at a time, in order.
let queue = Promise.resolve();
lines.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit({ id: null, ok: false, error: `bad command: ${err}` });
      return;
    }
    const op = ops[cmd.op];
    if (!op) {
      emit({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` });
      return;
    }
    try {
      const result = await op(cmd);
      emit({ id: cmd.id, ok: true, result: result ?? null });
    } catch (err) {
      emit({ id: cmd.id, ok: false, error: String(err && err.stack ? err.stack : err) });
    }
  });
});
lines.on("close", async () => {
  await queue;
  if (browser) await browser.close();
  process.exit(0);
});

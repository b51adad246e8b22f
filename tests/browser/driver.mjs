// Drives Debian's chromium through playwright-core for tests/lab/test_status_page.py.
// Reads one JSON command per line on stdin, answers one JSON line on stdout:
//   {"op": "goto", "url": U}                      -> {"ok": true}
//   {"op": "wait", "selector": S, "timeout": ms}  -> {"ok": true} | {"ok": false, "error": ...}
//   {"op": "eval", "js": "() => ..."}             -> {"ok": true, "value": ...}
//   {"op": "screenshot", "path": P}               -> {"ok": true}
//   {"op": "quit"}
// Every answer also carries "navigations": main-frame navigations so far (a reload counts).
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const profile = mkdtempSync(join(tmpdir(), "meshnet-chromium-"));
// A fresh profile each run; playwright passes it as --user-data-dir.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = context.pages()[0] ?? await context.newPage();
let navigations = 0;
page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations += 1; });
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const say = (o) => process.stdout.write(JSON.stringify({ navigations, consoleErrors, ...o }) + "\n");
say({ ok: true, ready: true });

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  try {
    if (c.op === "goto") {
      const t0 = Date.now();
      await page.goto(c.url, { waitUntil: "load" });
      say({ ok: true, ms: Date.now() - t0 });
    } else if (c.op === "wait") {
      await page.waitForSelector(c.selector, { timeout: c.timeout ?? 10000, state: c.state ?? "attached" });
      say({ ok: true });
    } else if (c.op === "eval") {
      say({ ok: true, value: await page.evaluate(c.js) });
    } else if (c.op === "screenshot") {
      await page.screenshot({ path: c.path, fullPage: true });
      say({ ok: true });
    } else if (c.op === "quit") {
      break;
    } else {
      say({ ok: false, error: `unknown op ${c.op}` });
    }
  } catch (e) {
    say({ ok: false, error: String(e) });
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });

// Drives the web page of `omniad serve` in headless Chromium over the DevTools protocol: opens
// the page, uploads one image through the file input, waits for the verdict and the overlay,
// checks them and saves a screenshot.
//
//   node --experimental-websocket scripts/page_check.mjs URL IMAGE OUT.png
//
// URL: a running `omniad serve` (e.g. http://127.0.0.1:18080/). Needs Chromium (Debian package
// `chromium`; another binary via OMNIAD_CHROMIUM) and Node >= 20.10. Prints the page's state as
// one JSON line (verdict, status text, image labels). Exits non-zero if the verdict or the
// overlay do not appear within 60 s.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [url, image, out] = process.argv.slice(2);
if (!url || !image || !out) {
  console.error("usage: node --experimental-websocket scripts/page_check.mjs URL IMAGE OUT.png");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "omniad-chromium-"));
const port = 9300 + Math.floor(Math.random() * 500);
const browser = spawn(process.env.OMNIAD_CHROMIUM || "chromium", [
  "--headless=new", "--no-sandbox", "--disable-gpu", `--remote-debugging-port=${port}`,
  `--user-data-dir=${profile}`, "--window-size=1100,800", "about:blank",
], { stdio: "ignore" });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = Date.now() + 60_000;
let failed = "";
try {
  let pageWs;
  while (!pageWs) {
    if (Date.now() > deadline) throw new Error("Chromium did not start");
    try {
      const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      pageWs = targets.find((t) => t.type === "page")?.webSocketDebuggerUrl;
    } catch { /* not up yet */ }
    if (!pageWs) await sleep(200);
  }
  const ws = new WebSocket(pageWs);
  await new Promise((ok, err) => { ws.onopen = ok; ws.onerror = err; });
  let id = 0;
  const pending = new Map();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id && pending.has(msg.id)) {
      const { ok, err } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? err(new Error(JSON.stringify(msg.error))) : ok(msg.result);
    }
  };
  const send = (method, params = {}) => new Promise((ok, err) => {
    const n = ++id;
    pending.set(n, { ok, err });
    ws.send(JSON.stringify({ id: n, method, params }));
  });
  const evaluate = async (expr) =>
    (await send("Runtime.evaluate", { expression: expr, returnByValue: true })).result.value;
  await send("Page.enable");
  await send("Page.navigate", { url });
  while (!(await evaluate("document.readyState === 'complete' && document.getElementById('model').textContent.startsWith('Model:')"))) {
    if (Date.now() > deadline) throw new Error("the page did not load the model description");
    await sleep(200);
  }
  const { root } = await send("DOM.getDocument");
  const { nodeId } = await send("DOM.querySelector", { nodeId: root.nodeId, selector: "#files" });
  await send("DOM.setFileInputFiles", { nodeId, files: [resolve(image)] });
  let state;
  for (;;) {
    state = await evaluate(`(() => {
      const v = document.getElementById('verdict');
      const imgs = [...document.querySelectorAll('.images img')];
      const err = document.querySelector('.error');
      return { verdict: v && v.textContent, status: v && v.parentElement.textContent, images: imgs.map((i) => i.alt),
               loaded: imgs.every((i) => i.complete && i.naturalWidth > 0),
               error: err && err.textContent, model: document.getElementById('model').textContent };
    })()`);
    if (state.error) throw new Error("the page shows an error: " + state.error);
    if (state.verdict && state.images.includes("overlay") && state.loaded) break;
    if (Date.now() > deadline) throw new Error("no verdict and overlay within 60 s: " + JSON.stringify(state));
    await sleep(200);
  }
  const shot = await send("Page.captureScreenshot", { format: "png" });
  writeFileSync(out, Buffer.from(shot.data, "base64"));
  console.log(JSON.stringify(state));
  ws.close();
} catch (e) {
  failed = String(e && e.message || e);
} finally {
  browser.kill();
  await sleep(300);
  rmSync(profile, { recursive: true, force: true });
}
if (failed) {
  console.error("page check failed: " + failed);
  process.exit(1);
}

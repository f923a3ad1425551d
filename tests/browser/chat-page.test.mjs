// The chat page and a browser EventSource, in a real headless Chromium (Debian's).
// Starts the agent-api binary (AGENT_API_BIN) with the echo provider and an API key.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const KEY = "browser-test-key";
let server, base, browser;

before(async () => {
  const bin = process.env.AGENT_API_BIN;
  assert.ok(bin, "AGENT_API_BIN must name the agent-api binary");
  server = spawn(bin, [], {
    env: { PATH: process.env.PATH, PORT: "0", LOG_FORMAT: "json", API_KEYS: `web=${KEY}`, ECHO_DELAY_MS: "40", RATE_LIMIT_BURST: "1000" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start")), 15000);
    createInterface({ input: server.stdout }).on("line", (line) => {
      try {
        const m = JSON.parse(line).message || "";
        if (m.startsWith("listening on ")) { clearTimeout(timer); resolve(m.slice("listening on ".length)); }
      } catch (_) { /* not every line matters */ }
    });
    server.on("exit", (code) => reject(new Error("server exited with " + code)));
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
});

test("the page makes no failing request on load, and asks for the key", async () => {
  const page = await browser.newPage();
  const failed = [];
  const consoleErrors = [];
  page.on("response", (r) => { if (r.status() >= 400) failed.push(r.status() + " " + r.url()); });
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text() + " " + m.location().url); });
  await page.goto(base + "/");
  await page.waitForFunction(() => document.querySelector("#conv").textContent.includes("API key"));
  await page.waitForTimeout(300);
  assert.deepEqual(failed, []);
  assert.deepEqual(consoleErrors, []);
  // With the key, the models load (one request, answered 200).
  const models = page.waitForResponse((r) => r.url().endsWith("/v1/models"));
  await page.fill("#key", KEY);
  await page.dispatchEvent("#key", "change");
  assert.equal((await models).status(), 200);
  // The page fills the list after it has read the answer: wait for that, not for the response.
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 1, null, { timeout: 5000 });
  assert.ok(await page.locator("#model option").count() > 1);
  await page.close();
});

test("a person types a message and sees the streamed answer", async () => {
  const page = await browser.newPage();
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
  await page.goto(base + "/");
  await page.fill("#key", KEY);
  await page.dispatchEvent("#key", "change");
  await page.fill("#input", "hello from the browser");
  // Watch the answer grow: it must be seen partly written before it is complete.
  const partial = page.waitForFunction(() => {
    const a = document.querySelector(".assistant.streaming");
    return a && a.textContent.length > 0 && a.textContent !== "Echo: hello from the browser";
  });
  await page.click("#send");
  await partial;
  await page.waitForSelector(".assistant .meta", { timeout: 10000 });
  const answer = await page.textContent(".assistant");
  assert.match(answer, /^Echo: hello from the browser\d+ tokens$/);
  const conv = await page.textContent("#conv");
  assert.match(conv, /^Conversation [0-9a-f-]{36}$/);

  // The conversation is kept: a reload shows it again.
  await page.reload();
  await page.waitForSelector(".assistant");
  assert.equal(await page.locator(".user").count(), 1);
  assert.deepEqual(external, [], "the page loads nothing from another host");
  await page.close();
});

test("a wrong key is shown as an error", async () => {
  const page = await browser.newPage();
  await page.goto(base + "/");
  await page.evaluate(() => localStorage.clear());
  await page.fill("#key", "wrong");
  await page.fill("#input", "hi");
  await page.click("#send");
  const err = await page.waitForSelector(".error");
  assert.match(await err.textContent(), /^401: /);
  await page.close();
});

test("an EventSource on GET /chat/stream receives every frame through done", async () => {
  const page = await browser.newPage();
  await page.goto(base + "/health");
  const frames = await page.evaluate(async (key) => {
    return await new Promise((resolve, reject) => {
      const out = [];
      const es = new EventSource(`/chat/stream?message=${encodeURIComponent("event source works")}&conversation_id=es-1&api_key=${key}`);
      es.onmessage = (e) => {
        const f = JSON.parse(e.data);
        out.push({ id: e.lastEventId, ...f });
        if (f.done) { es.close(); resolve(out); }
      };
      es.onerror = () => { es.close(); reject(new Error("EventSource error after " + out.length + " frames")); };
    });
  }, KEY);
  const text = frames.filter((f) => f.content !== undefined).map((f) => f.content).join("");
  assert.equal(text, "Echo: event source works");
  const done = frames.at(-1);
  assert.equal(done.done, true);
  assert.equal(done.conversation_id, "es-1");
  assert.ok(done.tokens_used > 0);
  // Opaque ids naming the run and the position after each event.
  assert.match(done.run_id, /^[0-9a-f]{32}$/);
  assert.deepEqual(frames.map((f) => f.id), frames.map((_, i) => `${done.run_id}-${i + 1}`));
  await page.close();
});

/** The model calls made so far (the echo provider's, as /metrics counts them). */
async function modelCalls() {
  const text = await (await fetch(base + "/metrics")).text();
  return text.split("\n")
    .filter((l) => l.startsWith("agent_api_upstream_duration_seconds_count"))
    .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

test("an EventSource left open after done reconnects once, is told 204, and calls the model once", async () => {
  const page = await browser.newPage();
  await page.goto(base + "/health");
  const streams = [];
  page.on("response", (r) => { if (r.url().includes("/chat/stream")) streams.push(r.status()); });
  const before = await modelCalls();
  // The page does what a careless client does: it never closes the EventSource.
  const seen = await page.evaluate(async (key) => {
    return await new Promise((resolve) => {
      const out = { frames: 0, errors: 0, done: null };
      const es = new EventSource(`/chat/stream?message=${encodeURIComponent("only once")}&conversation_id=es-open&api_key=${key}`);
      window.__es = es;
      es.onmessage = (e) => { out.frames += 1; const f = JSON.parse(e.data); if (f.done) out.done = f; };
      es.onerror = () => { out.errors += 1; };
      // Several of Chromium's reconnect periods (3 s each).
      setTimeout(() => resolve({ ...out, state: es.readyState }), 9500);
    });
  }, KEY);
  assert.equal(seen.done?.done, true, JSON.stringify(seen));
  assert.equal(seen.state, 2, "the EventSource was told to stop (CLOSED)");
  assert.deepEqual(streams, [200, 204], "one stream, then one reconnect answered 204");
  assert.equal(await modelCalls() - before, 1, "exactly one model call");
  const conv = await (await fetch(base + "/conversation/es-open", { headers: { "x-api-key": KEY } })).json();
  assert.equal(conv.message_count, 3, "exactly one turn");
  await page.close();
});

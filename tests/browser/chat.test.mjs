// The web client in a real browser: Debian's chromium, headless, driven by
// puppeteer-core, against the real broker binary (`parley serve` on
// ephemeral ports, a temporary data dir, a short presence timeout).
//
// Three people in three browser contexts (alice at desktop width, bob at
// phone width, carol at desktop width) register, become friends, see each
// other online, chat both ways with ticks and typing, make a group, get
// system messages; bob reloads and still sees everything, then goes offline
// and comes back to every message he missed (and his message typed offline
// is sent exactly once); server errors are shown; members are removed and
// leave; alice logs out. Writes artifacts/ (screenshots, the broker's log)
// and, with PARLEY_UPDATE_SCREENSHOT=1, docs/web-client.png.
//
// Run: bash .ci/browser (installs what is missing, builds the broker), or
// node tests/browser/chat.test.mjs once both are there.
// Env: PARLEY_BIN (default $CARGO_TARGET_DIR/debug/parley), CHROMIUM
// (default /usr/bin/chromium), PARLEY_CHROMIUM_NO_SANDBOX=1 (forced when
// root), PARLEY_BROWSER_HEADFUL=1 to watch, PARLEY_UPDATE_SCREENSHOT=1.

import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const artifacts = path.join(here, "artifacts");
const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), ".cache/parley/target");
const bin = process.env.PARLEY_BIN || path.join(target, "debug/parley");
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const PRESENCE_TIMEOUT_S = 8;
const WAIT_MS = 20000;
const DESKTOP = { width: 1180, height: 760 };
const PHONE = { width: 390, height: 780, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cleanup = [];
let failures = 0;
let passed = 0;

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok ${passed + failures} - ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failures += 1;
    console.log(`not ok ${passed + failures} - ${name}`);
    console.log(`  ${String(error.stack || error).split("\n").join("\n  ")}`);
    await snapshotAll(`failed-${passed + failures}`);
    throw error;
  }
}

// ---------------------------------------------------------------- the broker

function serviceSecret(dataDir) {
  const out = execFileSync(bin, ["service", "add", "notices", "--data-dir", dataDir], {
    encoding: "utf8",
  });
  return out.trim().split("\n").pop().trim();
}

function startBroker(dataDir, extra = [], logName = "broker.log") {
  const log = fs.createWriteStream(path.join(artifacts, logName));
  const child = spawn(
    bin,
    [
      "serve",
      "--data-dir", dataDir,
      "--mqtt-addr", "127.0.0.1:0",
      "--ws-addr", "127.0.0.1:0",
      "--http-addr", "127.0.0.1:0",
      "--presence-timeout", String(PRESENCE_TIMEOUT_S),
      ...extra,
    ],
    {
      env: { ...process.env, PARLEY_LOGIN_FAILURES_PER_USER: "3", PARLEY_LOG: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  cleanup.push(() => {
    if (child.exitCode === null) child.kill("SIGTERM");
  });
  child.stderr.pipe(log);
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`the broker did not start: ${out}`)), 30000);
    child.on("exit", (code) => reject(new Error(`the broker exited with ${code}: ${out}`)));
    child.stdout.on("data", (chunk) => {
      out += chunk;
      log.write(chunk);
      const http = /listening http (\S+)/.exec(out);
      const ws = /listening ws (\S+)/.exec(out);
      const wss = /listening wss (\S+)/.exec(out);
      if (http && ws && (wss || !extra.includes("--wss-addr"))) {
        clearTimeout(timer);
        resolve({ child, http: http[1], ws: ws[1], wss: wss && wss[1] });
      }
    });
  });
}

// ---------------------------------------------------------------- the browser

/**
 * Starts headless chromium. As root, or where the sandbox cannot start (a
 * container without user namespaces), it runs with --no-sandbox.
 */
async function launch(args = [], options = {}) {
  const common = ["--disable-dev-shm-usage", ...args];
  const start = (sandbox) =>
    puppeteer.launch({
      executablePath: chromium,
      headless: process.env.PARLEY_BROWSER_HEADFUL ? false : true,
      args: sandbox ? common : ["--no-sandbox", ...common],
      ...options,
    });
  const root = process.getuid && process.getuid() === 0;
  if (root || process.env.PARLEY_CHROMIUM_NO_SANDBOX) return start(false);
  try {
    return await start(true);
  } catch (error) {
    console.log(`# chromium did not start with its sandbox (${error.message.split("\n")[0]}); retrying with --no-sandbox`);
    return start(false);
  }
}

const pages = [];
const problems = [];
const toasts = []; // every error message the pages showed: {name, text}

async function person(browser, name, viewport) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport(viewport);
  page.on("pageerror", (error) => problems.push(`${name}: page error: ${error.message}`));
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() !== "error") return;
    // the browser itself reports failed socket attempts while offline
    if (/WebSocket connection to .* failed|ERR_INTERNET_DISCONNECTED|net::ERR_/.test(text)) return;
    // and every HTTP error answer, which the page shows as a readable message
    if (/^Failed to load resource: the server responded with a status of 4\d\d/.test(text)) return;
    problems.push(`${name}: console error: ${text}`);
  });
  // record every toast (error message) the page shows, across reloads
  await page.exposeFunction("__parleyToast", (text) => toasts.push({ name, text }));
  await page.evaluateOnNewDocument(() => {
    addEventListener("DOMContentLoaded", () => {
      new MutationObserver((changes) => {
        for (const change of changes) {
          for (const node of change.addedNodes) {
            if (node.classList && node.classList.contains("toast")) window.__parleyToast(node.textContent);
          }
        }
      }).observe(document.getElementById("toasts"), { childList: true });
    });
  });
  const p = { name, page, context };
  pages.push(p);
  return p;
}

async function snapshotAll(prefix) {
  for (const { name, page } of pages) {
    try {
      await page.screenshot({ path: path.join(artifacts, `${prefix}-${name}.png`) });
    } catch {
      // a closed page
    }
  }
}

function waitFor(p, fn, ...args) {
  return p.page.waitForFunction(fn, { timeout: WAIT_MS, polling: 100 }, ...args);
}

async function text(p, selector) {
  return p.page.$eval(selector, (el) => el.textContent.trim());
}

async function fill(p, selector, value) {
  await p.page.$eval(selector, (el) => {
    el.value = "";
  });
  await p.page.type(selector, value);
}

async function waitOnline(p) {
  await waitFor(p, () => document.querySelector("#conn")?.dataset.state === "online");
}

async function register(p, base, password) {
  await p.page.goto(base);
  await p.page.waitForSelector("#login-user", { visible: true });
  await fill(p, "#login-user", p.name);
  await fill(p, "#login-password", password);
  await p.page.click('#login-form button[value="register"]');
  await p.page.waitForSelector("#chat-view:not([hidden])", { timeout: WAIT_MS });
  await waitOnline(p);
  assert.equal(await text(p, "#me-name"), p.name);
}

async function showList(p) {
  const back = await p.page.$("#back-btn");
  if (back && (await back.isVisible())) await back.click();
}

async function tab(p, which) {
  await showList(p);
  await p.page.click(`#tab-${which}`);
}

async function openConv(p, channel) {
  await tab(p, "chats");
  const selector = `#conv-list button[data-channel="${channel}"]`;
  await p.page.waitForSelector(selector, { timeout: WAIT_MS });
  await p.page.click(selector);
  await waitFor(p, (ch) => document.querySelector(`button[data-channel="${ch}"]`)?.getAttribute("aria-current") === "true" && !document.querySelector("#chat-open").hidden, channel);
}

async function send(p, message) {
  await p.page.focus("#composer");
  await p.page.keyboard.type(message);
  await p.page.keyboard.press("Enter");
}

/** The texts of the open conversation's messages, in page order. */
function messages(p) {
  return p.page.$$eval("#messages li.msg", (items) =>
    items.map((li) => ({
      text: li.querySelector(".text").textContent,
      seq: Number(li.dataset.seq || 0),
      status: li.dataset.status || "",
    })),
  );
}

async function waitMessage(p, message) {
  await waitFor(
    p,
    (t) => [...document.querySelectorAll("#messages li.msg .text")].some((el) => el.textContent === t),
    message,
  );
}

async function waitStatus(p, message, status) {
  await waitFor(
    p,
    (t, s) =>
      [...document.querySelectorAll("#messages li.msg")].some(
        (li) => li.querySelector(".text").textContent === t && li.dataset.status === s,
      ),
    message,
    status,
  );
}

async function waitToast(p, pattern) {
  await waitFor(
    p,
    (source) => [...document.querySelectorAll("#toasts .toast")].some((el) => new RegExp(source, "i").test(el.textContent)),
    pattern,
  );
}

async function unreadOf(p, channel) {
  return p.page.$eval(`#conv-list button[data-channel="${channel}"] .conv-unread`, (el) =>
    el.hidden ? 0 : Number(el.textContent),
  );
}

async function friendState(p, user) {
  return p.page.evaluate((u) => {
    const li = document.querySelector(`#friends-list li[data-user="${u}"]`);
    if (!li) return null;
    return {
      dot: li.querySelector(".dot")?.dataset.state,
      state: li.querySelector(".person-state").textContent,
    };
  }, user);
}

// ---------------------------------------------------------------- the test

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  assert.ok(fs.existsSync(bin), `no broker binary at ${bin}: cargo build -p parley-broker --bin parley`);
  assert.ok(fs.existsSync(chromium), `no chromium at ${chromium}: apt-get install chromium`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "parley-browser-"));
  cleanup.push(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const secret = serviceSecret(dataDir);
  const broker = await startBroker(dataDir);
  const base = `http://${broker.http}/`;
  console.log(`# broker at ${base} (ws ${broker.ws}), chromium ${chromium}`);

  const browser = await launch([
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
  ]);
  cleanup.unshift(() => browser.close());
  const alice = await person(browser, "alice", DESKTOP);
  const bob = await person(browser, "bob", PHONE);
  const carol = await person(browser, "carol", DESKTOP);
  const guest = await person(browser, "guest", DESKTOP);
  const dm = "dm:alice:bob";
  const systemMessage = (body) =>
    fetch(`${base}v1/system-messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${secret}` },
      body: JSON.stringify(body),
    });

  await step("GET / serves the page, its assets and a strict CSP", async () => {
    const response = await fetch(base);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type"), /^text\/html/);
    const csp = response.headers.get("content-security-policy");
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self';/);
    assert.ok(csp.includes(`connect-src 'self' ws://${broker.ws}`), csp);
    assert.ok(!csp.includes("unsafe"), csp);
    for (const asset of ["app.js", "client.js", "vendor/mqtt.esm.js", "vendor/chat.pb.js", "style.css"]) {
      const r = await fetch(base + asset);
      assert.equal(r.status, 200, asset);
      assert.ok(r.headers.get("etag"), asset);
      const again = await fetch(base + asset, { headers: { "If-None-Match": r.headers.get("etag") } });
      assert.equal(again.status, 304, asset);
    }
  });

  await step("three people register and are online", async () => {
    await Promise.all([
      register(alice, base, "alice-password"),
      register(bob, base, "bob-password"),
      register(carol, base, "carol-password"),
    ]);
  });

  await step("login and registration errors are readable: taken id, short password, bad password, rate limit", async () => {
    const g = guest;
    await g.page.goto(base);
    await g.page.waitForSelector("#login-user", { visible: true });
    const attempt = async (user, password, action) => {
      await fill(g, "#login-user", user);
      await fill(g, "#login-password", password);
      await g.page.evaluate(() => {
        document.querySelector("#login-error").textContent = "";
      });
      await g.page.click(`#login-form button[value="${action}"]`);
      await waitFor(g, () => /^Could not/.test(document.querySelector("#login-error").textContent));
      return text(g, "#login-error");
    };
    assert.match(await attempt("alice", "whatever-password", "register"), /Could not create the account: .*(taken|exists)/i);
    assert.match(await attempt("dave", "short", "register"), /Could not create the account: .*8/);
    await fill(g, "#login-password", "dave-password");
    await g.page.click('#login-form button[value="register"]');
    await g.page.waitForSelector("#chat-view:not([hidden])", { timeout: WAIT_MS });
    await g.page.click("#logout-btn");
    await g.page.waitForSelector("#login-view:not([hidden])", { timeout: WAIT_MS });
    assert.match(await attempt("dave", "wrong-password", "login"), /Could not log in: wrong user id or password/i);
    await attempt("dave", "wrong-password", "login");
    await attempt("dave", "wrong-password", "login");
    assert.match(await attempt("dave", "dave-password", "login"), /Could not log in: too many failed login attempts/i);
  });

  await step("friends: alice asks bob, bob accepts, they see each other online", async () => {
    await tab(alice, "friends");
    await fill(alice, "#friend-id", "bob");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector('#requests-out li[data-user="bob"]', { timeout: WAIT_MS });
    await waitFor(bob, () => document.querySelector("#friends-badge")?.textContent === "1");
    await tab(bob, "friends");
    await bob.page.waitForSelector('#requests-in li[data-user="alice"]', { timeout: WAIT_MS });
    await bob.page.click('#requests-in li[data-user="alice"] button.primary');
    await bob.page.waitForSelector('#friends-list li[data-user="alice"]', { timeout: WAIT_MS });
    await alice.page.waitForSelector('#friends-list li[data-user="bob"]', { timeout: WAIT_MS });
    await waitFor(alice, () => document.querySelector('#friends-list li[data-user="bob"] .dot')?.dataset.state === "online");
    await waitFor(bob, () => document.querySelector('#friends-list li[data-user="alice"] .dot')?.dataset.state === "online");
    assert.equal((await friendState(alice, "bob")).state, "online");
    // and a request that is declined
    await tab(carol, "friends");
    await fill(carol, "#friend-id", "bob");
    await carol.page.keyboard.press("Enter");
    await bob.page.waitForSelector('#requests-in li[data-user="carol"]', { timeout: WAIT_MS });
    await bob.page.click('#requests-in li[data-user="carol"] button:not(.primary)');
    await carol.page.waitForFunction(() => !document.querySelector('#requests-out li[data-user="bob"]'), { timeout: WAIT_MS });
  });

  await step("alice starts a 1:1 chat: bob gets it live with an unread count, ticks go delivered then read", async () => {
    await tab(alice, "chats");
    await alice.page.click("#new-chat-btn");
    await fill(alice, "#new-chat-user", "bob");
    await alice.page.keyboard.press("Enter");
    await waitFor(alice, () => document.querySelector("#chat-title")?.textContent === "bob");
    assert.equal(await alice.page.evaluate(() => document.activeElement.id), "composer", "the composer has the focus");
    await tab(bob, "chats");
    await send(alice, "Hello bob!");
    await waitStatus(alice, "Hello bob!", "delivered");
    await bob.page.waitForSelector(`#conv-list button[data-channel="${dm}"]`, { timeout: WAIT_MS });
    await waitFor(bob, (ch) => document.querySelector(`button[data-channel="${ch}"] .conv-unread`)?.textContent === "1", dm);
    await waitFor(bob, () => document.title === "(1) Parley");
    await openConv(bob, dm);
    await waitMessage(bob, "Hello bob!");
    await waitStatus(alice, "Hello bob!", "read");
    assert.equal(await unreadOf(bob, dm), 0);
  });

  await step("bob sees alice typing, alice sees bob typing, and they chat both ways in order", async () => {
    await alice.page.focus("#composer");
    await alice.page.keyboard.type("How are");
    await waitFor(bob, () => document.querySelector("#typing").textContent === "alice is typing…");
    await alice.page.keyboard.type(" you?");
    await alice.page.keyboard.press("Enter");
    await waitMessage(bob, "How are you?");
    await waitFor(bob, () => document.querySelector("#typing").textContent === "");
    await bob.page.focus("#composer");
    await bob.page.keyboard.type("Fine, thanks");
    await waitFor(alice, () => document.querySelector("#typing").textContent === "bob is typing…");
    await bob.page.keyboard.press("Enter");
    await waitMessage(alice, "Fine, thanks");
    await waitStatus(bob, "Fine, thanks", "read");
    await send(alice, "Great. Let's make a group.");
    await waitMessage(bob, "Great. Let's make a group.");
    const seen = await messages(bob);
    assert.deepEqual(
      seen.map((m) => m.text),
      ["Hello bob!", "How are you?", "Fine, thanks", "Great. Let's make a group."],
    );
    assert.deepEqual(seen.map((m) => m.seq), [1, 2, 3, 4]);
    // Shift+Enter is a new line, Tab goes on to the send button
    await alice.page.focus("#composer");
    await alice.page.keyboard.type("line one");
    await alice.page.keyboard.down("Shift");
    await alice.page.keyboard.press("Enter");
    await alice.page.keyboard.up("Shift");
    assert.equal(await alice.page.$eval("#composer", (el) => el.value), "line one\n");
    await alice.page.keyboard.press("Tab");
    assert.equal(await alice.page.evaluate(() => document.activeElement.id), "send-btn");
    await alice.page.$eval("#composer", (el) => {
      el.value = "";
    });
  });

  await step("alice makes a group with bob, adds carol; everyone chats in it", async () => {
    await showList(alice);
    await alice.page.click("#new-group-btn");
    await fill(alice, "#new-group-id", "team");
    await fill(alice, "#new-group-name", "The Team");
    await fill(alice, "#new-group-members", "bob");
    await alice.page.click('#new-group-dialog button[type="submit"]');
    await waitFor(alice, () => document.querySelector("#chat-title")?.textContent === "The Team");
    await waitFor(alice, () => [...document.querySelectorAll("#messages li.event")].some((li) => li.textContent === "You created the group “The Team”"));
    await showList(bob);
    await bob.page.waitForSelector('#conv-list button[data-channel="g:team"]', { timeout: WAIT_MS });
    // 60 messages before carol joins: she pages back through them
    for (let n = 1; n <= 60; n += 1) {
      const r = await systemMessage({ channel: "g:team", client_msg_id: `old-${n}`, text: `Old notice ${n}` });
      assert.equal(r.status, 200, await r.text());
    }
    await waitMessage(alice, "Old notice 60");
    await alice.page.click("#members-btn");
    await fill(alice, "#add-member-id", "carol");
    await alice.page.keyboard.press("Enter");
    await waitFor(alice, () => !!document.querySelector('#members-list li[data-user="carol"]'));
    await alice.page.keyboard.press("Escape");
    await waitFor(alice, () => [...document.querySelectorAll("#messages li.event")].some((li) => li.textContent === "You added carol"));
    await openConv(carol, "g:team");
    await waitMessage(carol, "Old notice 60");
    let seen = await messages(carol);
    assert.equal(seen.length, 50, "the newest page of history");
    assert.equal(seen[0].text, "Old notice 11");
    await carol.page.$eval("#messages", (el) => {
      el.scrollTop = 0; // scrolling to the top loads the page before
    });
    await waitMessage(carol, "Old notice 1");
    seen = await messages(carol);
    assert.deepEqual(seen.map((m) => m.seq), Array.from({ length: 60 }, (_, i) => i + 1));
    await carol.page.waitForFunction(() => !document.querySelector("#messages li.gap"), { timeout: WAIT_MS });
    await send(carol, "Hi team!");
    await waitMessage(alice, "Hi team!");
    await send(alice, "Welcome, carol.");
    await openConv(bob, "g:team");
    await waitMessage(bob, "Welcome, carol.");
    await waitStatus(alice, "Welcome, carol.", "read");
    seen = (await messages(bob)).map((m) => m.text);
    assert.deepEqual(seen.slice(-2), ["Hi team!", "Welcome, carol."]);
    assert.equal(seen.length, 62);
    assert.match(await text(bob, "#chat-sub"), /3 members/);
  });

  await step("system messages reach a user's system channel and a group", async () => {
    let r = await systemMessage({ users: ["alice"], client_msg_id: "welcome-1", text: "Welcome to Parley, alice." });
    assert.equal(r.status, 200, await r.text());
    r = await systemMessage({ channel: "g:team", client_msg_id: "notice-1", text: "Maintenance tonight at 22:00." });
    assert.equal(r.status, 200, await r.text());
    await waitMessage(alice, "Maintenance tonight at 22:00.");
    await waitFor(alice, () => [...document.querySelectorAll("#messages li.msg.system .text")].some((el) => el.textContent === "Maintenance tonight at 22:00."));
    await openConv(alice, "sys:alice");
    await waitMessage(alice, "Welcome to Parley, alice.");
    assert.equal(await text(alice, "#chat-title"), "System messages");
    assert.equal(await alice.page.$eval("#composer-form", (el) => el.hidden), true, "no composer in a system channel");
  });

  await step("bob reloads and still sees everything", async () => {
    await bob.page.reload();
    await bob.page.waitForSelector("#chat-view:not([hidden])", { timeout: WAIT_MS });
    await waitOnline(bob);
    const channels = await bob.page.$$eval("#conv-list button", (bs) => bs.map((b) => b.dataset.channel));
    assert.deepEqual(channels, ["g:team", dm], "newest activity first");
    await openConv(bob, dm);
    await waitMessage(bob, "Great. Let's make a group.");
    assert.deepEqual((await messages(bob)).map((m) => m.seq), [1, 2, 3, 4]);
    await waitStatus(bob, "Fine, thanks", "read");
    await openConv(bob, "g:team");
    await waitMessage(bob, "Maintenance tonight at 22:00.");
    assert.ok(await bob.page.evaluate(() => JSON.parse(localStorage.getItem("parley.state.v1.bob")).inboxSeq > 0));
  });

  await step("bob goes offline, misses messages, writes one offline; back online he gets them all, his is sent once", async () => {
    await openConv(bob, dm);
    await bob.page.setOfflineMode(true);
    await waitFor(bob, () => document.querySelector("#conn").dataset.state === "offline");
    assert.match(await text(bob, "#conn-text"), /Offline/);
    await send(bob, "Written while offline");
    await waitStatus(bob, "Written while offline", "pending");
    await openConv(alice, dm);
    for (const n of [1, 2, 3]) await send(alice, `While you were away ${n}`);
    await send(carol, "Group news while bob is away");
    await waitFor(alice, () => document.querySelector('button[data-channel="g:team"] .conv-unread')?.textContent === "1");
    // alice sees bob go offline once the presence timeout has passed
    await tab(alice, "friends");
    await waitFor(alice, () => document.querySelector('#friends-list li[data-user="bob"] .dot')?.dataset.state === "offline");
    assert.match((await friendState(alice, "bob")).state, /^last seen/);
    await bob.page.setOfflineMode(false);
    await waitOnline(bob);
    await waitMessage(bob, "While you were away 3");
    await waitStatus(bob, "Written while offline", "read").catch(async () => {
      await waitStatus(bob, "Written while offline", "delivered");
    });
    const seen = await messages(bob);
    const texts = seen.map((m) => m.text);
    assert.deepEqual(texts.slice(4), [
      "While you were away 1",
      "While you were away 2",
      "While you were away 3",
      "Written while offline",
    ]);
    const seqs = seen.map((m) => m.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in seq order");
    await waitFor(alice, () => document.querySelector('#friends-list li[data-user="bob"] .dot')?.dataset.state === "online");
    await openConv(alice, dm);
    await waitMessage(alice, "Written while offline");
    await sleep(1000);
    const atAlice = (await messages(alice)).filter((m) => m.text === "Written while offline");
    assert.equal(atAlice.length, 1, "sent exactly once");
    await openConv(bob, "g:team");
    await waitMessage(bob, "Group news while bob is away");
  });

  await step("a screenshot of the conversation", async () => {
    await openConv(alice, dm);
    await waitStatus(alice, "While you were away 3", "read");
    await bob.page.focus("#composer").catch(() => {});
    await openConv(bob, dm);
    await bob.page.focus("#composer");
    await bob.page.keyboard.type("See you at");
    await waitFor(alice, () => document.querySelector("#typing").textContent === "bob is typing…");
    const shot = path.join(artifacts, "conversation.png");
    await alice.page.screenshot({ path: shot });
    await bob.page.screenshot({ path: path.join(artifacts, "conversation-phone.png") });
    if (process.env.PARLEY_UPDATE_SCREENSHOT) {
      fs.copyFileSync(shot, path.join(repo, "docs/web-client.png"));
      console.log("# wrote docs/web-client.png");
    }
    await bob.page.$eval("#composer", (el) => {
      el.value = "";
    });
  });

  await step("server errors reach the person: a too-long text, a non-member", async () => {
    await openConv(alice, dm);
    await alice.page.$eval("#composer", (el) => {
      el.value = "x".repeat(100001);
    });
    await alice.page.focus("#composer");
    await alice.page.keyboard.press("Enter");
    await waitToast(alice, "Message not sent.*100");
    await alice.page.waitForSelector('#messages li[data-status="failed"] .failure-text', { visible: true, timeout: WAIT_MS });
    assert.match(await text(alice, '#messages li[data-status="failed"] .failure-text'), /^Not sent: .*100/);
    await alice.page.click('#messages li[data-status="failed"] button.discard');
    await alice.page.waitForFunction(() => !document.querySelector('#messages li[data-status="failed"]'), { timeout: WAIT_MS });
    // carol writes in the group while offline; meanwhile alice removes her
    await openConv(carol, "g:team");
    await carol.page.setOfflineMode(true);
    await waitFor(carol, () => document.querySelector("#conn").dataset.state === "offline");
    await send(carol, "Am I still in?");
    await openConv(alice, "g:team");
    await alice.page.click("#members-btn");
    await alice.page.click('#members-list li[data-user="carol"] button.danger');
    await waitFor(alice, () => !document.querySelector('#members-list li[data-user="carol"]'));
    await alice.page.keyboard.press("Escape");
    await waitFor(alice, () => [...document.querySelectorAll("#messages li.event")].some((li) => li.textContent === "You removed carol"));
    await carol.page.setOfflineMode(false);
    await waitOnline(carol);
    await waitToast(carol, "Message not sent.*member");
    await waitFor(carol, () => document.querySelector("#readonly-note").textContent === "You are no longer a member of this group.");
    assert.match(await text(carol, '#messages li[data-status="failed"] .failure-text'), /^Not sent: /);
    await carol.page.screenshot({ path: path.join(artifacts, "errors.png") });
  });

  await step("bob leaves the group; alice sees it", async () => {
    await openConv(bob, "g:team");
    await bob.page.click("#members-btn");
    await bob.page.click("#leave-btn");
    await waitFor(bob, () => document.querySelector("#readonly-note").textContent === "You are no longer a member of this group.");
    await waitFor(alice, () => [...document.querySelectorAll("#messages li.event")].some((li) => li.textContent === "Bob left"));
    assert.match(await text(alice, "#chat-sub"), /1 members: alice/);
  });

  await step("readable at phone width: one pane, no horizontal scrolling", async () => {
    for (const p of [bob, alice]) {
      const overflow = await p.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${p.name}: ${overflow}px of horizontal overflow`);
    }
    await showList(bob);
    assert.equal(await bob.page.$eval(".chat", (el) => getComputedStyle(el).display), "none");
    await bob.page.screenshot({ path: path.join(artifacts, "phone-list.png") });
    assert.equal(await unreadOf(bob, "g:team"), 0, "bob saw everything in the group before he left");
    await openConv(bob, dm);
    assert.equal(await bob.page.$eval(".sidebar", (el) => getComputedStyle(el).display), "none");
    assert.equal(await alice.page.$eval(".sidebar", (el) => getComputedStyle(el).display), "flex");
  });

  await step("labels for screen readers: every control has an accessible name", async () => {
    const unnamed = async (p) => {
      const tree = await p.page.accessibility.snapshot({ interestingOnly: true });
      const found = [];
      const walk = (node) => {
        if (["button", "textbox", "combobox", "checkbox", "link"].includes(node.role) && !node.name) {
          found.push(`${p.name}: a ${node.role} without a name`);
        }
        for (const child of node.children || []) walk(child);
      };
      walk(tree);
      return found;
    };
    await openConv(alice, "g:team");
    await alice.page.click("#members-btn");
    const missing = [...(await unnamed(alice))];
    await alice.page.keyboard.press("Escape");
    await tab(alice, "friends");
    missing.push(...(await unnamed(alice)), ...(await unnamed(bob)), ...(await unnamed(carol)));
    assert.deepEqual(missing, []);
    const log = await alice.page.$eval("#messages", (el) => [el.getAttribute("role"), el.getAttribute("aria-labelledby")]);
    assert.deepEqual(log, ["log", "chat-title"]);
  });

  await step("alice logs out: the login form is back, bob sees her offline at once", async () => {
    await alice.page.click("#logout-btn");
    await alice.page.waitForSelector("#login-view:not([hidden])", { timeout: WAIT_MS });
    assert.match(await text(alice, "#login-error"), /logged out/i);
    await tab(bob, "friends");
    await waitFor(bob, () => document.querySelector('#friends-list li[data-user="alice"] .dot')?.dataset.state === "offline");
    assert.equal(await alice.page.evaluate(() => localStorage.getItem("parley.state.v1.alice")), null);
  });

  await step("alice logs in again: her conversations come back from the inbox", async () => {
    await fill(alice, "#login-user", "alice");
    await fill(alice, "#login-password", "alice-password");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#chat-view:not([hidden])", { timeout: WAIT_MS });
    await waitOnline(alice);
    await alice.page.waitForSelector('#conv-list button[data-channel="sys:alice"]', { timeout: WAIT_MS });
    const channels = await alice.page.$$eval("#conv-list button", (bs) => bs.map((b) => b.dataset.channel));
    assert.deepEqual([...channels].sort(), [dm, "g:team", "sys:alice"]);
    await openConv(alice, dm);
    await waitMessage(alice, "Written while offline");
    const seen = await messages(alice);
    assert.deepEqual(seen.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
    await waitStatus(alice, "While you were away 3", "read");
  });

  await step("bob removes alice as a friend: both lists drop it, and her presence", async () => {
    await tab(bob, "friends");
    await bob.page.click('#friends-list li[data-user="alice"] button.danger');
    await bob.page.waitForFunction(() => !document.querySelector('#friends-list li[data-user="alice"]'), { timeout: WAIT_MS });
    await tab(alice, "friends");
    await alice.page.waitForFunction(() => !document.querySelector('#friends-list li[data-user="bob"]'), { timeout: WAIT_MS });
    await tab(alice, "chats");
    await alice.page.waitForFunction((ch) => !document.querySelector(`button[data-channel="${ch}"] .dot`), { timeout: WAIT_MS }, dm);
  });

  await step("a device signed out elsewhere returns to the login form, saying so", async () => {
    const token = await bob.page.evaluate(() => JSON.parse(sessionStorage.getItem("parley.session")).token);
    const r = await fetch(`${base}v1/logout`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    assert.equal(r.status, 200);
    await bob.page.waitForSelector("#login-view:not([hidden])", { timeout: WAIT_MS });
    assert.match(await text(bob, "#login-error"), /signed out/i);
    await fill(bob, "#login-password", "bob-password");
    await bob.page.keyboard.press("Enter");
    await bob.page.waitForSelector("#login-view[hidden]", { timeout: WAIT_MS });
    await waitOnline(bob);
    await bob.page.waitForSelector(`#conv-list button[data-channel="${dm}"]`, { timeout: WAIT_MS });
    // the same while offline: the reconnection is refused (CONNACK), and said so
    const again = await bob.page.evaluate(() => JSON.parse(sessionStorage.getItem("parley.session")).token);
    await bob.page.setOfflineMode(true);
    await waitFor(bob, () => document.querySelector("#conn").dataset.state === "offline");
    const r2 = await fetch(`${base}v1/logout`, { method: "POST", headers: { Authorization: `Bearer ${again}` } });
    assert.equal(r2.status, 200);
    await bob.page.setOfflineMode(false);
    await bob.page.waitForSelector("#login-view:not([hidden])", { timeout: WAIT_MS });
    assert.match(await text(bob, "#login-error"), /signed out: the session is no longer valid/i);
  });

  await step("no page errors, no CSP violations, no unexpected console errors or messages", async () => {
    assert.deepEqual(problems, []);
    const expected = [
      ["alice", /^Message not sent.*100/],
      ["carol", /^Message not sent.*not a member/],
    ];
    const unexpected = toasts.filter((t) => !expected.some(([name, re]) => name === t.name && re.test(t.text)));
    assert.deepEqual(unexpected, []);
    for (const [name, re] of expected) assert.ok(toasts.some((t) => t.name === name && re.test(t.text)), `${name}: ${re}`);
  });

  await step("with TLS on, the page is served over HTTPS and connects with wss", async () => {
    const tlsDir = fs.mkdtempSync(path.join(os.tmpdir(), "parley-browser-tls-"));
    cleanup.push(() => fs.rmSync(tlsDir, { recursive: true, force: true }));
    const cert = path.join(tlsDir, "cert.pem");
    const key = path.join(tlsDir, "key.pem");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1",
      "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-addext", "basicConstraints=critical,CA:FALSE",
    ], { stdio: "ignore" });
    const secure = await startBroker(
      path.join(tlsDir, "data"),
      ["--tls-cert", cert, "--tls-key", key, "--wss-addr", "127.0.0.1:0"],
      "broker-tls.log",
    );
    // a browser that trusts the self-signed certificate
    const tlsBrowser = await launch(["--ignore-certificate-errors"], { acceptInsecureCerts: true });
    cleanup.unshift(() => tlsBrowser.close());
    const erin = await person(tlsBrowser, "erin", PHONE);
    const sockets = [];
    const cdp = await erin.page.createCDPSession();
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketCreated", (event) => sockets.push(event.url));
    await register(erin, `https://${secure.http}/`, "erin-password");
    assert.ok(sockets.length > 0 && sockets.every((url) => url === `wss://${secure.wss}/mqtt`), sockets.join(", "));
    await tab(erin, "friends");
    await fill(erin, "#friend-id", "nobody-here");
    await erin.page.keyboard.press("Enter");
    await waitToast(erin, "Could not send a friend request to nobody-here");
    assert.deepEqual(problems, []);
    assert.deepEqual(toasts.filter((t) => t.name === "erin").length, 1);
  });
}

let code = 0;
try {
  await main();
} catch (error) {
  code = 1;
  if (!failures) console.log(`not ok - ${String(error.stack || error)}`);
} finally {
  for (const fn of cleanup) {
    try {
      await fn();
    } catch {
      // already gone
    }
  }
}
console.log(`# ${passed} passed, ${failures} failed`);
process.exit(code);

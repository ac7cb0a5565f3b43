// Shared helpers of the browser scenarios (tests/browser/scenarios/*.mjs).
//
// Each scenario is started by `cargo test --test browser` (tests/browser/main.rs)
// with the server's URL, keys and credentials in environment variables; it
// drives Chromium through playwright-core and exits 0 when every check held.
// Anything it wants the Rust side to check afterwards it prints on one line
// `RESULT {json}` (see `result`).

import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };
/// How long a live thing (a pushed message, an inbox item) may take on a busy machine.
export const LIVE_MS = 20_000;

const here = path.dirname(fileURLToPath(import.meta.url));

/// A required environment variable.
export function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') throw new Error(`the scenario needs ${name} in its environment`);
  return value;
}

export function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/// Chromium as installed by setup.sh.
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
}

/// Polls `fn` (sync or async) until it returns a truthy value, which it
/// returns. After `ms` it throws, naming `what` and the last value or error seen.
export async function waitFor(fn, what, ms = LIVE_MS, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await fn();
      lastError = undefined;
      if (last) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      const label = typeof what === 'function' ? what() : what;
      const seen = lastError ? `last error: ${lastError.message || lastError}` : `last value: ${show(last)}`;
      throw new Error(`timed out after ${ms} ms waiting for ${label}; ${seen}`);
    }
    await sleep(every);
  }
}

/// Asserts `cond`, with a message built lazily.
export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${typeof message === 'function' ? message() : message}`);
}

export function checkEqual(seen, expected, what) {
  const a = JSON.stringify(seen);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(`check failed: ${what}\n  expected: ${b}\n  seen:     ${a}`);
}

export function show(value) {
  const text = JSON.stringify(value);
  return text && text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
}

export const tid = (name) => `[data-testid="${name}"]`;

/// What records, in every frame of a page, each text ever put into the DOM
/// (added nodes, changed text, changed attributes, form values), and each
/// text the streaming AI message showed; also when the composer first became
/// visible after DOMContentLoaded.
function recorder() {
  const seen = [];
  const streaming = [];
  window.__tandemSeen = seen;
  window.__tandemStreaming = streaming;
  window.__tandemTimes = {};
  const grab = (node) => {
    if (node.nodeType === Node.TEXT_NODE) seen.push(node.data);
    else if (node.nodeType === Node.ELEMENT_NODE) {
      seen.push(node.textContent || '');
      if ('value' in node && typeof node.value === 'string' && node.value) seen.push(node.value);
      for (const attr of node.attributes || []) seen.push(attr.value);
    }
  };
  const snapshotStreaming = () => {
    for (const el of document.querySelectorAll('[data-testid="chat-message"][data-streaming="true"]')) {
      const text = el.querySelector('[data-testid="message-text"]')?.textContent ?? '';
      const last = streaming[streaming.length - 1];
      if (!last || last.text !== text) streaming.push({ text, at: performance.now() });
    }
  };
  const observer = new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === 'characterData') seen.push(r.target.data);
      else if (r.type === 'attributes') seen.push(r.target.getAttribute(r.attributeName) || '');
      else for (const n of r.addedNodes) grab(n);
    }
    snapshotStreaming();
  });
  observer.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  document.addEventListener('DOMContentLoaded', () => {
    window.__tandemTimes.domContentLoaded = performance.now();
    const composerVisible = () => {
      const composer = document.querySelector('[data-testid="composer-input"]');
      if (composer && composer.checkVisibility && composer.checkVisibility({ visibilityProperty: true, opacityProperty: true })) {
        window.__tandemTimes.composerVisible ??= performance.now();
        if (!composer.disabled && !composer.readOnly) {
          window.__tandemTimes.composerUsable = performance.now();
          return;
        }
      }
      requestAnimationFrame(composerVisible);
    };
    composerVisible();
  });
}

/// A browser context (desktop or phone viewport) whose pages record what
/// their DOM ever showed (see `everSeen`), and log their errors.
export async function newContext(browser, { phone = false, label = phone ? 'phone' : 'desktop', ...options } = {}) {
  const context = await browser.newContext({
    viewport: phone ? PHONE : DESKTOP,
    deviceScaleFactor: 1,
    isMobile: phone,
    hasTouch: phone,
    ...options,
  });
  await context.addInitScript(recorder);
  context.on('page', (page) => watch(page, label));
  context.__label = label;
  return context;
}

const openPages = [];

/// Logs a page's console errors, uncaught exceptions, failed requests and
/// WebSocket frames (kept in `page.__frames` for wire checks).
function watch(page, label) {
  openPages.push({ page, label });
  page.__frames = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') log(`${label} console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => log(`${label} page error: ${e.stack || e}`));
  page.on('requestfailed', (r) => log(`${label} request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) log(`${label} HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => page.__frames.push(String(f.payload)));
  });
}

/// Every text the page's main frame (or `frame`) ever showed, joined, plus
/// (with `wire`) the WebSocket frames it received.
export async function everSeen(target, { wire = true } = {}) {
  const texts = await target.evaluate(() => (window.__tandemSeen || []).join('\n'));
  const page = typeof target.page === 'function' ? target.page() : target;
  return wire ? `${texts}\n${(page.__frames || []).join('\n')}` : texts;
}

/// Fails if `secret` ever showed in the page (or frame) or came over its socket.
export async function assertNeverSeen(target, secret, who) {
  const seen = await everSeen(target);
  const at = seen.indexOf(secret);
  check(at < 0, () => `${who} was shown (or sent) ${show(secret)}: …${seen.slice(Math.max(0, at - 200), at + 200)}…`);
}

/// The chat messages as a user sees them, in DOM order.
export function chatMessages(target) {
  return target.evaluate(() =>
    [...document.querySelectorAll('[data-testid="chat-message"]')].map((el) => ({
      id: el.getAttribute('data-message-id'),
      seq: el.hasAttribute('data-seq') ? Number(el.getAttribute('data-seq')) : null,
      author: el.getAttribute('data-author'),
      pending: el.getAttribute('data-pending') === 'true',
      streaming: el.getAttribute('data-streaming') === 'true',
      name: el.querySelector('[data-testid="message-author"]')?.textContent?.trim() ?? null,
      text: el.querySelector('[data-testid="message-text"]')?.textContent?.trim() ?? null,
    })),
  );
}

/// Waits for a chat message matching `pred` (over `chatMessages`); returns it.
export async function waitForMessage(target, pred, what, ms = LIVE_MS) {
  let last = [];
  return waitFor(
    async () => {
      last = await chatMessages(target);
      return last.find(pred);
    },
    () => `${what}; messages shown: ${show(last)}`,
    ms,
  );
}

/// The text of the first visible element with this test id (null if none).
export function textOf(target, testid) {
  return target.evaluate((sel) => {
    const el = document.querySelector(sel);
    return el ? el.textContent.trim() : null;
  }, tid(testid));
}

/// Whether an element with this test id is there and visible.
export function isVisible(target, testid) {
  return target.evaluate((sel) => {
    const el = document.querySelector(sel);
    return !!el && !el.closest('[hidden]') && el.checkVisibility({ visibilityProperty: true, opacityProperty: true });
  }, tid(testid));
}

/// Sends `text` from the chat composer (typed, then Enter).
export async function send(target, text) {
  const input = target.locator(tid('composer-input'));
  await input.waitFor({ state: 'visible', timeout: LIVE_MS });
  await input.fill(text);
  await input.press('Enter');
}

/// Opens /inbox and signs in; waits for `signed-in-as` and a live connection.
export async function signIn(page, baseUrl, name, password, hash = '') {
  await page.goto(`${baseUrl}/inbox${hash}`);
  await page.locator(tid('login-name')).fill(name);
  await page.locator(tid('login-password')).fill(password);
  await page.locator(tid('login-submit')).click();
  await waitFor(async () => (await textOf(page, 'signed-in-as')) === name, `the inbox to show ${name} signed in`);
  await waitOnline(page, 'the inbox');
}

/// Waits until the page's `connection-status` says online.
export async function waitOnline(target, who) {
  await waitFor(
    () => target.evaluate((sel) => document.querySelector(sel)?.getAttribute('data-state'), tid('connection-status')).then((s) => s === 'online'),
    `${who}'s connection-status to be online`,
  );
}

/// The inbox's queue items as shown.
export function queueItems(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="queue-item"]')].map((el) => ({
      id: el.getAttribute('data-item-id'),
      kind: el.getAttribute('data-kind'),
      status: el.getAttribute('data-status'),
      thread: el.getAttribute('data-thread-id'),
      claimedBy: el.getAttribute('data-claimed-by'),
      visible: el.checkVisibility(),
      text: el.textContent.trim().replace(/\s+/g, ' '),
    })),
  );
}

/// Waits for a queue item of `kind` (and of `thread`, when given); returns it.
export async function waitForItem(page, kind, thread, ms = LIVE_MS) {
  let last = [];
  return waitFor(
    async () => {
      last = await queueItems(page);
      return last.find((i) => i.kind === kind && (!thread || i.thread === thread) && i.visible);
    },
    () => `a ${kind} item in the inbox queue; items shown: ${show(last)}`,
    ms,
  );
}

/// The messages of the inbox's open thread view.
export function threadMessages(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="thread-view"] [data-testid="thread-message"]')].map((el) => ({
      seq: el.hasAttribute('data-seq') ? Number(el.getAttribute('data-seq')) : null,
      author: el.getAttribute('data-author'),
      visibility: el.getAttribute('data-visibility'),
      status: el.getAttribute('data-status'),
      text: el.querySelector('[data-testid="message-text"]')?.textContent?.trim() ?? null,
    })),
  );
}

/// The first render of a chat page: DOMContentLoaded and the composer's
/// first visible frame (ms since navigation start), and the JS and CSS it loaded.
export async function firstRender(target) {
  await waitFor(() => target.evaluate(() => window.__tandemTimes?.composerVisible !== undefined), 'the composer to become visible', LIVE_MS);
  await target.evaluate(() => (document.readyState === 'complete' ? null : new Promise((r) => addEventListener('load', r))));
  await sleep(300);
  return target.evaluate(() => {
    const assets = performance
      .getEntriesByType('resource')
      .filter((e) => /\.(m?js|css)(\?|$)/.test(new URL(e.name).pathname) || ['script', 'css', 'link'].includes(e.initiatorType))
      .filter((e) => !e.name.includes('/v1/'))
      .map((e) => ({ url: e.name, bytes: e.decodedBodySize || e.encodedBodySize || e.transferSize, transfer: e.transferSize }));
    return {
      domContentLoaded: window.__tandemTimes.domContentLoaded,
      composerVisible: window.__tandemTimes.composerVisible,
      composerUsable: window.__tandemTimes.composerUsable,
      assets,
      assetBytes: assets.reduce((sum, a) => sum + a.bytes, 0),
    };
  });
}

/// Writes a PNG of the page's viewport to the screenshot directory; returns its path.
export async function screenshot(page, name) {
  const dir = process.env.TANDEM_SCREENSHOT_DIR || path.join(here, '..', '..', 'target', 'screenshots');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.png`);
  await page.screenshot({ path: file, animations: 'disabled', caret: 'hide' });
  return file;
}

/// A TCP proxy on 127.0.0.1 (`port`, or a free one) to 127.0.0.1:`target`.
/// `cut()` destroys every connection and refuses new ones; `restore()` lets
/// connections through again.
export async function tcpProxy(target, port = 0) {
  const live = new Set();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target, '127.0.0.1');
    live.add(client);
    live.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
  const bound = server.address().port;
  return {
    port: bound,
    url: `http://127.0.0.1:${bound}`,
    cut() {
      up = false;
      for (const socket of live) socket.destroy();
      live.clear();
    },
    restore() {
      up = true;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/// A tiny HTTP server on 127.0.0.1 (`port`, or a free one) answering every
/// GET with `html` (a string, or a function of the request path).
export async function htmlServer(html, port = 0) {
  const server = http.createServer((req, res) => {
    const body = typeof html === 'function' ? html(req.url) : html;
    res.writeHead(body === null ? 404 : 200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(body ?? 'not found');
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
  const bound = server.address().port;
  return { port: bound, url: `http://127.0.0.1:${bound}`, close: () => new Promise((r) => server.close(r)) };
}

/// HMAC-SHA256 of `userId` with the widget key's identity secret, hex.
export function userHash(secret, userId) {
  return crypto.createHmac('sha256', secret).update(userId).digest('hex');
}

/// A JSON request to the server's API, outside the browser (the test's own
/// setup and checks). Returns `{status, body}`.
export async function api(baseUrl, method, route, { token, body, headers = {} } = {}) {
  const response = await fetch(`${baseUrl}${route}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: response.status, body: parsed };
}

/// Every test id in the page's frames with its attributes and text: printed
/// when a scenario fails.
async function describe(page) {
  const lines = [];
  for (const frame of page.frames()) {
    try {
      const items = await frame.evaluate(() =>
        [...document.querySelectorAll('[data-testid]')].map((el) => {
          const attrs = [...el.attributes]
            .filter((a) => a.name.startsWith('data-') && a.name !== 'data-testid')
            .map((a) => `${a.name}=${JSON.stringify(a.value)}`)
            .join(' ');
          const hidden = el.checkVisibility() ? '' : ' (hidden)';
          const text = (el.value ?? el.textContent ?? '').trim().replace(/\s+/g, ' ').slice(0, 120);
          return `${el.getAttribute('data-testid')}${hidden} ${attrs} ${JSON.stringify(text)}`;
        }),
      );
      lines.push(`  frame ${frame.url()}:`, ...items.map((i) => `    ${i}`));
    } catch (e) {
      lines.push(`  frame ${frame.url()}: (unreadable: ${e.message})`);
    }
  }
  return lines.join('\n');
}

/// Prints what the Rust side reads after the scenario.
export function result(value) {
  console.log(`RESULT ${JSON.stringify(value)}`);
}

/// Runs a scenario: launches Chromium, runs `body(browser)`, and exits 0, or
/// 1 after printing the error, a screenshot and the test ids of every open
/// page. Gives up after TANDEM_SCENARIO_TIMEOUT_MS (80 s) on its own, so a
/// hang is reported with the page state before the Rust side kills it.
export async function scenario(name, body) {
  const started = Date.now();
  const limit = Number(process.env.TANDEM_SCENARIO_TIMEOUT_MS || 80_000);
  let browser;
  let timer;
  const fail = async (error) => {
    console.error(`\n${name}: FAILED after ${Date.now() - started} ms\n${error?.stack || error}`);
    for (const [n, { page, label }] of openPages.entries()) {
      if (page.isClosed()) continue;
      try {
        console.error(`page ${n} (${label}) ${page.url()}\n${await describe(page)}`);
        console.error(`  screenshot: ${await screenshot(page, `failure-${name}-${n}-${label}`)}`);
      } catch (e) {
        console.error(`page ${n} (${label}): ${e.message}`);
      }
    }
    await browser?.close().catch(() => {});
    process.exit(1);
  };
  timer = setTimeout(() => fail(new Error(`the scenario took more than ${limit} ms`)), limit);
  try {
    browser = await launch();
    log(`${name}: Chromium ${browser.version()}`);
    await body(browser);
    clearTimeout(timer);
    log(`${name}: passed in ${Date.now() - started} ms`);
    await browser.close();
    process.exit(0);
  } catch (error) {
    clearTimeout(timer);
    await fail(error);
  }
}

// The customer chat's first render: opens /chat?key=… LOADS times, each in
// a fresh browser context (a first visit: no session, nothing cached), and
// times from navigation start to
// - "paint": the first contentful paint;
// - "ready": the composer visible and enabled (a message can be typed and
//   sent; it waits in the page's outbox until the session exists);
// - "live": the connection shown online (a visitor session was made and
//   the WebSocket is open).
// Also adds up the JS and CSS the page loaded. Started by
// `target/release/chat-render` (crates/tandem-bench/src/chat_render.rs); it
// uses the browser suite's playwright-core and Chromium.
import { env, launch, log, result } from '../../tests/browser/lib.mjs';

const base = env('TANDEM_URL');
const key = env('WIDGET_KEY');
const loads = Number(process.env.LOADS || 20);

const browser = await launch();
try {
  const samples = [];
  for (let n = 0; n < loads; n++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await context.addInitScript(() => {
      const composer = () => document.querySelector('[data-testid="composer-input"]');
      const poll = () => {
        const c = composer();
        if (window.__ready === undefined && c && !c.disabled && c.checkVisibility()) {
          window.__ready = performance.now();
        }
        const status = document.querySelector('[data-testid="connection-status"]');
        if (window.__live === undefined && status?.dataset.state === 'online') {
          window.__live = performance.now();
        }
        if (window.__ready === undefined || window.__live === undefined) requestAnimationFrame(poll);
      };
      requestAnimationFrame(poll);
    });
    const page = await context.newPage();
    await page.goto(`${base}/chat?key=${encodeURIComponent(key)}`, { waitUntil: 'load' });
    await page.waitForFunction(() => window.__ready !== undefined && window.__live !== undefined, null, { timeout: 10_000 });
    samples.push(await page.evaluate(() => {
      const paint = performance.getEntriesByName('first-contentful-paint')[0];
      const assets = performance
        .getEntriesByType('resource')
        .filter((e) => /\.(m?js|css)$/.test(new URL(e.name).pathname));
      return {
        paint: paint ? paint.startTime : null,
        ready: window.__ready,
        live: window.__live,
        assetBytes: assets.reduce((sum, e) => sum + e.decodedBodySize, 0),
        assets: assets.length,
      };
    }));
    await context.close();
  }
  log(`${samples.length} loads`);
  result({ chromium: browser.version(), samples });
} finally {
  await browser.close();
}

// The inbox's filters with a long queue: signs in to /inbox, waits until
// every open item is listed, then times typing into `queue-filter` and
// changing `kind-filter`. Started by `target/release/inbox-filter` (crates/
// tandem-bench/src/inbox_filter.rs), which prepares the server and prints
// the figures; it uses the browser suite's playwright-core and Chromium
// (tests/browser/setup.sh installs them).
//
// Two figures per change, each repeated REPS times:
// - "frame": from dispatching the event to the next frame painted
//   (requestAnimationFrame, then a task: the frame after the handlers ran);
// - "shown": from the event to the first painted frame where `queue-count`
//   shows the new count (a debounced filter is measured whole).
// Long tasks (PerformanceObserver 'longtask', > 50 ms) during the changes
// are counted too.
import { env, launch, log, newContext, result, signIn, tid, waitFor } from '../../tests/browser/lib.mjs';

const base = env('TANDEM_URL');
const items = Number(env('ITEMS'));
const reps = Number(process.env.REPS || 20);
const terms = JSON.parse(env('TERMS'));

const browser = await launch();
try {
  const context = await newContext(browser, { label: 'agent' });
  await context.addInitScript(() => {
    window.__longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longTasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: 'longtask', buffered: true });
  });
  const page = await context.newPage();
  const started = Date.now();
  await signIn(page, base, env('AGENT_NAME'), env('AGENT_PASSWORD'));
  let shown = 0;
  await waitFor(async () => {
    shown = await page.locator(tid('queue-item')).count();
    return shown >= items;
  }, () => `${items} queue-items in the inbox (${shown} shown)`, 120_000, 250);
  const loadMs = Date.now() - started;
  log(`sign-in → ${items} items listed: ${loadMs} ms`);
  const initialLongTasks = await page.evaluate(() => window.__longTasks.slice());

  // One change: set the control's value, fire its event, time the frames.
  const change = (testid, value, event) =>
    page.evaluate(async ({ testid, value, event }) => {
      const control = document.querySelector(`[data-testid="${testid}"]`);
      const count = document.querySelector('[data-testid="queue-count"]');
      const before = count?.textContent.trim();
      const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      window.__longTasks = [];
      const t0 = performance.now();
      control.value = value;
      for (const name of event.split(' ')) control.dispatchEvent(new Event(name, { bubbles: true }));
      await nextFrame();
      const frame = performance.now() - t0;
      let shownAt = null;
      while (performance.now() - t0 < 5000) {
        if (count && count.textContent.trim() !== before) {
          await nextFrame();
          shownAt = performance.now() - t0;
          break;
        }
        await nextFrame();
      }
      await new Promise((r) => setTimeout(r, 60));
      return { frame, shown: shownAt, before, after: count?.textContent.trim(), longTasks: window.__longTasks.map((t) => t.duration) };
    }, { testid, value, event });

  const runs = { text: [], kind: [] };
  // Consecutive values always change the count: a term, then none.
  for (let n = 0; n < reps; n++) {
    runs.text.push(await change('queue-filter', terms[n % terms.length], 'input'));
    runs.text.push(await change('queue-filter', '', 'input'));
  }
  const kinds = ['question', 'approval', 'escalation', 'handoff'];
  for (let n = 0; n < reps; n++) {
    runs.kind.push(await change('kind-filter', kinds[n % kinds.length], 'input change'));
    runs.kind.push(await change('kind-filter', 'all', 'input change'));
  }
  const stats = (values) => {
    const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b);
    if (v.length === 0) return null;
    const at = (q) => v[Math.min(v.length - 1, Math.ceil(q * v.length) - 1)];
    return { n: v.length, p50: at(0.5), p95: at(0.95), max: v[v.length - 1] };
  };
  const summary = {};
  for (const [name, list] of Object.entries(runs)) {
    const longTasks = list.flatMap((r) => r.longTasks);
    summary[name] = {
      frame: stats(list.map((r) => r.frame)),
      shown: stats(list.map((r) => r.shown)),
      unchanged: list.filter((r) => r.shown === null).length,
      longTasks: { count: longTasks.length, max: longTasks.length ? Math.max(...longTasks) : 0, total: longTasks.reduce((a, b) => a + b, 0) },
      samples: list.slice(0, 4).map((r) => `${r.before}→${r.after}`),
    };
  }
  result({ items: shown, loadMs, initialLongTasks: initialLongTasks.length, chromium: browser.version(), ...summary });
} finally {
  await browser.close();
}

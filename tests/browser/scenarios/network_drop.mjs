// The network drops: the customer's page reaches the server through a TCP
// proxy that the test cuts while the customer sends three messages and an
// agent (REST, straight to the server) posts two replies. The page says it
// is reconnecting; once the proxy is back, every message is there exactly
// once, in seq order, none pending.
import { api, check, checkEqual, chatMessages, env, log, newContext, result, scenario, send, show, sleep, tcpProxy, tid, waitFor, waitForMessage, waitOnline } from '../lib.mjs';

const base = env('TANDEM_URL');
const admin = env('TANDEM_ADMIN_TOKEN');
const key = env('WIDGET_KEY');
const agentToken = env('AGENT_TOKEN');
const first = env('FIRST');
const customerTexts = JSON.parse(env('CUSTOMER_TEXTS'));
const agentTexts = JSON.parse(env('AGENT_TEXTS'));

const state = (page) => page.evaluate((sel) => {
  const el = document.querySelector(sel);
  return el ? { state: el.getAttribute('data-state'), text: el.textContent.trim(), visible: el.checkVisibility() } : null;
}, tid('connection-status'));

await scenario('network_drop', async (browser) => {
  const proxy = await tcpProxy(Number(new URL(base).port), Number(env('PROXY_PORT')));
  const chat = await (await newContext(browser, { label: 'customer' })).newPage();
  await chat.goto(`${proxy.url}/chat?key=${encodeURIComponent(key)}`);
  await waitOnline(chat, 'the chat');
  await send(chat, first);
  await waitForMessage(chat, (m) => m.author === 'customer' && m.text === first && !m.pending && m.seq !== null, 'the first message stored');
  const threads = await api(base, 'GET', '/v1/threads', { token: admin });
  check(threads.status === 200 && threads.body.threads.length === 1, () => `one thread expected: ${show(threads)}`);
  const thread = threads.body.threads[0].id;

  log('cutting the network');
  proxy.cut();
  const down = await waitFor(async () => {
    const s = await state(chat);
    return s && s.state === 'reconnecting' ? s : null;
  }, async () => `connection-status to say reconnecting (it is ${show(await state(chat))})`);
  check(down.visible && down.text.length > 0, () => `connection-status says nothing visible while reconnecting: ${show(down)}`);
  log(`while cut: ${show(down)}`);

  for (const text of customerTexts) {
    await send(chat, text);
    await waitForMessage(chat, (m) => m.author === 'customer' && m.text === text, `${show(text)} shown (pending) while offline`, 5000);
  }
  for (const text of agentTexts) {
    const posted = await api(base, 'POST', `/v1/threads/${thread}/messages`, { token: agentToken, body: { content: text } });
    check(posted.status === 201, () => `the agent's reply was refused: ${show(posted)}`);
  }
  const offline = await chatMessages(chat);
  log(`while cut the customer sees: ${show(offline)}`);
  for (const text of customerTexts) {
    const m = offline.find((x) => x.text === text);
    check(m.pending && m.seq === null, () => `${show(text)} is not shown as pending while the network is down: ${show(m)}`);
  }
  check(!offline.some((m) => agentTexts.includes(m.text)), 'an agent reply arrived through a cut network');
  await sleep(2000);

  log('restoring the network');
  proxy.restore();
  let shown = [];
  await waitFor(async () => {
    shown = await chatMessages(chat);
    const stored = (t) => shown.some((m) => m.text === t && !m.pending && m.seq !== null);
    return [...customerTexts, ...agentTexts].every(stored) && (await state(chat))?.state === 'online';
  }, () => `every message stored and shown after the network came back; shown: ${show(shown)}`, 30_000);
  await sleep(1500);
  shown = await chatMessages(chat);
  log(`after: ${show(shown)}`);
  for (const text of [first, ...customerTexts, ...agentTexts]) {
    checkEqual(shown.filter((m) => m.text === text).length, 1, `how often ${show(text)} is shown`);
  }
  checkEqual(shown.filter((m) => m.pending).length, 0, 'pending messages after the reconnect');
  const seqs = shown.map((m) => m.seq);
  check(seqs.every((s, i) => Number.isInteger(s) && (i === 0 || s > seqs[i - 1])), () => `messages are not in strictly increasing seq order: ${show(seqs)}`);
  checkEqual(new Set(shown.map((m) => m.id)).size, shown.length, 'distinct message ids');
  await proxy.close();
  result({ thread, seqs, texts: shown.map((m) => m.text) });
});

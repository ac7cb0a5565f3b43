// Screenshots of both pages at desktop (1280x800) and phone (390x844)
// widths: /chat with a conversation (an AI reply and a human reply) and
// /inbox with a queue of several kinds and a thread open.
import { api, check, env, log, newContext, PHONE, queueItems, result, scenario, screenshot, send, show, signIn, sleep, tid, waitFor, waitForMessage } from '../lib.mjs';

const base = env('TANDEM_URL');
const admin = env('TANDEM_ADMIN_TOKEN');
const key = env('WIDGET_KEY');
const agent = env('AGENT_NAME');
const password = env('AGENT_PASSWORD');
const agentToken = env('AGENT_TOKEN');
const question = env('QUESTION');
const aiReply = env('AI_REPLY');
const humanReply = env('HUMAN_REPLY');
const kinds = JSON.parse(env('KINDS'));

await scenario('screenshots', async (browser) => {
  const chat = await (await newContext(browser, { label: 'customer' })).newPage();
  await chat.goto(`${base}/chat?key=${encodeURIComponent(key)}`);
  await send(chat, question);
  await waitForMessage(chat, (m) => m.author === 'ai' && !m.streaming && m.text === aiReply, 'the AI reply');
  const threads = await api(base, 'GET', '/v1/threads?limit=100', { token: admin });
  const thread = threads.body.threads.map((t) => t.id).sort().pop();
  const posted = await api(base, 'POST', `/v1/threads/${thread}/messages`, { token: agentToken, body: { content: humanReply } });
  check(posted.status === 201, () => `the agent's reply: ${show(posted)}`);
  await waitForMessage(chat, (m) => m.author === 'human' && m.text === humanReply, 'the human reply');
  await sleep(500);
  const files = [await screenshot(chat, 'chat-desktop')];
  await chat.setViewportSize(PHONE);
  await sleep(500);
  files.push(await screenshot(chat, 'chat-phone'));

  const desk = await (await newContext(browser, { label: 'agent' })).newPage();
  await signIn(desk, base, agent, password);
  let items = [];
  await waitFor(async () => {
    items = await queueItems(desk);
    return kinds.every((k) => items.some((i) => i.kind === k));
  }, () => `items of every kind ${show(kinds)} in the queue: ${show(items)}`);
  const open = items.find((i) => i.kind === 'escalation') || items[0];
  await desk.locator(`${tid('queue-item')}[data-item-id="${open.id}"]`).click();
  await desk.locator(tid('thread-view')).waitFor({ state: 'visible' });
  await sleep(800);
  files.push(await screenshot(desk, 'inbox-desktop'));
  await desk.setViewportSize(PHONE);
  await sleep(800);
  files.push(await screenshot(desk, 'inbox-phone'));
  log(`screenshots: ${files.join(', ')}`);
  result({ files, items: items.length });
});

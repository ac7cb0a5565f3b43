// The AI asks a human (ask_human): the question appears live in the agent's
// inbox, the agent answers it there, and the customer gets the AI's reply
// built on the answer. The customer never sees the question or the answer.
import { threadMessages, assertNeverSeen, check, checkEqual, chatMessages, env, log, newContext, queueItems, result, scenario, send, show, signIn, tid, waitFor, waitForItem, waitForMessage, waitOnline } from '../lib.mjs';

const base = env('TANDEM_URL');
const key = env('WIDGET_KEY');
const agent = env('AGENT_NAME');
const password = env('AGENT_PASSWORD');
const question = env('QUESTION');
const humanQuestion = env('HUMAN_QUESTION');
const answer = env('ANSWER');
const final = env('FINAL');

await scenario('ask_human', async (browser) => {
  const desk = await (await newContext(browser, { label: 'agent' })).newPage();
  await signIn(desk, base, agent, password);
  const before = await queueItems(desk);
  checkEqual(before, [], 'the queue before the customer writes');

  const chat = await (await newContext(browser, { label: 'customer' })).newPage();
  await chat.goto(`${base}/chat?key=${encodeURIComponent(key)}`);
  await waitOnline(chat, 'the chat');
  await send(chat, question);
  await waitForMessage(chat, (m) => m.author === 'customer' && m.text === question && !m.pending, 'the question stored');

  // Live: the inbox was not reloaded.
  const item = await waitForItem(desk, 'question');
  log(`question item: ${show(item)}`);
  check(item.text.includes(humanQuestion), () => `the question item does not show the AI's question ${show(humanQuestion)}: ${show(item.text)}`);
  await desk.locator(`${tid('queue-item')}[data-item-id="${item.id}"]`).click();
  await desk.locator(tid('thread-view')).waitFor({ state: 'visible' });
  await waitFor(async () => (await threadMessages(desk)).some((m) => m.author === 'customer' && m.text === question), async () => `the thread view to show the customer's message: ${show(await threadMessages(desk))}`);
  await desk.locator(tid('answer-input')).fill(answer);
  await desk.locator(tid('answer-submit')).click();

  const reply = await waitForMessage(chat, (m) => m.author === 'ai' && !m.streaming && m.text === final, `the AI's reply ${show(final)}`);
  const shown = await chatMessages(chat);
  checkEqual(shown.map((m) => [m.author, m.text]), [['customer', question], ['ai', final]], 'the customer\'s conversation');
  check(reply.seq > 0, 'the reply has a seq');
  await assertNeverSeen(chat, humanQuestion, 'the customer');
  await assertNeverSeen(chat, answer, 'the customer');

  // The answered question leaves the open queue.
  await waitFor(async () => {
    const now = (await queueItems(desk)).find((i) => i.id === item.id);
    return !now || !now.visible || now.status === 'resolved';
  }, () => `the answered question ${item.id} to leave the queue (or show resolved)`);
  result({ item: item.id, thread: item.thread });
});

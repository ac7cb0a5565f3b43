// Takeover: the customer chats with the AI; an agent opens the thread in the
// inbox, takes it over, types (the customer sees who types) and replies (the
// customer sees the agent's name), writes an internal note (never shown to
// the customer), hands back, and the AI answers the next message.
import { api, assertNeverSeen, check, checkEqual, chatMessages, env, isVisible, log, newContext, result, scenario, send, show, signIn, sleep, textOf, threadMessages, tid, waitFor, waitForMessage, waitOnline } from '../lib.mjs';

const base = env('TANDEM_URL');
const admin = env('TANDEM_ADMIN_TOKEN');
const key = env('WIDGET_KEY');
const agent = env('AGENT_NAME');
const password = env('AGENT_PASSWORD');
const aiName = env('AI_NAME');
const [q1, ai1, human, note, q2, ai2] = ['Q1', 'AI1', 'HUMAN_REPLY', 'NOTE', 'Q2', 'AI2'].map(env);

await scenario('takeover', async (browser) => {
  const chat = await (await newContext(browser, { label: 'customer' })).newPage();
  await chat.goto(`${base}/chat?key=${encodeURIComponent(key)}`);
  await waitOnline(chat, 'the chat');
  await send(chat, q1);
  await waitForMessage(chat, (m) => m.author === 'ai' && !m.streaming && m.text === ai1, `the AI's first reply ${show(ai1)}`);

  const threads = await api(base, 'GET', '/v1/threads', { token: admin });
  check(threads.status === 200 && threads.body.threads.length === 1, () => `one thread expected: ${show(threads)}`);
  const thread = threads.body.threads[0].id;

  const desk = await (await newContext(browser, { label: 'agent' })).newPage();
  await signIn(desk, base, agent, password);
  await desk.goto('about:blank');
  await desk.goto(`${base}/inbox#thread=${thread}`);
  await desk.locator(tid('thread-view')).waitFor({ state: 'visible' });
  await waitFor(async () => {
    const texts = (await threadMessages(desk)).map((m) => m.text);
    return texts.includes(q1) && texts.includes(ai1);
  }, async () => `the thread view to show the conversation`);

  await desk.locator(tid('take-over')).click();
  await waitFor(async () => (await textOf(chat, 'responder'))?.includes(agent), async () => `the customer's responder to name ${agent} (it says ${show(await textOf(chat, 'responder'))})`);

  // The agent types slowly; meanwhile the customer is told who types.
  const input = desk.locator(tid('reply-input'));
  await input.click();
  const typing = input.pressSequentially(human, { delay: 90 });
  const indicator = await waitFor(async () => (await isVisible(chat, 'typing-indicator')) && (await textOf(chat, 'typing-indicator')), `the customer's typing-indicator while ${agent} types`, 15_000);
  check(indicator.includes(agent), () => `the typing indicator says ${show(indicator)}, not naming ${agent}`);
  log(`typing indicator: ${show(indicator)}`);
  await typing;
  await desk.locator(tid('reply-send')).click();
  const reply = await waitForMessage(chat, (m) => m.author === 'human' && m.text === human, `the agent's reply ${show(human)}`);
  check(reply.name?.includes(agent), () => `the agent's reply shows the author ${show(reply.name)}, not ${agent}`);
  check(!reply.name?.includes(aiName), () => `the agent's reply is labelled as the AI: ${show(reply.name)}`);

  // An internal note: in the inbox, never at the customer's, and writing
  // it does not tell the customer someone is typing.
  await waitFor(async () => !(await isVisible(chat, 'typing-indicator')), `the customer's typing-indicator to go away after the reply`, 15_000);
  const noteInput = desk.locator(tid('note-input'));
  await noteInput.click();
  let noteTyping = true;
  const typed = noteInput.pressSequentially(note, { delay: 150 }).finally(() => { noteTyping = false; });
  // While typing, and 1.5 s after (typing frames travel in well under that).
  let quietUntil = Infinity;
  while (Date.now() < quietUntil) {
    if (!noteTyping && quietUntil === Infinity) quietUntil = Date.now() + 1500;
    const seen = (await isVisible(chat, 'typing-indicator')) && (await textOf(chat, 'typing-indicator'));
    check(!seen, () => `the customer saw a typing indicator while ${agent} wrote an internal note: ${show(seen)}`);
    await sleep(100);
  }
  await typed;
  await desk.locator(tid('note-send')).click();
  await waitFor(async () => (await threadMessages(desk)).some((m) => m.text === note && m.visibility === 'internal'), async () => `the note as an internal thread-message in the inbox: ${show(await threadMessages(desk))}`);

  await desk.locator(tid('hand-back')).click();
  await waitFor(async () => {
    const r = await textOf(chat, 'responder');
    return r?.includes(aiName) && !r.includes(agent);
  }, async () => `the customer's responder to name the AI again (it says ${show(await textOf(chat, 'responder'))})`);

  await send(chat, q2);
  await waitForMessage(chat, (m) => m.author === 'ai' && !m.streaming && m.text === ai2, `the AI's reply after the hand-back ${show(ai2)}`);
  await sleep(1000);
  const shown = await chatMessages(chat);
  log(`customer sees: ${show(shown.map((m) => [m.author, m.name, m.text]))}`);
  checkEqual(
    shown.filter((m) => m.author !== 'system').map((m) => [m.author, m.text]),
    [['customer', q1], ['ai', ai1], ['human', human], ['customer', q2], ['ai', ai2]],
    'the customer\'s conversation (system lines aside)',
  );
  await assertNeverSeen(chat, note, 'the customer');
  result({ thread });
});

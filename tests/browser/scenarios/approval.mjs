// An approval gate: the AI's draft waits in the inbox; the agent edits it in
// the draft editor and approves; the customer sees only the edited text, and
// the original draft never reached the customer's page (DOM record, socket).
import { waitFor, assertNeverSeen, check, checkEqual, chatMessages, env, log, newContext, result, scenario, send, show, signIn, sleep, tid, waitForItem, waitForMessage, waitOnline, threadMessages } from '../lib.mjs';

const base = env('TANDEM_URL');
const key = env('WIDGET_KEY');
const agent = env('AGENT_NAME');
const password = env('AGENT_PASSWORD');
const question = env('QUESTION');
const draft = env('DRAFT');
const edited = env('EDITED');

await scenario('approval', async (browser) => {
  const desk = await (await newContext(browser, { label: 'agent' })).newPage();
  await signIn(desk, base, agent, password);

  const chat = await (await newContext(browser, { label: 'customer' })).newPage();
  await chat.goto(`${base}/chat?key=${encodeURIComponent(key)}`);
  await waitOnline(chat, 'the chat');
  await send(chat, question);
  await waitForMessage(chat, (m) => m.author === 'customer' && m.text === question && !m.pending, 'the question stored');

  const item = await waitForItem(desk, 'approval');
  log(`approval item: ${show(item)}`);
  await desk.locator(`${tid('queue-item')}[data-item-id="${item.id}"]`).click();
  const editor = desk.locator(tid('draft-editor'));
  await editor.waitFor({ state: 'visible' });
  checkEqual(await editor.inputValue(), draft, 'the draft editor prefilled with the draft');
  // Staff see the draft in the conversation, held for approval.
  await waitFor(async () => (await threadMessages(desk)).some((m) => m.text === draft && m.status === 'pending_approval' && m.visibility === 'internal'), async () => `the draft in the thread view as internal, pending_approval: ${show(await threadMessages(desk))}`);
  await editor.fill(edited);
  await desk.locator(tid('approve')).click();

  await waitForMessage(chat, (m) => m.author === 'ai' && !m.streaming && m.text === edited, `the approved (edited) reply ${show(edited)}`);
  // Whatever else might come late would come now.
  await sleep(1000);
  const shown = await chatMessages(chat);
  checkEqual(shown.map((m) => [m.author, m.text]), [['customer', question], ['ai', edited]], 'the customer\'s conversation');
  await assertNeverSeen(chat, draft, 'the customer');

  // The agent's view shows the published edit.
  await waitFor(async () => (await threadMessages(desk)).some((m) => m.text === edited && m.visibility === 'public'), async () => `the approved reply as public in the inbox thread view: ${show(await threadMessages(desk))}`);
  result({ item: item.id, thread: item.thread });
});

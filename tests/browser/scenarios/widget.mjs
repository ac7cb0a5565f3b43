// The widget on another site, and identity: a host page on an allowed origin
// shows the bubble, which opens the chat in an iframe where a verified user
// sees their earlier conversation and chats on; a forged user hash gets an
// error and none of that user's history; a host page on an origin the key
// does not allow cannot show the chat (frame-ancestors). Then the standalone
// page: usable by keyboard, and a reload keeps the conversation.
import { api, assertNeverSeen, check, checkEqual, chatMessages, env, htmlServer, isVisible, log, newContext, result, scenario, show, sleep, tid, userHash, waitFor, waitForMessage, waitOnline } from '../lib.mjs';

const base = env('TANDEM_URL');
const key = env('WIDGET_KEY');
const secret = env('IDENTITY_SECRET');
const userId = env('USER_ID');
const history = env('HISTORY');
const widgetText = env('WIDGET_TEXT');
const keyboardText = env('KEYBOARD_TEXT');
const afterReload = env('AFTER_RELOAD');
const replyTo = (text) => `${env('REPLY_PREFIX')}${text}`;

const goodHash = userHash(secret, userId);
const forgedHash = userHash(`${secret}-forged`, userId);
const hostPage = (hash) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title></head>
<body><h1>A shop on another site</h1><p>Products…</p>
<script src="${base}/widget.js" data-widget-key="${key}"${hash ? ` data-user-id="${userId}" data-user-hash="${hash}"` : ''} async></script>
</body></html>`;

/// Opens the widget on `page` (its bubble, then its iframe); returns the frame.
async function openWidget(page) {
  const button = page.locator(tid('tandem-widget-button'));
  await button.waitFor({ state: 'visible', timeout: 20_000 });
  await button.click();
  const frameElement = page.locator(tid('tandem-widget-frame'));
  await frameElement.waitFor({ state: 'visible', timeout: 20_000 });
  const frame = await waitFor(async () => {
    const f = await (await frameElement.elementHandle())?.contentFrame();
    return f && /^https?:/.test(f.url()) ? f : null;
  }, 'the widget iframe to load a page');
  return frame;
}

const composerIn = (frame) => frame.evaluate(() => !!document.querySelector('[data-testid="composer-input"]')).catch(() => false);

await scenario('widget', async (browser) => {
  const allowed = await htmlServer((url) => (url.startsWith('/good') ? hostPage(goodHash) : url.startsWith('/forged') ? hostPage(forgedHash) : null), Number(env('HOST_PORT')));
  const other = await htmlServer(() => hostPage(null), Number(env('OTHER_PORT')));

  // The verified user's earlier conversation, made through the API.
  const session = await api(base, 'POST', '/v1/customers/sessions', {
    headers: { origin: allowed.url },
    body: { widget_key: key, user_id: userId, user_hash: goodHash },
  });
  check(session.status === 201 && session.body.verified === true, () => `the verified session was refused: ${show(session)}`);
  const token = session.body.token;
  const created = await api(base, 'POST', '/v1/threads', { token, body: {} });
  check(created.status === 201, () => `creating the user's thread: ${show(created)}`);
  const historyThread = created.body.id;
  const posted = await api(base, 'POST', `/v1/threads/${historyThread}/messages`, { token, body: { content: history } });
  check(posted.status === 201, () => `posting the user's earlier message: ${show(posted)}`);
  await waitFor(async () => {
    const page = await api(base, 'GET', `/v1/threads/${historyThread}/messages`, { token });
    return page.body.messages?.some((m) => m.content === replyTo(history));
  }, 'the AI reply to the earlier message');

  // 1. A forged hash: an error, and none of the user's history.
  const forgedPage = await (await newContext(browser, { label: 'forged' })).newPage();
  await forgedPage.goto(`${allowed.url}/forged`);
  const forged = await openWidget(forgedPage);
  await waitFor(() => isVisible(forged, 'chat-error'), 'chat-error inside the widget with a forged user hash');
  log(`forged hash: chat-error says ${show(await forged.locator(tid('chat-error')).textContent())}`);
  await sleep(1500);
  await assertNeverSeen(forged, history, 'a visitor with a forged hash');
  await assertNeverSeen(forged, replyTo(history), 'a visitor with a forged hash');
  const forgedShown = await chatMessages(forged);
  checkEqual(forgedShown, [], 'messages shown to the visitor with a forged hash');

  // 2. The right hash: the bubble opens the chat with the user's history, and it works.
  const hostPageOk = await (await newContext(browser, { label: 'widget' })).newPage();
  await hostPageOk.goto(`${allowed.url}/good`);
  const frame = await openWidget(hostPageOk);
  check(new URL(frame.url()).origin === base, () => `the widget frame is not the server's /chat: ${frame.url()}`);
  await waitForMessage(frame, (m) => m.author === 'customer' && m.text === history, `the user's earlier message ${show(history)} in the widget`);
  await waitForMessage(frame, (m) => m.author === 'ai' && m.text === replyTo(history), 'the earlier AI reply in the widget');
  await waitOnline(frame, 'the widget chat');
  const input = hostPageOk.frameLocator(tid('tandem-widget-frame')).locator(tid('composer-input'));
  await input.fill(widgetText);
  await input.press('Enter');
  await waitForMessage(frame, (m) => m.author === 'ai' && !m.streaming && m.text === replyTo(widgetText), 'the AI reply inside the widget');
  checkEqual((await chatMessages(frame)).map((m) => [m.author, m.text]), [
    ['customer', history], ['ai', replyTo(history)], ['customer', widgetText], ['ai', replyTo(widgetText)],
  ], 'the verified user\'s conversation in the widget');

  // 3. A host page on an origin the key does not allow: no chat.
  const otherPage = await (await newContext(browser, { label: 'other-origin' })).newPage();
  const blocked = [];
  otherPage.on('console', (m) => { if (/frame-ancestors|Refused to frame/i.test(m.text())) blocked.push(m.text()); });
  await otherPage.goto(`${other.url}/`);
  const button = otherPage.locator(tid('tandem-widget-button'));
  let shownButton = false;
  try {
    await button.waitFor({ state: 'visible', timeout: 5000 });
    shownButton = true;
  } catch { /* no bubble at all is fine too */ }
  if (shownButton) {
    await button.click();
    await sleep(4000);
    for (const f of otherPage.frames()) {
      if (f === otherPage.mainFrame()) continue;
      check(!(await composerIn(f)), () => `a host page on ${other.url} (not allowed) shows the chat in a frame ${f.url()}`);
    }
    check(blocked.length > 0, 'no frame-ancestors refusal was logged for the chat frame on a site the key does not allow');
  }
  log(`not-allowed origin: bubble ${shownButton ? 'shown' : 'not shown'}; blocked frames: ${show(blocked)}`);

  // 4. Standalone, by keyboard; a reload keeps the conversation.
  const page = await (await newContext(browser, { label: 'keyboard' })).newPage();
  await page.goto(`${base}/chat?key=${encodeURIComponent(key)}`);
  await waitOnline(page, 'the chat');
  let focused = null;
  for (let n = 0; n < 20 && focused !== 'composer-input'; n++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.getAttribute('data-testid') ?? document.activeElement?.tagName);
  }
  checkEqual(focused, 'composer-input', 'what Tab reaches (within 20 presses)');
  // Shift+Enter is a new line, not a send.
  await page.keyboard.type('Line one');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('Line two');
  await sleep(300);
  checkEqual(await page.evaluate(() => document.querySelector('[data-testid="composer-input"]').value), 'Line one\nLine two', 'the composer after Shift+Enter');
  checkEqual(await chatMessages(page), [], 'messages after Shift+Enter (nothing sent)');
  await page.keyboard.press('Control+A');
  await page.keyboard.type(keyboardText);
  await page.keyboard.press('Enter');
  await waitForMessage(page, (m) => m.author === 'customer' && m.text === keyboardText && !m.pending, 'the message sent with Enter');
  await waitForMessage(page, (m) => m.author === 'ai' && !m.streaming && m.text === replyTo(keyboardText), 'the AI reply to the keyboard message');
  const input2 = await page.evaluate(() => document.querySelector('[data-testid="composer-input"]').value);
  checkEqual(input2, '', 'the composer after sending');
  const before = (await chatMessages(page)).map((m) => [m.id, m.seq, m.author, m.text]);
  await page.reload();
  await waitOnline(page, 'the chat after a reload');
  await waitFor(async () => (await chatMessages(page)).length >= before.length, 'the conversation after the reload');
  checkEqual((await chatMessages(page)).map((m) => [m.id, m.seq, m.author, m.text]), before, 'the conversation after the reload');
  await page.locator(tid('composer-input')).fill(afterReload);
  await page.locator(tid('composer-input')).press('Enter');
  await waitForMessage(page, (m) => m.author === 'ai' && !m.streaming && m.text === replyTo(afterReload), 'the AI reply after the reload');

  await allowed.close();
  await other.close();
  result({ historyThread, historyCustomer: session.body.customer_id });
});

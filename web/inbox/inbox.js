// The support-agent inbox: sign-in, presence, the live connection, the
// queue, the thread and its actions, keyboard and toasts.

import { Live } from '/web/common/live.js';
import { api, setUnauthorizedHandler, describeError } from './api.js';
import { Queue } from './queue.js';
import { ThreadView } from './thread.js';
import { $, setText, show, initials } from './util.js';

const PRESENCE_EVERY_MS = 45_000;
const SNAPSHOT_LIMIT = 500; // the hub replays at most this many inbox items
const PAGE = 200;

let me = null;
let live = null;
let queue = null;
let thread = null;
let presenceTimer = 0;
let tickTimer = 0;
let signingOut = false;
let replay = null; // the inbox replay being received after a (re)subscribe
let firstLoad = true;
let liveSeen = null; // items pushed live while a reconciling reload runs

// ---- toasts ----------------------------------------------------------------

function toast(message, kind = 'info') {
  const box = $('toasts');
  const el = document.createElement('div');
  el.className = `toast toast-${kind}`;
  if (kind === 'error') el.setAttribute('role', 'alert');
  const text = document.createElement('span');
  text.textContent = message;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => el.remove());
  el.append(text, close);
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 4500);
}

// ---- sign-in -----------------------------------------------------------------

function showLogin(message) {
  document.body.classList.remove('is-booting');
  show($('app'), false);
  show($('login'), true);
  const err = $('login-error');
  setText(err, message || '');
  show(err, !!message);
  $('login-name').focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const name = $('login-name').value.trim();
  const password = $('login-password').value;
  const err = $('login-error');
  if (!name || !password) {
    setText(err, 'Enter your name and password.');
    show(err, true);
    return;
  }
  const button = $('login-submit');
  button.disabled = true;
  setText(button, 'Signing in…');
  try {
    const session = await api('POST', '/v1/agents/sessions', { name, password }, { quiet401: true });
    $('login-password').value = '';
    show(err, false);
    startApp(session.name);
  } catch (e) {
    const msg = e.code === 'invalid_credentials' || e.status === 401
      ? 'Wrong name or password.'
      : e.status === 429 ? 'Too many attempts: wait a moment and try again.' : describeError(e, 'Sign-in');
    setText(err, msg);
    show(err, true);
    $('login-password').select();
  } finally {
    button.disabled = false;
    setText(button, 'Sign in');
  }
}

function setPresence(presence) {
  return api('PUT', '/v1/agents/me/presence', { presence }, { quiet401: presence === 'offline' });
}

async function signOut() {
  signingOut = true;
  clearInterval(presenceTimer);
  try {
    await setPresence('offline');
  } catch {
    /* signing out anyway */
  }
  try {
    await api('DELETE', '/v1/agents/sessions', undefined, { quiet401: true });
  } catch {
    /* the cookie may already be gone */
  }
  if (live) live.close();
  history.replaceState(null, '', location.pathname);
  location.reload();
}

function sessionLost() {
  if (signingOut || !me) return;
  signingOut = true;
  clearInterval(presenceTimer);
  if (live) live.close();
  history.replaceState(null, '', location.pathname);
  location.reload();
}

// ---- the app -----------------------------------------------------------------

function startApp(name) {
  me = name;
  document.body.classList.remove('is-booting');
  show($('login'), false);
  show($('app'), true);
  setText($('signed-in-as'), name);
  setText($('me-avatar'), initials(name));

  queue = new Queue({
    list: $('queue-list'),
    count: $('queue-count'),
    empty: $('queue-empty'),
    me,
    onOpen: (itemId, threadId) => openItem(itemId, threadId),
    onCounts: (c) => {
      document.title = c.total ? `(${c.total}) Tandem inbox` : 'Tandem inbox';
      setText($('count-mine'), String(c.mine));
      setText($('count-unclaimed'), String(c.unclaimed));
      const labels = { all: 'All kinds', question: 'Questions', approval: 'Approvals', escalation: 'Escalations', handoff: 'Handoffs' };
      for (const opt of $('kind-filter').options) setText(opt, `${labels[opt.value]} (${c.kinds[opt.value] || 0})`);
    },
  });

  live = new Live({
    getTicket: async () => (await api('POST', '/v1/ws/tickets', {})).ticket,
    onFrame,
    onStatus,
  });
  thread = new ThreadView({
    me,
    live,
    queue,
    toast,
    onClosed: () => queue.setActive(null),
  });

  bindFilters();
  bindKeys();
  $('sign-out').addEventListener('click', signOut);
  $('back').addEventListener('click', () => setHash(null));
  window.addEventListener('hashchange', route);
  // No offline on pagehide: a reload would hand the agent's items back to
  // the queue. A closed tab lapses with its presence lease instead.

  setPresence('online').catch((e) => toast(describeError(e, 'Going online'), 'error'));
  presenceTimer = setInterval(() => setPresence('online').catch(() => {}), PRESENCE_EVERY_MS);
  tickTimer = setInterval(() => {
    const now = Date.now();
    queue.tick(now);
    thread.tick(now);
  }, 1000);

  loadQueue().catch((e) => toast(describeError(e, 'Loading the queue'), 'error'));
  live.start();
  live.subscribe('inbox');
  route();
}

function onStatus(state) {
  const el = $('connection-status');
  el.dataset.state = state;
  const text = { online: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline: retrying…' }[state] || state;
  setText($('connection-text'), text);
  document.body.classList.toggle('is-disconnected', state !== 'online');
}

function onFrame(frame) {
  switch (frame.type) {
    case 'inbox': {
      const item = frame.item;
      if (!item) return;
      if (replay) replay.seen.add(item.id);
      if (liveSeen) liveSeen.add(item.id);
      queue.upsert(item);
      thread.onItem(item);
      if (replay && replay.seen.size >= replay.expected) finishReplay();
      break;
    }
    case 'subscribed':
      if (frame.topic === 'inbox') startReplay(frame.items || 0);
      else thread.onFrame(frame);
      break;
    case 'thread':
      if (frame.thread) queue.updateThread(frame.thread);
      thread.onFrame(frame);
      break;
    case 'error':
      if (frame.code === 'not_found' && frame.topic) toast('That conversation does not exist.', 'error');
      else if (frame.code !== 'rate_limited') console.warn('live error', frame);
      break;
    default:
      thread.onFrame(frame);
  }
}

/** After every (re)subscribe the hub replays each pending item: what it leaves out is gone. */
function startReplay(expected) {
  replay = { expected, seen: new Set() };
  if (expected === 0) finishReplay();
}

function finishReplay() {
  const done = replay;
  replay = null;
  doneLoading();
  if (done.expected < SNAPSHOT_LIMIT) {
    queue.retainOnly(done.seen);
  } else {
    // The replay may be cut short: a full REST load tells what is still pending.
    loadQueue(done.seen).catch((e) => toast(describeError(e, 'Reloading the queue'), 'error'));
  }
}

function doneLoading() {
  if (!firstLoad) return;
  firstLoad = false;
  show($('queue-loading'), false);
}

/**
 * Loads every open and claimed item, 200 at a time. With `retain`, items
 * neither listed nor in `retain` (pushed meanwhile) are dropped afterwards.
 */
async function loadQueue(retain) {
  const listed = new Map();
  if (retain) liveSeen = new Set();
  try {
    await listAll(listed);
  } finally {
    if (retain) {
      for (const id of liveSeen) retain.add(id);
      liveSeen = null;
    }
  }
  queue.batch(() => {
    for (const item of listed.values()) queue.upsert(item);
  });
  doneLoading();
  if (retain) queue.retainOnly(new Set([...listed.keys(), ...retain]));
  if (thread.threadId) for (const i of queue.itemsForThread(thread.threadId)) thread.onItem(i);
}

/** Lists every pending item into `listed`, page by page (`after`: the last id so far). */
async function listAll(listed) {
  let last = null;
  for (;;) {
    const qs = last ? `limit=${PAGE}&after=${encodeURIComponent(last)}` : `limit=${PAGE}`;
    const page = (await api('GET', `/v1/inbox?${qs}`)).items;
    for (const i of page) listed.set(i.id, i);
    if (page.length < PAGE) return;
    last = page[page.length - 1].id;
  }
}

// ---- filters, routing, keyboard ---------------------------------------------------

function bindFilters() {
  const text = $('queue-filter');
  text.addEventListener('input', () => queue.setFilter({ text: text.value }));
  const kind = $('kind-filter');
  kind.addEventListener('change', () => queue.setFilter({ kind: kind.value }));
  kind.addEventListener('input', () => queue.setFilter({ kind: kind.value }));
  for (const chip of document.querySelectorAll('.scope .chip')) {
    chip.addEventListener('click', () => {
      const scope = chip.dataset.scope === queue.filter.scope ? 'all' : chip.dataset.scope;
      for (const c of document.querySelectorAll('.scope .chip')) c.setAttribute('aria-pressed', String(c.dataset.scope === scope));
      queue.setFilter({ scope });
    });
  }
}

function parseHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  return { threadId: p.get('thread'), itemId: p.get('item') };
}

function setHash(threadId, itemId) {
  const next = threadId ? `#thread=${encodeURIComponent(threadId)}${itemId ? `&item=${encodeURIComponent(itemId)}` : ''}` : '';
  if (next === location.hash || (!next && !location.hash)) {
    route();
    return;
  }
  if (next) location.hash = next;
  else {
    history.pushState(null, '', location.pathname + location.search);
    route();
  }
}

function openItem(itemId, threadId) {
  setHash(threadId, itemId);
}

function route() {
  const { threadId, itemId } = parseHash();
  const app = $('app');
  if (threadId) {
    app.dataset.view = 'thread';
    thread.open(threadId, itemId);
  } else {
    app.dataset.view = 'queue';
    const was = thread.threadId ? queue.activeId : null;
    thread.close();
    if (was && matchMedia('(max-width: 760px)').matches) queue.focusRow(was);
  }
}

function typingTarget(el) {
  return el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable);
}

function bindKeys() {
  document.addEventListener('keydown', (ev) => {
    if (ev.defaultPrevented || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const t = ev.target;
    if (typingTarget(t)) {
      if (ev.key === 'Escape' && t.id === 'queue-filter') {
        if (t.value) {
          t.value = '';
          queue.setFilter({ text: '' });
        } else t.blur();
      }
      return;
    }
    switch (ev.key) {
      case 'j':
      case 'ArrowDown':
        if (ev.key === 'ArrowDown' && !t.closest?.('#queue-list')) return;
        ev.preventDefault();
        queue.move(1);
        break;
      case 'k':
      case 'ArrowUp':
        if (ev.key === 'ArrowUp' && !t.closest?.('#queue-list')) return;
        ev.preventDefault();
        queue.move(-1);
        break;
      case 'Enter': {
        if (t !== document.body && !t.closest?.('#queue-list')) return;
        const e = queue.focusedOrActive();
        if (e) {
          ev.preventDefault();
          openItem(e.id, e.item.thread_id);
        }
        break;
      }
      case '/':
        ev.preventDefault();
        $('queue-filter').focus();
        break;
      case 'r':
        if (thread.threadId) {
          ev.preventDefault();
          $('reply-input').focus();
        }
        break;
      case 'n':
        if (thread.threadId) {
          ev.preventDefault();
          $('note-input').focus();
        }
        break;
      case 'Escape':
        if (thread.threadId && $('app').dataset.view === 'thread' && matchMedia('(max-width: 760px)').matches) setHash(null);
        break;
      default:
    }
  });
}

// ---- boot ----------------------------------------------------------------------

async function boot() {
  setUnauthorizedHandler(sessionLost);
  $('login-form').addEventListener('submit', onLogin);
  try {
    const session = await api('GET', '/v1/agents/sessions', undefined, { quiet401: true });
    startApp(session.name);
  } catch (e) {
    showLogin(e.status === 401 ? '' : describeError(e, 'Checking your session'));
  }
}

boot();

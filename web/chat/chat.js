// Tandem customer chat: /chat?key=wk_…[&embed=1][#user_id=…&user_hash=…&name=…]
// Plain ES module, no build step. See web/common/live.js for the socket.
//
// Embed protocol (window.postMessage between this frame and web/widget.js):
//   frame -> parent  {type:'tandem:ready'}          on load; the parent answers with its visibility
//   frame -> parent  {type:'tandem:close'}          close button or Escape
//   frame -> parent  {type:'tandem:unread', count}  replies that arrived while hidden (0 = all seen)
//   parent -> frame  {type:'tandem:visible', visible}  the panel was opened (true) or closed (false)
// The parent checks event.origin (the chat's host) and event.source (its iframe); the frame
// only accepts messages from window.parent and posts to the parent's origin.
//
// Sending: every message gets an Idempotency-Key (also sent as metadata.client_id, so the
// stored copy, from the POST answer or the socket, replaces its pending bubble whichever
// comes first). Unsent messages are kept in localStorage and sent again, with the same key,
// after a reload.

import { Live } from '../common/live.js';

const $ = (id) => document.getElementById(id);
const els = {
  log: $('log'), scroller: $('scroller'), input: $('input'), send: $('send'), form: $('composer'),
  error: $('error'), conn: $('conn'), connText: $('conn-text'), typing: $('typing'),
  typingText: $('typing-text'), responder: $('responder'), sub: $('responder-sub'),
  avatar: $('head-avatar'), close: $('close'), jump: $('jump'), welcome: $('welcome'), hint: $('hint'),
};

const query = new URLSearchParams(location.search);
const KEY = (query.get('key') || '').trim();
const EMBED = query.get('embed') === '1';
const frag = new URLSearchParams(location.hash.slice(1));
const IDENT = {
  user_id: frag.get('user_id') || null,
  user_hash: frag.get('user_hash') || null,
  name: frag.get('name') || null,
};
const STORE_KEY = 'tandem.chat.' + KEY;
const DEFAULT_AI = 'Tandem AI';
const REFUSALS = {
  identity_invalid: "We couldn't confirm who you are, so this chat can't start. Please sign in again or reload the page.",
  identity_required: 'Please sign in to the website to chat with us.',
  origin_not_allowed: "This chat isn't enabled for this website.",
  widget_key_invalid: "This chat isn't set up correctly (the widget key is not valid).",
  missing_key: "This chat isn't set up correctly (no widget key was given).",
};

// ---------- state ----------
let store = readStore();
let live = null;
let thread = null; // the current thread, as the server last told us
let threadId = null;
let fatal = false;
let ready = false; // session + thread resolved: the outbox may send
let booted = false; // initial history rendered (for unread counting)
let maxSeq = 0;
let aiName = DEFAULT_AI;
let counter = 0;
let parentVisible = true;
let unread = 0;
let lastTypingSent = 0;
let typingTimer = 0;
let typist = null; // name of a human typing now
let loadingHistory = null;
const msgs = new Map(); // message id -> { m, el }
const streams = new Map(); // message id -> { el, text, timer }
const outbox = []; // { key, text, created, state: 'queued'|'sending'|'failed', el, error }

// ---------- storage ----------
function readStore() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE_KEY));
    return s && typeof s === 'object' ? s : {};
  } catch {
    return {};
  }
}
function saveStore() {
  store.outbox = outbox.filter((o) => o.state !== 'failed').map(({ key, text, created }) => ({ key, text, created }));
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(store));
  } catch {
    /* private mode / blocked storage: keep going in memory */
  }
}

// ---------- utils ----------
const sleepers = new Set();
function sleep(ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      sleepers.delete(done);
      resolve();
    };
    const t = setTimeout(done, ms);
    sleepers.add(done);
  });
}
function wakeAll() {
  for (const done of [...sleepers]) done();
}
function backoff(attempt, retryAfter) {
  if (retryAfter) return Math.min(retryAfter * 1000, 30000);
  const base = Math.min(10000, 500 * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
function dayLabel(d) {
  const today = new Date();
  const start = (x) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
  const diff = Math.round((start(today) - start(d)) / 86400000);
  if (diff === 0) return 'Today';
  if (diff === 1) return 'Yesterday';
  return dayFmt.format(d);
}
function textOf(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.filter((p) => p && p.type === 'text' && typeof p.text === 'string').map((p) => p.text).join('\n\n');
  }
  return '';
}
function h(tag, cls, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text != null) el.textContent = text;
  return el;
}

// ---------- API ----------
class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
  get transient() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

async function api(method, path, body, idem) {
  for (let renewed = false; ; ) {
    if (renewing) await renewing.catch(() => {});
    const token = store.token;
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (idem) headers['Idempotency-Key'] = idem;
    if (token) headers.Authorization = 'Bearer ' + token;
    let res;
    let data = null;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'omit',
        cache: 'no-store',
      });
      if (res.status !== 204) data = await res.json().catch(() => null);
    } catch {
      throw new ApiError(0, 'network', 'network error');
    }
    if (res.ok) {
      if (data == null && res.status !== 204) throw new ApiError(0, 'bad_body', 'unreadable answer');
      return data;
    }
    const err = (data && data.error) || {};
    if (res.status === 401 && token && !renewed) {
      renewed = true;
      await renewSession(token);
      continue;
    }
    const ra = parseInt(res.headers.get('Retry-After') || '', 10);
    throw new ApiError(res.status, err.code || 'http_' + res.status, err.message, ra > 0 ? ra : 0);
  }
}

// Retries transient failures (network, 429, 5xx) until it works.
async function withRetry(fn) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof ApiError) || !e.transient || fatal) throw e;
      await sleep(backoff(attempt, e.retryAfter));
    }
  }
}

// ---------- session ----------
function sessionUsable() {
  if (!store.token) return false;
  const exp = Date.parse(store.expires_at || '');
  if (!(exp - Date.now() > 60000)) return false;
  return (store.user_id || null) === (IDENT.user_id || null);
}

async function createSession() {
  const body = { widget_key: KEY };
  if (IDENT.user_id) {
    body.user_id = IDENT.user_id;
    if (IDENT.user_hash) body.user_hash = IDENT.user_hash;
  }
  if (IDENT.name) body.name = IDENT.name;
  let data;
  try {
    data = await withRetry(async () => {
      let res;
      let out = null;
      try {
        res = await fetch('/v1/customers/sessions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          body: JSON.stringify(body),
          credentials: 'omit',
          cache: 'no-store',
        });
        out = await res.json().catch(() => null);
      } catch {
        throw new ApiError(0, 'network', 'network error');
      }
      if (res.ok && out && out.token) return out;
      const err = (out && out.error) || {};
      const ra = parseInt(res.headers.get('Retry-After') || '', 10);
      throw new ApiError(res.status || 0, err.code || 'http_' + res.status, err.message, ra > 0 ? ra : 0);
    });
  } catch (e) {
    if (e instanceof ApiError && !e.transient) {
      failHard(REFUSALS[e.code] || e.message || "This chat can't start right now.");
    }
    throw e;
  }
  const sameCustomer = data.customer_id === store.customer_id;
  store.token = data.token;
  store.customer_id = data.customer_id;
  store.expires_at = data.expires_at;
  store.verified = !!data.verified;
  store.user_id = IDENT.user_id || null;
  if (!sameCustomer && store.thread_id && !IDENT.user_id) {
    // Another customer cannot read it anyway; keep it and let GET decide.
  }
  saveStore();
}

let renewing = null;
function renewSession(oldToken) {
  if (store.token !== oldToken) return Promise.resolve(); // someone renewed it already
  if (!renewing) {
    store.token = null;
    saveStore();
    renewing = createSession()
      .then(() => {
        if (live && live.online) live.reconnect(); // a socket of the dead token
        if (threadId) recheckThread();
      })
      .finally(() => {
        renewing = null;
      });
  }
  return renewing;
}

function failHard(sentence) {
  fatal = true;
  els.error.textContent = sentence;
  els.error.hidden = false;
  els.input.disabled = true;
  els.send.disabled = true;
  els.input.placeholder = 'Chat unavailable';
  els.hint.hidden = true;
  if (live) live.close();
  setConn('offline');
  for (const o of outbox) if (o.state !== 'failed') markFailed(o, sentence);
  wakeAll();
}

// ---------- thread ----------
async function resolveThread() {
  if (store.thread_id) {
    try {
      return await api('GET', `/v1/threads/${encodeURIComponent(store.thread_id)}`);
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) throw e;
      store.thread_id = null;
      saveStore();
    }
  }
  const page = await api('GET', '/v1/threads?limit=20');
  return (page.threads || []).find((t) => t.status !== 'closed') || null;
}

async function openThread(t, fresh) {
  thread = t;
  threadId = t.id;
  store.thread_id = t.id;
  saveStore();
  updateResponder();
  const topic = 'thread:' + t.id;
  if (fresh) {
    live && live.subscribe(topic, 0);
    return;
  }
  await loadHistory();
  live && live.subscribe(topic);
}

// Pages the REST history from the highest seq we have to the end.
function loadHistory() {
  if (loadingHistory) return loadingHistory;
  const id = threadId;
  loadingHistory = (async () => {
    let after = maxSeq;
    for (;;) {
      const page = await withRetry(() => api('GET', `/v1/threads/${id}/messages?after_seq=${after}&limit=200`));
      if (id !== threadId) return;
      for (const m of page.messages || []) upsertMessage(m);
      after = Math.max(after, page.next_after_seq || 0);
      if (!page.has_more) break;
    }
    live && live.setCursor('thread:' + id, after);
  })().finally(() => {
    loadingHistory = null;
  });
  return loadingHistory;
}

async function recheckThread() {
  const id = threadId;
  try {
    const t = await withRetry(() => api('GET', `/v1/threads/${id}`));
    if (id === threadId) {
      thread = t;
      updateResponder();
    }
  } catch (e) {
    if (e.status === 404) threadLost();
  }
}

function threadLost() {
  if (!threadId) return;
  live && live.unsubscribe('thread:' + threadId);
  threadId = null;
  thread = null;
  store.thread_id = null;
  saveStore();
  for (const { el } of msgs.values()) el.remove();
  for (const s of streams.values()) s.el.remove();
  msgs.clear();
  streams.clear();
  maxSeq = 0;
  updateResponder();
  updateEmpty();
}

async function ensureThread(text) {
  if (threadId) return;
  if (!store.new_thread) {
    const flat = text.replace(/\s+/g, ' ').trim();
    let title = flat.split(' ').slice(0, 8).join(' ');
    if (title.length > 60) title = title.slice(0, 59).trimEnd();
    if (title.length < flat.length) title += '…';
    store.new_thread = { key: uuid(), title };
    saveStore();
  }
  const t = await api('POST', '/v1/threads', { title: store.new_thread.title }, store.new_thread.key);
  store.new_thread = null;
  await openThread(t, true);
}

// ---------- responder ----------
function lastReply() {
  let best = null;
  for (const { m } of msgs.values()) {
    const k = m.author && m.author.kind;
    if ((k === 'ai' || k === 'human') && (!best || m.seq > best.seq)) best = m;
  }
  return best;
}
function updateResponder() {
  const reply = lastReply();
  let human = null;
  if (thread && thread.assigned_to === 'human') {
    human = thread.assignee || (reply && reply.author.kind === 'human' && reply.agent_name) || 'Support team';
  } else if (!(thread && thread.assigned_to === 'ai') && reply && reply.author.kind === 'human') {
    human = reply.agent_name || 'Support team';
  }
  els.responder.textContent = human || `${aiName} · AI`;
  els.sub.textContent = human ? 'Support team' : 'AI assistant · a person can take over';
  els.avatar.classList.toggle('is-human', !!human);
  els.avatar.dataset.initials = human ? initials(human) : '';
}
function initials(name) {
  return name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('');
}

// ---------- rendering ----------
function authorKind(m) {
  const k = m.author && m.author.kind;
  return k === 'customer' || k === 'ai' || k === 'human' || k === 'system' ? k : m.role === 'user' ? 'customer' : 'system';
}
function authorName(kind, name) {
  if (kind === 'customer') return 'You';
  if (kind === 'ai') return name || aiName;
  if (kind === 'human') return name || 'Support';
  return name || 'Notice';
}

// One message element. kind: customer|ai|human|system.
function makeEl(kind, name) {
  const el = h('div', 'msg msg-' + kind);
  el.setAttribute('data-testid', 'chat-message');
  el.dataset.author = kind;
  const av = h('div', 'msg-avatar');
  av.setAttribute('aria-hidden', 'true');
  if (kind === 'human') av.dataset.initials = initials(name || 'S');
  if (kind === 'ai') av.classList.add('is-ai');
  const author = h('div', 'msg-author');
  author.setAttribute('data-testid', 'message-author');
  author.append(authorName(kind, name));
  if (kind === 'ai') {
    author.append(h('span', 'vh', ' · '));
    author.append(h('span', 'badge', 'AI'));
  }
  const bubble = h('div', 'bubble');
  const text = h('div', 'msg-text');
  text.setAttribute('data-testid', 'message-text');
  bubble.append(text);
  const foot = h('div', 'msg-foot');
  el.append(av, author, bubble, foot);
  return el;
}
const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]}]/g;
function setText(el, text, links) {
  const box = el.querySelector('.msg-text');
  if (!links) {
    box.textContent = text;
    return;
  }
  box.textContent = '';
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    if (match.index > last) box.append(text.slice(last, match.index));
    const a = h('a', null, match[0]);
    a.href = match[0];
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow';
    box.append(a);
    last = match.index + match[0].length;
  }
  if (last < text.length) box.append(text.slice(last));
}
function setFoot(el, at, state, onRetry) {
  const foot = el.querySelector('.msg-foot');
  foot.textContent = '';
  if (at) {
    const t = h('time', null, timeFmt.format(at));
    t.dateTime = at.toISOString();
    foot.append(t);
  }
  if (state) foot.append(h('span', 'msg-state', state));
  if (onRetry) {
    const b = h('button', 'retry', 'Retry');
    b.type = 'button';
    b.addEventListener('click', onRetry);
    foot.append(b);
  }
}

// Order: stored by seq, then streaming, then pending (in the order made).
function orderOf(el) {
  return el._rank * 1e15 + el._n;
}
function place(el) {
  const nextBefore = el.parentNode ? el.nextElementSibling : null;
  if (el.parentNode) el.remove();
  const k = orderOf(el);
  let ref = els.log.lastElementChild;
  while (ref && orderOf(ref) > k) ref = ref.previousElementSibling;
  if (ref) ref.after(el);
  else els.log.prepend(el);
  refresh(el);
  if (el.nextElementSibling) refresh(el.nextElementSibling);
  if (nextBefore && nextBefore.parentNode) refresh(nextBefore);
  updateEmpty();
}
// Day separators and grouping of consecutive messages by one author.
function refresh(el) {
  const prev = el.previousElementSibling;
  const day = dayLabel(el._at || new Date());
  const newDay = !prev || dayLabel(prev._at || new Date()) !== day;
  if (newDay) el.dataset.day = day;
  else delete el.dataset.day;
  const cont =
    !newDay && prev && prev.dataset.author === el.dataset.author && prev._who === el._who &&
    el.dataset.author !== 'system' && Math.abs((el._at || 0) - (prev._at || 0)) < 5 * 60000;
  el.classList.toggle('cont', !!cont);
}
function updateEmpty() {
  els.welcome.hidden = els.log.childElementCount > 0;
}

// ---------- scrolling ----------
function nearBottom() {
  const s = els.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}
const reduceMotion = matchMedia('(prefers-reduced-motion: reduce)');
function toBottom(smooth) {
  const s = els.scroller;
  s.scrollTo({ top: s.scrollHeight, behavior: smooth && !reduceMotion.matches ? 'smooth' : 'auto' });
  els.jump.hidden = true;
}
function afterInsert(wasNear, own) {
  if (!booted) return; // boot scrolls once at the end
  if (wasNear || own) toBottom(true);
  else els.jump.hidden = false;
}

// ---------- messages ----------
function upsertMessage(m) {
  if (!m || !m.id || (threadId && m.thread_id && m.thread_id !== threadId)) return;
  if ((m.visibility && m.visibility !== 'public') || (m.status && m.status !== 'published' && m.status !== 'approved')) return;
  if (m.role === 'tool') return;
  const text = textOf(m.content);
  if (!text) return;
  const known = msgs.get(m.id);
  if (known) return; // a message is never stored twice: dedupe by id
  const kind = authorKind(m);
  const wasNear = booted && nearBottom();
  const cid = m.metadata && typeof m.metadata === 'object' ? m.metadata.client_id : null;
  const pending = outbox.find((o) => o.serverId === m.id || (cid && o.key === cid));
  let el;
  if (pending) {
    el = pending.el;
    pending.stored = true;
    outbox.splice(outbox.indexOf(pending), 1);
    saveStore();
    el.removeAttribute('data-pending');
    el.removeAttribute('data-failed');
    el.removeAttribute('aria-busy');
  } else {
    el = makeEl(kind, m.agent_name);
  }
  const stream = streams.get(m.id);
  if (stream) {
    clearTimeout(stream.timer);
    streams.delete(m.id);
    stream.el.remove();
    updateTyping();
  }
  if (kind === 'ai' && m.agent_name && m.agent_name !== aiName) {
    aiName = m.agent_name;
  }
  el.dataset.messageId = m.id;
  el.setAttribute('data-message-id', m.id);
  el.setAttribute('data-seq', String(m.seq));
  el._rank = 0;
  el._n = m.seq;
  el._at = new Date(m.created_at || Date.now());
  el._who = m.agent_name || kind;
  setText(el, text, true);
  setFoot(el, el._at, kind === 'customer' && pending ? 'Sent' : '');
  msgs.set(m.id, { m, el });
  if (m.seq > maxSeq) maxSeq = m.seq;
  place(el);
  if (kind !== 'customer') {
    if (typist && kind === 'human' && m.agent_name === typist) hideTyping();
    updateResponder();
    if (booted && !isVisible()) bumpUnread();
  }
  afterInsert(wasNear, kind === 'customer');
}

function onDelta(f) {
  if (f.thread_id !== threadId || !f.message_id || msgs.has(f.message_id)) return;
  let s = streams.get(f.message_id);
  const wasNear = nearBottom();
  if (!s) {
    if (!f.text) return;
    const el = makeEl('ai', aiName);
    el.setAttribute('data-message-id', f.message_id);
    el.setAttribute('data-streaming', 'true');
    el.setAttribute('aria-hidden', 'true'); // announced once, when stored
    el._rank = 1;
    el._n = ++counter;
    el._at = new Date();
    el._who = aiName;
    s = { el, text: '', timer: 0 };
    streams.set(f.message_id, s);
    place(el);
  }
  if (f.reset) s.text = '';
  s.text += f.text || '';
  clearTimeout(s.timer);
  if (!s.text) {
    s.el.remove();
    streams.delete(f.message_id);
    updateEmpty();
  } else {
    setText(s.el, s.text, false);
    // A stream whose message never comes (the reply was held or failed).
    s.timer = setTimeout(() => {
      if (streams.get(f.message_id) === s) {
        s.el.remove();
        streams.delete(f.message_id);
        updateTyping();
        updateEmpty();
      }
    }, 90000);
  }
  updateTyping();
  afterInsert(wasNear, false);
}

// ---------- typing ----------
function showTyping(name) {
  typist = name;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(hideTyping, 4000);
  updateTyping();
}
function hideTyping() {
  typist = null;
  clearTimeout(typingTimer);
  updateTyping();
}
function updateTyping() {
  const who = typist || (streams.size ? aiName : null);
  const wasNear = nearBottom();
  els.typing.hidden = !who;
  if (who) {
    els.typingText.textContent = `${who} is typing…`;
    if (wasNear) toBottom(false);
  }
}
function onInput() {
  autosize();
  if (!threadId || !live || !els.input.value.trim()) return;
  const now = Date.now();
  if (now - lastTypingSent < 1500) return;
  if (live.send({ type: 'typing', thread_id: threadId })) lastTypingSent = now;
}
function autosize() {
  const i = els.input;
  i.style.height = 'auto';
  i.style.height = Math.min(i.scrollHeight, 160) + 'px';
}

// ---------- sending ----------
function enqueue(text, key, created) {
  const o = { key: key || uuid(), text, created: created || Date.now(), state: 'queued' };
  const el = makeEl('customer');
  el.setAttribute('data-pending', 'true');
  el.setAttribute('aria-busy', 'true');
  el.setAttribute('data-message-id', 'local-' + o.key);
  el._rank = 2;
  el._n = ++counter;
  el._at = new Date(o.created);
  el._who = 'customer';
  setText(el, text, true);
  setFoot(el, null, 'Sending…');
  o.el = el;
  outbox.push(o);
  saveStore();
  place(el);
  if (booted) toBottom(true);
  pump();
  return o;
}

function markFailed(o, reason) {
  o.state = 'failed';
  o.el.setAttribute('data-failed', 'true');
  o.el.removeAttribute('aria-busy');
  setFoot(o.el, null, 'Not sent' + (reason ? ' — ' + reason : ''), fatal ? null : () => retry(o));
  saveStore();
}
function retry(o) {
  if (fatal || o.state !== 'failed') return;
  // Refused for good before: nothing was stored, a new key is safe.
  o.key = uuid();
  o.state = 'queued';
  o.el.removeAttribute('data-failed');
  o.el.setAttribute('aria-busy', 'true');
  setFoot(o.el, null, 'Sending…');
  // Back in line, after what is already waiting.
  outbox.splice(outbox.indexOf(o), 1);
  outbox.push(o);
  o.el._n = ++counter;
  place(o.el);
  saveStore();
  pump();
}

let pumping = false;
async function pump() {
  if (pumping || !ready || fatal) return;
  pumping = true;
  try {
    let attempt = 0;
    for (;;) {
      const o = outbox.find((x) => x.state === 'queued');
      if (!o || fatal) break;
      try {
        await ensureThread(o.text);
        o.state = 'sending';
        const m = await api(
          'POST',
          `/v1/threads/${threadId}/messages`,
          { content: o.text, metadata: { client_id: o.key } },
          o.key,
        );
        o.serverId = m.id;
        if (!o.stored) upsertMessage(m);
        attempt = 0;
      } catch (e) {
        if (o.state === 'sending') o.state = 'queued';
        if (fatal) break;
        if (e instanceof ApiError && e.status === 404 && threadId) {
          threadLost(); // the thread is gone for us: a new one comes with this send
          continue;
        }
        if (!(e instanceof ApiError) || !e.transient) {
          markFailed(o, humanReason(e));
          continue;
        }
        setFoot(o.el, null, e.status === 0 ? 'Sending… (waiting for the network)' : 'Sending…');
        await sleep(backoff(attempt++, e.retryAfter));
      }
    }
  } finally {
    pumping = false;
  }
}
function humanReason(e) {
  if (!(e instanceof ApiError)) return 'something went wrong';
  if (e.code === 'content_too_long' || e.code === 'body_too_large') return 'the message is too long';
  if (e.code === 'empty_content') return 'the message is empty';
  return e.message || 'refused';
}

// ---------- connection status ----------
function setConn(state) {
  els.conn.dataset.state = state;
  els.conn.setAttribute('data-state', state);
  els.connText.textContent =
    state === 'online' ? 'Connected' : state === 'connecting' ? 'Connecting…' : state === 'offline' ? "You're offline. Reconnecting…" : 'Reconnecting…';
  if (fatal && state === 'offline') els.connText.textContent = 'Offline';
}

// ---------- frames ----------
function onFrame(f) {
  switch (f.type) {
    case 'message':
      if (f.thread_id === threadId) upsertMessage(f.message);
      break;
    case 'delta':
      onDelta(f);
      break;
    case 'typing':
      if (f.thread_id === threadId && f.who && f.who.kind !== 'customer') {
        showTyping(f.who.kind === 'human' && f.who.name ? f.who.name : 'Support');
      }
      break;
    case 'thread':
      if (f.thread && f.thread.id === threadId) {
        thread = f.thread;
        updateResponder();
      }
      break;
    case 'subscribed':
      if (f.topic === 'thread:' + threadId && f.recovered === false) loadHistory().catch(() => {});
      break;
    case 'error':
      if (f.topic === 'thread:' + threadId && f.code === 'not_found') recheckThread();
      break;
  }
}

// ---------- visibility / embed ----------
function isVisible() {
  return parentVisible && document.visibilityState === 'visible';
}
function bumpUnread() {
  unread++;
  reportUnread();
}
function reportUnread() {
  if (EMBED) toParent({ type: 'tandem:unread', count: unread });
  else document.title = (unread ? `(${unread}) ` : '') + 'Support chat';
}
function seen() {
  if (!isVisible() || !unread) return;
  unread = 0;
  reportUnread();
}
const PARENT_ORIGIN = (() => {
  try {
    if (location.ancestorOrigins && location.ancestorOrigins.length) return location.ancestorOrigins[0];
    if (document.referrer) return new URL(document.referrer).origin;
  } catch {
    /* fall through */
  }
  return '*';
})();
function toParent(msg) {
  if (!EMBED || window.parent === window) return;
  try {
    window.parent.postMessage(msg, PARENT_ORIGIN);
  } catch {
    window.parent.postMessage(msg, '*');
  }
}
function closeEmbed() {
  toParent({ type: 'tandem:close' });
}

// ---------- wiring ----------
function wire() {
  els.form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  els.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  els.input.addEventListener('input', onInput);
  els.jump.addEventListener('click', () => toBottom(true));
  els.scroller.addEventListener('scroll', () => {
    if (nearBottom()) els.jump.hidden = true;
  }, { passive: true });
  document.addEventListener('visibilitychange', seen);
  window.addEventListener('focus', seen);
  window.addEventListener('online', () => {
    wakeAll();
    pump();
  });
  window.addEventListener('offline', () => {
    if (!live && !fatal) setConn('offline');
  });
  window.addEventListener('storage', (e) => {
    if (e.key !== STORE_KEY || !e.newValue) return;
    try {
      const other = JSON.parse(e.newValue);
      if (other.token && other.token !== store.token && other.customer_id === store.customer_id) {
        store.token = other.token;
        store.expires_at = other.expires_at;
      }
      if (ready && !threadId && other.thread_id && !fatal) {
        store.thread_id = other.thread_id;
        withRetry(resolveThread).then((t) => t && !threadId && openThread(t)).catch(() => {});
      }
    } catch {
      /* ignore */
    }
  });
  if (EMBED) {
    document.documentElement.classList.add('embed');
    els.close.hidden = false;
    els.close.addEventListener('click', closeEmbed);
    // The widget focuses the frame when it opens: go on to the composer.
    window.addEventListener('focus', () => {
      if (parentVisible && document.activeElement === document.body && !els.input.disabled) {
        els.input.focus({ preventScroll: true });
      }
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !e.defaultPrevented) closeEmbed();
    });
    window.addEventListener('message', (e) => {
      if (e.source !== window.parent || !e.data || typeof e.data !== 'object') return;
      if (e.data.type === 'tandem:visible') {
        parentVisible = !!e.data.visible;
        if (parentVisible) {
          seen();
          if (!els.input.disabled) els.input.focus({ preventScroll: true });
          toBottom(false);
        }
      }
    });
    toParent({ type: 'tandem:ready' });
  }
}

function submit() {
  if (fatal) return;
  const text = els.input.value.trim();
  if (!text) return;
  els.input.value = '';
  autosize();
  lastTypingSent = 0;
  enqueue(text);
}

async function boot() {
  wire();
  setConn(navigator.onLine === false ? 'offline' : 'connecting');
  if (!KEY) {
    failHard(REFUSALS.missing_key);
    return;
  }
  // Messages that were on their way when the page was last closed: shown at
  // once, sent again with the same key (the server keeps the first answer).
  for (const o of Array.isArray(store.outbox) ? store.outbox : []) {
    if (o && o.key && o.text) enqueue(o.text, o.key, o.created);
  }
  try {
    if (!sessionUsable()) {
      store.token = null;
      await createSession();
    }
  } catch {
    return; // refused: failHard has said why
  }
  live = new Live({
    getTicket: async () => (await api('POST', '/v1/ws/tickets')).ticket,
    onFrame,
    onStatus: (s) => {
      if (fatal) return;
      setConn(s);
      if (s === 'online') {
        wakeAll();
        pump();
      }
    },
  });
  live.start();
  try {
    const t = await withRetry(resolveThread);
    if (t) await openThread(t, false);
  } catch (e) {
    if (!fatal) console.error('tandem chat: could not load the conversation', e);
  }
  booted = true;
  ready = true;
  toBottom(false);
  pump();
}

boot();

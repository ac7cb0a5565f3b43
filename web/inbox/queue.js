// The queue: one row per open or claimed inbox item, built once and updated
// in place by id. Filtering toggles `hidden` on rows against precomputed
// lowercase search text; a shared 1-s tick updates only the countdowns of
// rows in view.

import { h, setText, setAttr, dueText, contentText, KIND_LABEL } from './util.js';

const PENDING = new Set(['open', 'claimed']);

/** The thread's display title. */
export function threadTitle(thread, fallbackId) {
  if (thread && thread.title) return thread.title;
  if (thread && thread.customer_id) return `Conversation with ${thread.customer_id}`;
  return `Thread ${String(fallbackId || '').slice(-8)}`;
}

/** The one-line gist of an item: the question, the draft, the reason… */
export function itemExcerpt(item) {
  const lastCustomer = [...(item.history || [])].reverse().find((m) => m.role === 'user');
  const said = lastCustomer ? contentText(lastCustomer.content) : '';
  switch (item.kind) {
    case 'question':
      return item.body ? `AI asks: ${item.body}` : item.reason || said;
    case 'approval':
      return item.body ? `Draft: ${item.body}` : item.reason || said;
    case 'escalation':
      return item.reason || item.suggestion || said;
    default:
      return said ? `Customer: ${said}` : item.reason || '';
  }
}

function dueMs(item) {
  return item.due_at ? Date.parse(item.due_at) : 0;
}

/** Oldest due first (no deadline last), then oldest opened: the server's order. */
function compare(a, b) {
  const da = a.due || Infinity;
  const db = b.due || Infinity;
  if (da !== db) return da - db;
  if (a.created !== b.created) return a.created - b.created;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export class Queue {
  constructor({ list, count, empty, me, onOpen, onCounts }) {
    this.list = list;
    this.countEl = count;
    this.emptyEl = empty;
    this.me = me;
    this.onOpen = onOpen;
    this.onCounts = onCounts || (() => {});
    this.entries = new Map(); // id -> entry
    this.order = []; // entries, sorted
    this.byThread = new Map(); // thread id -> Set of item ids
    this.gone = new Map(); // id -> updated_at of items that left the queue
    this.filter = { text: '', terms: [], kind: 'all', scope: 'all' };
    this.activeId = null;
    this.batching = false;
    this.visible = new Set();
    this.observer = new IntersectionObserver((records) => {
      for (const r of records) {
        const id = r.target.dataset.itemId;
        if (r.isIntersecting) {
          this.visible.add(id);
          const e = this.entries.get(id);
          if (e) this.paintDue(e, Date.now());
        } else this.visible.delete(id);
      }
    }, { root: list.closest('.queue-scroll') || null, rootMargin: '200px 0px' });
    list.addEventListener('click', (ev) => {
      const row = ev.target.closest('[data-testid="queue-item"]');
      if (row) this.onOpen(row.dataset.itemId, row.dataset.threadId);
    });
    list.addEventListener('keydown', (ev) => {
      const row = ev.target.closest('[data-testid="queue-item"]');
      if (row && (ev.key === 'Enter' || ev.key === ' ')) {
        ev.preventDefault();
        this.onOpen(row.dataset.itemId, row.dataset.threadId);
      }
    });
  }

  get(id) {
    const e = this.entries.get(id);
    return e ? e.item : null;
  }

  /** Pending items of a thread, most urgent first. */
  itemsForThread(threadId) {
    const ids = this.byThread.get(threadId);
    if (!ids) return [];
    return [...ids].map((id) => this.entries.get(id)).filter(Boolean).sort(compare).map((e) => e.item);
  }

  /** Any thread object the queue knows for this id. */
  thread(threadId) {
    for (const item of this.itemsForThread(threadId)) if (item.thread) return item.thread;
    return null;
  }

  /** Adds or updates an item (an InboxView, or a bare InboxItem whose context is kept). */
  upsert(incoming) {
    const id = incoming.id;
    const current = this.entries.get(id);
    const stamp = Date.parse(incoming.updated_at) || 0;
    if (current && stamp && stamp < current.stamp) return current.item;
    if (!current && this.gone.has(id) && stamp <= this.gone.get(id)) return null;
    if (!PENDING.has(incoming.status)) {
      this.remove(id, stamp);
      return null;
    }
    const item = current ? { ...current.item, ...incoming } : { ...incoming };
    if (current && !incoming.thread && current.item.thread) item.thread = current.item.thread;
    if (current && !incoming.history && current.item.history) item.history = current.item.history;
    if (current) {
      const before = current.due;
      current.item = item;
      current.stamp = stamp;
      current.due = dueMs(item);
      this.paint(current);
      if (before !== current.due && !this.batching) this.reposition(current);
    } else {
      const entry = {
        id,
        item,
        stamp,
        due: dueMs(item),
        created: Date.parse(item.created_at) || 0,
        row: null,
        search: '',
      };
      this.build(entry);
      this.entries.set(id, entry);
      let set = this.byThread.get(item.thread_id);
      if (!set) this.byThread.set(item.thread_id, (set = new Set()));
      set.add(id);
      if (!this.batching) this.insert(entry);
      else this.order.push(entry);
    }
    if (!this.batching) this.scheduleCount();
    return item;
  }

  remove(id, stamp = Date.now()) {
    this.gone.set(id, stamp || Date.now());
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    this.byThread.get(e.item.thread_id)?.delete(id);
    const i = this.order.indexOf(e);
    if (i >= 0) this.order.splice(i, 1);
    this.observer.unobserve(e.row);
    this.visible.delete(id);
    e.row.remove();
    if (!this.batching) this.scheduleCount();
  }

  /** A `thread` frame: retitle every row of that thread. */
  updateThread(thread) {
    const ids = this.byThread.get(thread.id);
    if (!ids) return;
    for (const id of ids) {
      const e = this.entries.get(id);
      if (!e) continue;
      e.item = { ...e.item, thread };
      this.paint(e);
    }
    this.scheduleCount();
  }

  /** Many upserts at once: rows are ordered and counted once at the end. */
  batch(fn) {
    this.batching = true;
    try {
      fn();
    } finally {
      this.batching = false;
      this.order.sort(compare);
      const frag = document.createDocumentFragment();
      for (const e of this.order) frag.append(e.row);
      this.list.append(frag);
      for (const e of this.order) this.observer.observe(e.row);
      this.refreshCount();
    }
  }

  /** Drops items not in `keep` (after a full reload that saw every pending item). */
  retainOnly(keep) {
    this.batching = true;
    for (const id of [...this.entries.keys()]) if (!keep.has(id)) this.remove(id);
    this.batching = false;
    this.refreshCount();
  }

  insert(entry) {
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compare(this.order[mid], entry) < 0) lo = mid + 1;
      else hi = mid;
    }
    const next = this.order[lo];
    this.order.splice(lo, 0, entry);
    this.list.insertBefore(entry.row, next ? next.row : null);
    this.observer.observe(entry.row);
  }

  reposition(entry) {
    const i = this.order.indexOf(entry);
    if (i >= 0) this.order.splice(i, 1);
    const focused = document.activeElement === entry.row;
    this.observer.unobserve(entry.row);
    this.insert(entry);
    if (focused) entry.row.focus({ preventScroll: true });
  }

  build(entry) {
    const parts = {
      kind: h('span', { class: 'badge kind' }),
      title: h('span', { class: 'q-title' }),
      due: h('span', { class: 'q-due', testid: 'item-due' }),
      excerpt: h('div', { class: 'q-excerpt' }),
      claim: h('span', { class: 'q-claim' }),
      prio: h('span', { class: 'q-prio' }),
      customer: h('span', { class: 'q-customer' }),
    };
    entry.parts = parts;
    entry.row = h(
      'li',
      { class: 'q-row', testid: 'queue-item', role: 'option', tabindex: '-1', 'aria-selected': 'false' },
      h('div', { class: 'q-line' }, parts.kind, parts.title, parts.due),
      parts.excerpt,
      h('div', { class: 'q-meta' }, parts.prio, parts.claim, parts.customer),
    );
    entry.row.dataset.itemId = entry.id;
    this.paint(entry);
  }

  paint(entry) {
    const { item, row, parts } = entry;
    const thread = item.thread;
    setAttr(row, 'data-kind', item.kind);
    setAttr(row, 'data-status', item.status);
    setAttr(row, 'data-thread-id', item.thread_id);
    setAttr(row, 'data-claimed-by', item.claimed_by || '');
    setAttr(row, 'data-priority', item.priority || 'normal');
    const mine = item.claimed_by && item.claimed_by === this.me;
    row.classList.toggle('is-mine', !!mine);
    parts.kind.className = `badge kind kind-${item.kind}`;
    setText(parts.kind, KIND_LABEL[item.kind] || item.kind);
    const title = threadTitle(thread, item.thread_id);
    setText(parts.title, title);
    const excerpt = itemExcerpt(item);
    setText(parts.excerpt, excerpt);
    setText(parts.claim, item.claimed_by ? (mine ? 'Claimed by you' : `Claimed by ${item.claimed_by}`) : 'Unclaimed');
    parts.claim.classList.toggle('is-unclaimed', !item.claimed_by);
    const prio = item.priority || 'normal';
    setText(parts.prio, prio[0].toUpperCase() + prio.slice(1));
    parts.prio.className = `q-prio prio-${prio}`;
    setText(parts.customer, thread && thread.customer_id ? thread.customer_id : '');
    setAttr(parts.due, 'data-due-at', item.due_at || null);
    setAttr(row, 'aria-label', `${KIND_LABEL[item.kind] || item.kind}: ${title}`);
    entry.search = [
      title, thread && thread.customer_id, item.body, item.reason, item.suggestion,
      excerpt, item.claimed_by, item.kind, item.team,
    ].filter(Boolean).join('\n').toLowerCase();
    this.paintDue(entry, Date.now());
    this.applyOne(entry);
  }

  paintDue(entry, now) {
    const { text, overdue, soon } = dueText(entry.due, now);
    const el = entry.parts.due;
    setText(el, text);
    if (el.classList.contains('is-overdue') !== overdue) el.classList.toggle('is-overdue', overdue);
    if (el.classList.contains('is-soon') !== soon) el.classList.toggle('is-soon', soon);
  }

  /** The shared 1-s tick: only rows in (or near) view. */
  tick(now = Date.now()) {
    for (const id of this.visible) {
      const e = this.entries.get(id);
      if (e && e.due) this.paintDue(e, now);
    }
  }

  matches(entry, ignoreKind = false) {
    const f = this.filter;
    const item = entry.item;
    if (!ignoreKind && f.kind !== 'all' && item.kind !== f.kind) return false;
    if (f.scope === 'mine' && item.claimed_by !== this.me) return false;
    if (f.scope === 'unclaimed' && item.claimed_by) return false;
    if (!f.terms.length) return true;
    for (const term of f.terms) if (!entry.search.includes(term)) return false;
    return true;
  }

  applyOne(entry) {
    const hide = !this.matches(entry);
    if (entry.row.hidden !== hide) entry.row.hidden = hide;
  }

  /** Synchronous: the next paint shows the filtered list. */
  setFilter(change) {
    Object.assign(this.filter, change);
    if (change.text !== undefined) {
      // Every word must match, in any order ("bulk 15" finds "Bulk conversation 1015").
      this.filter.text = change.text.trim().toLowerCase();
      this.filter.terms = this.filter.text.split(/\s+/).filter(Boolean);
    }
    for (const e of this.order) this.applyOne(e);
    this.refreshCount();
  }

  /** Counts once per frame for live changes; filters count at once. */
  scheduleCount() {
    if (this.countPending) return;
    this.countPending = true;
    requestAnimationFrame(() => this.refreshCount());
  }

  refreshCount() {
    this.countPending = false;
    let shown = 0;
    const kinds = { all: 0, question: 0, approval: 0, escalation: 0, handoff: 0 };
    let mine = 0;
    let unclaimed = 0;
    for (const e of this.order) {
      if (!e.row.hidden) shown++;
      if (e.item.claimed_by === this.me) mine++;
      else if (!e.item.claimed_by) unclaimed++;
      if (this.matches(e, true)) {
        kinds.all++;
        kinds[e.item.kind] = (kinds[e.item.kind] || 0) + 1;
      }
    }
    setText(this.countEl, String(shown));
    if (this.emptyEl) {
      this.emptyEl.hidden = shown !== 0;
      setText(this.emptyEl, this.order.length ? 'No items match these filters.' : 'All caught up: nothing is waiting.');
    }
    this.onCounts({ shown, total: this.order.length, kinds, mine, unclaimed });
    this.ensureTabStop();
  }

  /** Exactly one visible row is in the Tab order (roving tabindex). */
  ensureTabStop() {
    const stop = this.tabStop;
    if (stop && stop.isConnected && !stop.hidden && stop.tabIndex === 0) return;
    if (stop) stop.tabIndex = -1;
    const active = this.entries.get(this.activeId);
    const next = active && !active.row.hidden ? active : this.order.find((e) => !e.row.hidden);
    this.tabStop = next ? next.row : null;
    if (this.tabStop) this.tabStop.tabIndex = 0;
  }

  /** Focuses a row by id (after closing its thread). */
  focusRow(id) {
    const e = this.entries.get(id);
    if (!e || e.row.hidden) return;
    this.setTabStop(e.row);
    e.row.focus({ preventScroll: true });
    e.row.scrollIntoView({ block: 'nearest' });
  }

  setTabStop(row) {
    if (this.tabStop && this.tabStop !== row) this.tabStop.tabIndex = -1;
    this.tabStop = row;
    row.tabIndex = 0;
  }

  setActive(id) {
    if (this.activeId === id) return;
    const prev = this.entries.get(this.activeId);
    if (prev) {
      prev.row.classList.remove('is-active');
      prev.row.setAttribute('aria-selected', 'false');
    }
    this.activeId = id;
    const next = this.entries.get(id);
    if (next) {
      next.row.classList.add('is-active');
      next.row.setAttribute('aria-selected', 'true');
      this.setTabStop(next.row);
    }
  }

  /** j/k: focus the next/previous visible row. */
  move(delta) {
    const rows = this.order.filter((e) => !e.row.hidden);
    if (!rows.length) return;
    const focusedId = document.activeElement?.dataset?.itemId;
    let i = rows.findIndex((e) => e.id === (focusedId || this.activeId));
    i = i < 0 ? (delta > 0 ? 0 : rows.length - 1) : Math.min(rows.length - 1, Math.max(0, i + delta));
    const row = rows[i].row;
    this.setTabStop(row);
    row.focus({ preventScroll: true });
    row.scrollIntoView({ block: 'nearest' });
  }

  /** The row to open on Enter when focus is not on a row. */
  focusedOrActive() {
    const id = document.activeElement?.dataset?.itemId || this.activeId;
    return this.entries.get(id) || null;
  }
}

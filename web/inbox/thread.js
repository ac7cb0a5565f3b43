// The thread pane (history, live messages, streaming AI text, typing,
// viewers, reply composer, copilot suggestion) and the details pane (the
// item and every action on it and on the thread).

import { api, describeError } from './api.js';
import { renderMessage } from './messages.js';
import { threadTitle } from './queue.js';
import { $, dueText, KIND_LABEL, setText, show, contentText, ago } from './util.js';

const PENDING = new Set(['open', 'claimed']);
const TYPING_SEND_MS = 1500;
const TYPING_SHOW_MS = 5000;

export class ThreadView {
  constructor({ me, live, queue, toast, onClosed }) {
    this.me = me;
    this.live = live;
    this.queue = queue;
    this.toast = toast;
    this.onClosed = onClosed;
    this.threadId = null;
    this.thread = null;
    this.item = null; // the item the details pane is about
    this.bySeq = new Map(); // seq -> element
    this.byId = new Map(); // message id -> message
    this.maxSeq = 0;
    this.streams = new Map(); // message id -> element
    this.typists = new Map(); // name -> expiry ms
    this.viewers = [];
    this.lastTypingSent = 0;
    this.loadToken = 0;
    this.suggestionId = null;
    this.suggestionText = '';
    this.bind();
  }

  // ---- wiring ------------------------------------------------------------

  bind() {
    this.els = {};
    for (const id of [
      'thread-view', 'thread-empty', 'thread-title', 'thread-sub', 'viewers', 'thread-scroll',
      'thread-messages', 'thread-loading', 'streaming', 'typing-indicator', 'reply-form', 'reply-input',
      'reply-send', 'suggest', 'suggestion-box', 'suggestion', 'suggestion-send', 'suggestion-discard',
      'details', 'details-empty', 'item-card', 'item-kind', 'item-status', 'item-due', 'item-claimed',
      'item-priority', 'item-team', 'item-team-label', 'item-reason', 'item-suggestion', 'item-suggestion-text',
      'use-suggestion', 'claim', 'release', 'item-note', 'question-box', 'question-text', 'answer-input',
      'answer-submit', 'approval-box', 'draft-editor', 'approve', 'draft-revert', 'reject-review', 'reject',
      'handoff-hint', 'resolved-card', 'resolved-text', 'other-items', 'other-items-list', 'assign-text',
      'take-over', 'hand-back', 'note-input', 'note-send',
    ]) this.els[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = $(id);
    const e = this.els;
    e.replyForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.sendReply();
    });
    e.claim.addEventListener('click', () => this.claim());
    e.release.addEventListener('click', () => this.release());
    e.answerSubmit.addEventListener('click', () => this.answer());
    e.approve.addEventListener('click', () => this.approve());
    e.reject.addEventListener('click', () => this.reject());
    e.takeOver.addEventListener('click', () => this.assign('human'));
    e.handBack.addEventListener('click', () => this.assign('ai'));
    e.noteSend.addEventListener('click', () => this.sendNote());
    e.suggest.addEventListener('click', () => this.suggest());
    e.suggestionSend.addEventListener('click', () => this.sendSuggestion());
    e.suggestionDiscard.addEventListener('click', () => this.clearSuggestion());
    e.useSuggestion.addEventListener('click', () => {
      if (!this.item || !this.item.suggestion) return;
      e.replyInput.value = this.item.suggestion;
      e.replyInput.focus();
    });
    e.draftEditor.addEventListener('input', () => {
      show(e.draftRevert, this.item && e.draftEditor.value !== (this.item.body || ''));
    });
    e.draftRevert.addEventListener('click', () => {
      e.draftEditor.value = (this.item && this.item.body) || '';
      show(e.draftRevert, false);
    });
    e.otherItemsList.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-item-id]');
      if (b) this.selectItem(this.queue.get(b.dataset.itemId));
    });
    // Ctrl/Cmd+Enter sends from each text box.
    const send = {
      replyInput: () => this.sendReply(),
      noteInput: () => this.sendNote(),
      answerInput: () => this.answer(),
      draftEditor: () => this.approve(),
      rejectReview: () => this.reject(),
      suggestion: () => this.sendSuggestion(),
    };
    for (const [key, fn] of Object.entries(send)) {
      e[key].addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
          ev.preventDefault();
          fn();
        }
      });
    }
    // Typing frames reach the customer too: only what the customer will
    // read counts, never an internal note.
    for (const key of ['replyInput', 'suggestion']) {
      e[key].addEventListener('input', () => this.typing());
    }
  }

  // ---- opening -----------------------------------------------------------

  /** Opens a thread (and the item to show in the details pane, if any). */
  async open(threadId, itemId) {
    const e = this.els;
    if (threadId === this.threadId) {
      const item = (itemId && this.queue.get(itemId)) || this.item || this.queue.itemsForThread(threadId)[0];
      this.selectItem(item || null);
      return;
    }
    this.close(true);
    const token = ++this.loadToken;
    this.threadId = threadId;
    this.thread = this.queue.thread(threadId);
    show(e.threadView, true);
    show(e.threadEmpty, false);
    show(e.details, true);
    show(e.detailsEmpty, false);
    show(e.threadLoading, true);
    this.renderHeader();
    this.selectItem((itemId && this.queue.get(itemId)) || this.queue.itemsForThread(threadId)[0] || null);
    try {
      const [thread] = await Promise.all([
        api('GET', `/v1/threads/${encodeURIComponent(threadId)}`),
        this.loadItems(threadId, itemId, token),
      ]);
      if (token !== this.loadToken) return;
      this.thread = thread;
      this.renderHeader();
      await this.loadHistory(token, 0);
      if (token !== this.loadToken) return;
      this.live.setCursor(`thread:${threadId}`, this.maxSeq);
      this.live.subscribe(`thread:${threadId}`, this.maxSeq);
    } catch (err) {
      if (token !== this.loadToken) return;
      this.toast(describeError(err, 'Opening the conversation'), 'error');
      if (err.status === 404) setText(e.threadTitle, 'Conversation not found');
    } finally {
      if (token === this.loadToken) show(e.threadLoading, false);
    }
  }

  /** The thread's pending items, straight from the server (the queue may not hold them yet). */
  async loadItems(threadId, itemId, token) {
    try {
      const page = await api('GET', `/v1/inbox?thread_id=${encodeURIComponent(threadId)}&limit=200`);
      if (token !== this.loadToken) return;
      for (const item of page.items) this.queue.upsert(item);
      if (!this.item) {
        const want = page.items.find((i) => i.id === itemId) || this.queue.itemsForThread(threadId)[0];
        if (want) this.selectItem(want);
      }
      this.renderOtherItems();
    } catch (err) {
      if (err.status !== 404) this.toast(describeError(err, 'Loading the items'), 'error');
    }
  }

  /** Pages the history after `after` until the end. */
  async loadHistory(token, after) {
    let cursor = after;
    for (;;) {
      const page = await api('GET', `/v1/threads/${encodeURIComponent(this.threadId)}/messages?after_seq=${cursor}&limit=500`);
      if (token !== this.loadToken) return;
      this.addMessages(page.messages);
      if (!page.has_more || page.next_after_seq <= cursor) break;
      cursor = page.next_after_seq;
    }
  }

  close(keepPanes = false) {
    const e = this.els;
    if (this.threadId) this.live.unsubscribe(`thread:${this.threadId}`);
    this.loadToken++;
    this.threadId = null;
    this.thread = null;
    this.item = null;
    this.bySeq.clear();
    this.byId.clear();
    this.maxSeq = 0;
    this.streams.clear();
    this.typists.clear();
    this.viewers = [];
    e.threadMessages.replaceChildren();
    e.streaming.replaceChildren();
    e.replyInput.value = '';
    e.noteInput.value = '';
    this.clearSuggestion();
    this.renderTyping();
    this.renderViewers();
    if (!keepPanes) {
      show(e.threadView, false);
      show(e.threadEmpty, true);
      show(e.details, false);
      show(e.detailsEmpty, true);
      if (this.onClosed) this.onClosed();
    }
  }

  // ---- messages ----------------------------------------------------------

  nearBottom() {
    const s = this.els.threadScroll;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  scrollToBottom() {
    const s = this.els.threadScroll;
    s.scrollTop = s.scrollHeight;
  }

  addMessages(messages) {
    if (!messages.length) return;
    const stick = this.nearBottom() || this.bySeq.size === 0;
    const frag = document.createDocumentFragment();
    let inOrder = true;
    for (const m of messages) {
      if (m.thread_id !== this.threadId) continue;
      const existing = this.bySeq.get(m.seq);
      const el = renderMessage(m, this.me, this.thread);
      this.byId.set(m.id, m);
      this.dropStream(m.id);
      if (existing) {
        existing.replaceWith(el);
        this.bySeq.set(m.seq, el);
        continue;
      }
      this.bySeq.set(m.seq, el);
      if (m.seq > this.maxSeq && inOrder) {
        frag.append(el);
        this.maxSeq = m.seq;
      } else {
        inOrder = false;
        this.insertOrdered(el, m.seq);
      }
    }
    this.els.threadMessages.append(frag);
    if (stick) this.scrollToBottom();
  }

  insertOrdered(el, seq) {
    const list = this.els.threadMessages;
    let before = null;
    for (const child of list.children) {
      if (Number(child.dataset.seq) > seq) {
        before = child;
        break;
      }
    }
    list.insertBefore(el, before);
    if (seq > this.maxSeq) this.maxSeq = seq;
  }

  /** A message's status changed locally (an approval or a rejection). */
  patchMessage(id, change) {
    const m = this.byId.get(id);
    if (!m) return;
    this.addMessages([{ ...m, ...change }]);
  }

  onDelta(frame) {
    const id = frame.message_id;
    if (this.byId.has(id)) return;
    let el = this.streams.get(id);
    if (frame.reset) {
      if (el) this.dropStream(id);
      if (!frame.text) return;
      el = null;
    }
    const stick = this.nearBottom();
    if (!el) {
      el = document.createElement('div');
      el.className = 'msg msg-ai msg-streaming';
      el.setAttribute('data-testid', 'thread-streaming');
      el.dataset.streaming = 'true';
      el.dataset.messageId = id;
      const head = document.createElement('div');
      head.className = 'msg-head';
      head.textContent = 'AI is writing…';
      const text = document.createElement('div');
      text.className = 'msg-text';
      el.append(head, text);
      this.streams.set(id, el);
      this.els.streaming.append(el);
    }
    el.lastChild.textContent += frame.text;
    if (stick) this.scrollToBottom();
  }

  dropStream(id) {
    const el = this.streams.get(id);
    if (el) {
      el.remove();
      this.streams.delete(id);
    }
  }

  // ---- live frames -------------------------------------------------------

  onFrame(frame) {
    if (!this.threadId) return;
    switch (frame.type) {
      case 'message':
        if (frame.thread_id === this.threadId) {
          this.addMessages([frame.message]);
          const who = frame.message.agent_name;
          if (who) this.typists.delete(who);
          if (frame.message.role === 'user') this.typists.delete('\u0000customer');
          this.renderTyping();
        }
        break;
      case 'delta':
        if (frame.thread_id === this.threadId) this.onDelta(frame);
        break;
      case 'typing':
        if (frame.thread_id === this.threadId) this.onTyping(frame.who || {});
        break;
      case 'presence':
        if (frame.thread_id === this.threadId) {
          this.viewers = [...new Set((frame.agents || []).filter((n) => n !== this.me))];
          this.renderViewers();
        }
        break;
      case 'thread':
        if (frame.thread && frame.thread.id === this.threadId) {
          this.thread = frame.thread;
          this.renderHeader();
        }
        break;
      case 'subscribed':
        if (frame.topic === `thread:${this.threadId}` && frame.recovered === false && frame.last_seq > this.maxSeq) {
          // Too far behind for a replay: page what was missed.
          this.loadHistory(this.loadToken, this.maxSeq).catch((err) => this.toast(describeError(err, 'Catching up'), 'error'));
        }
        break;
      default:
    }
  }

  /** An item of the open thread changed (inbox frame or our own action). */
  onItem(item) {
    if (!this.threadId || item.thread_id !== this.threadId) return;
    if (item.thread) {
      this.thread = item.thread;
      this.renderHeader();
    }
    if (this.item && this.item.id === item.id) {
      this.item = { ...this.item, ...item };
      this.renderItem();
      if (!PENDING.has(item.status) && item.message_id) {
        if (item.resolution === 'approved') this.patchMessage(item.message_id, { status: 'approved' });
        if (item.resolution === 'rejected') this.patchMessage(item.message_id, { status: 'rejected' });
      }
    } else if (!this.item && PENDING.has(item.status)) {
      this.selectItem(this.queue.get(item.id) || item);
    }
    this.renderOtherItems();
  }

  onTyping(who) {
    let name;
    if (who.kind === 'customer') name = '\u0000customer';
    else if (who.kind === 'human') {
      if (who.name === this.me) return;
      name = who.name || 'An agent';
    } else name = who.name || 'Admin';
    this.typists.set(name, Date.now() + TYPING_SHOW_MS);
    this.renderTyping();
  }

  renderTyping() {
    const now = Date.now();
    const names = [];
    for (const [name, until] of this.typists) {
      if (until < now) this.typists.delete(name);
      else names.push(name === '\u0000customer' ? (this.thread && this.thread.customer_id ? `${this.thread.customer_id} (customer)` : 'The customer') : name);
    }
    const el = this.els.typingIndicator;
    if (!names.length) {
      show(el, false);
      setText(el, '');
      return;
    }
    setText(el, names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`);
    show(el, true);
  }

  renderViewers() {
    const el = this.els.viewers;
    if (!this.viewers.length) {
      show(el, false);
      el.replaceChildren();
      return;
    }
    const chips = this.viewers.map((n) => {
      const c = document.createElement('span');
      c.className = 'viewer';
      c.textContent = n;
      c.title = `${n} is viewing this conversation`;
      return c;
    });
    const label = document.createElement('span');
    label.className = 'viewers-label';
    label.textContent = 'Also viewing:';
    el.replaceChildren(label, ...chips);
    show(el, true);
  }

  /** Tells the thread an agent types: at most once every 1.5 s. */
  typing() {
    if (!this.threadId) return;
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_SEND_MS) return;
    if (this.live.send({ type: 'typing', thread_id: this.threadId })) this.lastTypingSent = now;
  }

  // ---- header and details ------------------------------------------------

  renderHeader() {
    const e = this.els;
    const t = this.thread;
    setText(e.threadTitle, threadTitle(t, this.threadId));
    if (!t) {
      setText(e.threadSub, '');
      setText(e.assignText, '');
      show(e.takeOver, false);
      show(e.handBack, false);
      return;
    }
    const prio = t.metadata && t.metadata.priority;
    const bits = [`Customer ${t.customer_id}`, t.status.replace(/_/g, ' ')];
    if (prio) bits.push(`${prio} priority`);
    bits.push(`opened ${ago(t.created_at)}`);
    setText(e.threadSub, bits.join(' · '));
    let who;
    if (t.assigned_to === 'human') who = t.assignee ? (t.assignee === this.me ? 'You answer this conversation.' : `${t.assignee} answers this conversation.`) : 'Humans answer this conversation (unassigned).';
    else if (t.assigned_to === 'ai') who = 'The AI answers this conversation.';
    else who = 'The router decides who answers next.';
    setText(e.assignText, who);
    show(e.takeOver, t.assigned_to !== 'human' || t.assignee !== this.me);
    setText(e.takeOver, t.assigned_to === 'human' ? 'Assign to me' : 'Take over from the AI');
    show(e.handBack, t.assigned_to === 'human');
    e.threadView.dataset.assignedTo = t.assigned_to;
  }

  selectItem(item) {
    const e = this.els;
    const changed = !this.item || !item || this.item.id !== item.id;
    this.item = item ? { ...item } : null;
    this.queue.setActive(item ? item.id : null);
    if (changed) {
      e.answerInput.value = '';
      e.rejectReview.value = '';
      e.draftEditor.value = item && item.body ? item.body : '';
      show(e.draftRevert, false);
    }
    this.renderItem();
    this.renderOtherItems();
  }

  renderItem() {
    const e = this.els;
    const item = this.item;
    show(e.itemCard, !!item && PENDING.has(item.status));
    show(e.resolvedCard, !!item && !PENDING.has(item.status));
    if (!item) return;
    if (!PENDING.has(item.status)) {
      const how = item.resolution || item.status;
      const by = item.resolved_by ? ` by ${item.resolved_by === this.me ? 'you' : item.resolved_by}` : '';
      setText(e.resolvedText, `✓ This ${KIND_LABEL[item.kind] ? KIND_LABEL[item.kind].toLowerCase() : 'item'} is ${how}${by}.${item.review ? ` Review: ${item.review}` : ''}`);
      return;
    }
    e.itemKind.className = `badge kind kind-${item.kind}`;
    setText(e.itemKind, KIND_LABEL[item.kind] || item.kind);
    setText(e.itemStatus, item.status === 'claimed' ? 'Claimed' : 'Open');
    const mine = item.claimed_by === this.me;
    const other = item.claimed_by && !mine;
    setText(e.itemClaimed, item.claimed_by ? (mine ? 'By you' : `By ${item.claimed_by}`) : 'Nobody yet');
    setText(e.itemPriority, item.priority || 'normal');
    setText(e.itemTeam, item.team || '');
    show(e.itemTeam, !!item.team);
    show(e.itemTeamLabel, !!item.team);
    const reasons = [];
    if (item.reason) reasons.push(item.reason);
    if (item.expiries) reasons.push(`Deadline passed ${item.expiries}×`);
    show(e.itemReason, reasons.length > 0);
    setText(e.itemReason, reasons.length ? `Why: ${reasons.join(' · ')}` : '');
    show(e.itemSuggestion, !!item.suggestion && item.kind !== 'approval');
    setText(e.itemSuggestionText, item.suggestion || '');
    show(e.claim, item.status === 'open');
    show(e.release, mine);
    show(e.itemNote, !!other);
    setText(e.itemNote, other ? `${item.claimed_by} is working on this item; only they (or an admin) can resolve it.` : '');
    show(e.questionBox, item.kind === 'question');
    setText(e.questionText, item.body || '');
    show(e.approvalBox, item.kind === 'approval');
    show(e.handoffHint, item.kind === 'handoff' || item.kind === 'escalation');
    for (const b of [e.answerSubmit, e.approve, e.reject]) b.disabled = !!other || b.classList.contains('is-busy');
    this.tick();
  }

  renderOtherItems() {
    const e = this.els;
    if (!this.threadId) return;
    const others = this.queue.itemsForThread(this.threadId).filter((i) => !this.item || i.id !== this.item.id);
    show(e.otherItems, others.length > 0);
    e.otherItemsList.replaceChildren(...others.map((i) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'btn btn-ghost btn-sm';
      b.dataset.itemId = i.id;
      b.textContent = `${KIND_LABEL[i.kind] || i.kind}${i.claimed_by ? ` · ${i.claimed_by}` : ''}`;
      li.append(b);
      return li;
    }));
  }

  tick(now = Date.now()) {
    if (this.item && this.item.due_at && PENDING.has(this.item.status)) {
      const d = dueText(Date.parse(this.item.due_at), now);
      setText(this.els.itemDue, d.text);
      this.els.itemDue.classList.toggle('is-overdue', d.overdue);
      this.els.itemDue.classList.toggle('is-soon', d.soon);
    } else setText(this.els.itemDue, this.item && PENDING.has(this.item.status) ? 'No deadline' : '');
    if (this.typists.size) this.renderTyping();
  }

  // ---- actions -----------------------------------------------------------

  /** Runs an action with its button busy; toasts the error. */
  async run(button, label, fn) {
    if (button && button.classList.contains('is-busy')) return null;
    if (button) {
      button.classList.add('is-busy');
      button.disabled = true;
      button.setAttribute('aria-busy', 'true');
    }
    try {
      return await fn();
    } catch (err) {
      this.toast(describeError(err, label), 'error');
      if (err.code === 'item_closed' || err.code === 'already_claimed' || err.code === 'claimed_by_other') this.refreshItem();
      return null;
    } finally {
      if (button) {
        button.classList.remove('is-busy');
        button.disabled = false;
        button.removeAttribute('aria-busy');
        if (this.item) this.renderItem();
      }
    }
  }

  async refreshItem() {
    if (!this.item) return;
    try {
      const item = await api('GET', `/v1/inbox/${this.item.id}`);
      this.applyItem(item);
    } catch {
      /* the toast already said it */
    }
  }

  /** An item answer from the server: into the queue and the pane. */
  applyItem(item) {
    this.queue.upsert(item);
    this.onItem(item);
  }

  claim() {
    const item = this.item;
    if (!item) return;
    return this.run(this.els.claim, 'Claim', async () => {
      this.applyItem(await api('POST', `/v1/inbox/${item.id}/claim`));
      this.toast('Claimed: the item is yours.');
    });
  }

  release() {
    const item = this.item;
    if (!item) return;
    return this.run(this.els.release, 'Release', async () => {
      this.applyItem(await api('POST', `/v1/inbox/${item.id}/release`));
      this.toast('Released back to the queue.');
    });
  }

  answer() {
    const item = this.item;
    const text = this.els.answerInput.value;
    if (!item || item.kind !== 'question') return;
    if (!text.trim()) return this.needText(this.els.answerInput, 'Write an answer first.');
    return this.run(this.els.answerSubmit, 'Answer', async () => {
      const res = await api('POST', `/v1/inbox/${item.id}/answer`, { text });
      this.els.answerInput.value = '';
      this.resolved(res, 'Answer sent: the AI writes the reply.');
    });
  }

  approve() {
    const item = this.item;
    if (!item || item.kind !== 'approval') return;
    const text = this.els.draftEditor.value;
    if (!text.trim()) return this.needText(this.els.draftEditor, 'The draft is empty.');
    const body = text !== (item.body || '') ? { text } : {};
    return this.run(this.els.approve, 'Approve', async () => {
      const res = await api('POST', `/v1/inbox/${item.id}/approve`, body);
      if (item.message_id) this.patchMessage(item.message_id, { status: 'approved' });
      this.resolved(res, body.text ? 'Edited draft approved and sent.' : 'Draft approved and sent.');
    });
  }

  reject() {
    const item = this.item;
    if (!item || item.kind !== 'approval') return;
    const review = this.els.rejectReview.value;
    if (!review.trim()) return this.needText(this.els.rejectReview, 'Say why the draft is rejected.');
    return this.run(this.els.reject, 'Reject', async () => {
      const res = await api('POST', `/v1/inbox/${item.id}/reject`, { review });
      if (item.message_id) this.patchMessage(item.message_id, { status: 'rejected' });
      this.els.rejectReview.value = '';
      this.resolved(res, 'Draft rejected: the thread is with humans now.');
    });
  }

  resolved(res, message) {
    if (res && res.message) this.addMessages([res.message]);
    if (res && res.item) this.applyItem(res.item);
    this.toast(message);
  }

  assign(to) {
    if (!this.threadId) return;
    const id = this.threadId;
    const button = to === 'human' ? this.els.takeOver : this.els.handBack;
    const reason = to === 'human' ? `${this.me} took over from the inbox` : `${this.me} handed the conversation back to the AI`;
    return this.run(button, to === 'human' ? 'Take over' : 'Hand back', async () => {
      const thread = await api('PUT', `/v1/threads/${encodeURIComponent(id)}/assignment`, { assigned_to: to, reason });
      if (this.threadId === id) {
        this.thread = thread;
        this.renderHeader();
      }
      this.queue.updateThread(thread);
      this.toast(to === 'human' ? 'You took over: the AI stops here.' : 'Handed back: the AI answers the next message.');
    });
  }

  sendReply() {
    const input = this.els.replyInput;
    const text = input.value;
    if (!this.threadId) return;
    if (!text.trim()) return this.needText(input, 'Write a reply first.');
    const id = this.threadId;
    return this.run(this.els.replySend, 'Sending the reply', async () => {
      const m = await api('POST', `/v1/threads/${encodeURIComponent(id)}/messages`, { content: text });
      if (input.value === text) input.value = '';
      if (this.threadId === id) {
        this.addMessages([m]);
        this.scrollToBottom();
      }
    });
  }

  sendNote() {
    const input = this.els.noteInput;
    const text = input.value;
    if (!this.threadId) return;
    if (!text.trim()) return this.needText(input, 'Write a note first.');
    const id = this.threadId;
    return this.run(this.els.noteSend, 'Adding the note', async () => {
      const m = await api('POST', `/v1/threads/${encodeURIComponent(id)}/messages`, { content: text, visibility: 'internal' });
      if (input.value === text) input.value = '';
      if (this.threadId === id) {
        this.addMessages([m]);
        this.scrollToBottom();
      }
      this.toast('Note added (only your team sees it).');
    });
  }

  suggest() {
    if (!this.threadId) return;
    const id = this.threadId;
    const button = this.els.suggest;
    const label = button.textContent;
    button.textContent = 'Asking the AI…';
    return this.run(button, 'Suggestion', async () => {
      try {
        const m = await api('POST', `/v1/threads/${encodeURIComponent(id)}/suggestions`, {});
        if (this.threadId !== id) return;
        this.addMessages([m]);
        this.suggestionId = m.id;
        this.suggestionText = contentText(m.content);
        this.els.suggestion.value = this.suggestionText;
        show(this.els.suggestionBox, true);
        this.els.suggestion.focus();
      } finally {
        button.textContent = label;
      }
    });
  }

  clearSuggestion() {
    this.suggestionId = null;
    this.suggestionText = '';
    this.els.suggestion.value = '';
    show(this.els.suggestionBox, false);
  }

  sendSuggestion() {
    if (!this.threadId || !this.suggestionId) return;
    const text = this.els.suggestion.value;
    if (!text.trim()) return this.needText(this.els.suggestion, 'The suggestion is empty.');
    const id = this.threadId;
    const body = text !== this.suggestionText ? { text } : {};
    return this.run(this.els.suggestionSend, 'Sending the suggestion', async () => {
      const m = await api('POST', `/v1/threads/${encodeURIComponent(id)}/suggestions/${this.suggestionId}/send`, body);
      if (this.threadId === id) {
        this.addMessages([m]);
        this.clearSuggestion();
        this.scrollToBottom();
      }
    });
  }

  needText(input, message) {
    this.toast(message, 'error');
    input.focus();
  }
}

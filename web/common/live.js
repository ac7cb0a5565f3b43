// Live: one WebSocket to the Tandem hub (docs/websocket.md), shared by the
// customer chat and the agent inbox.
//
//   const live = new Live({ getTicket, onFrame, onStatus });
//   live.start();
//   live.subscribe('thread:' + id, afterSeq);
//
// getTicket: async () => ticket string (POST /v1/ws/tickets); a fresh one for
//   every connection attempt, since a ticket is single use.
// onFrame(frame): every server frame except `pong`. A `subscribed` frame with
//   `recovered: false` means the gap was too large to replay: page the REST
//   history up to `last_seq` and call setCursor().
// onStatus(state): 'connecting' (never connected yet) | 'online' |
//   'reconnecting' | 'offline' (the browser says it has no network, or close()).
//
// Reconnects by itself with jittered exponential backoff (0.5 s .. 10 s), at
// once when the browser comes back online, and resubscribes every topic; a
// thread topic resumes with `after_seq` = the highest seq seen in its
// `message` frames (or given to subscribe()/setCursor()), so nothing is lost.
// A connection that stays silent is found dead by our own pings (every 15 s;
// no frame within 35 s) and replaced. A topic refused with an `error` frame
// (`not_found`/`forbidden`, naming the topic) is forgotten (onFrame still sees it).

const PING_EVERY = 15000;
const DEAD_AFTER = 35000;
const TICK = 5000;
const MIN_DELAY = 500;
const MAX_DELAY = 10000;

export class Live {
  constructor({ getTicket, onFrame, onStatus } = {}) {
    this.getTicket = getTicket;
    this.onFrame = onFrame || (() => {});
    this.onStatus = onStatus || (() => {});
    this.subs = new Set(); // subscribed topics
    this.cursors = new Map(); // thread topic -> highest seq known
    this.ws = null;
    this.state = null;
    this.started = false;
    this.closed = false;
    this.everOpen = false;
    this.attempt = 0;
    this.timer = 0; // reconnect timer
    this.ticker = 0; // heartbeat interval
    this.gen = 0; // invalidates stale connection attempts
    this.heard = 0;
    this.pinged = 0;
    this.lastTick = 0;
    this.openedAt = 0;
    this._online = () => this._wake(true);
    this._offline = () => {
      if (!this.started || this.closed) return;
      this._drop();
      this._status('offline');
      this._schedule(MAX_DELAY); // in case the 'online' event never comes
    };
    this._visible = () => {
      if (document.visibilityState !== 'visible') return;
      if (this._isOpen()) this._ping();
      else this._wake(false);
    };
  }

  start() {
    if (this.started && !this.closed) return;
    this.started = true;
    this.closed = false;
    if (typeof window !== 'undefined') {
      window.addEventListener('online', this._online);
      window.addEventListener('offline', this._offline);
      document.addEventListener('visibilitychange', this._visible);
    }
    this._connect();
  }

  subscribe(topic, afterSeq) {
    if (afterSeq != null) this.setCursor(topic, afterSeq);
    this.subs.add(topic);
    if (this._isOpen()) this._sendSubscribe(topic);
  }

  unsubscribe(topic) {
    if (!this.subs.delete(topic)) return;
    this.send({ type: 'unsubscribe', topic });
  }

  // Raises a thread topic's resume cursor (never lowers it).
  setCursor(topic, seq) {
    if (!Number.isInteger(seq) || seq < 0) return;
    const cursor = this.cursors.get(topic);
    if (cursor == null || seq > cursor) this.cursors.set(topic, seq);
  }

  // The resume cursor of a topic, or null.
  cursor(topic) {
    const c = this.cursors.get(topic);
    return c == null ? null : c;
  }

  // Drops the current socket and connects again now (e.g. after the page
  // changed its credentials).
  reconnect() {
    if (!this.started || this.closed) return;
    this._drop();
    this.attempt = 0;
    this._connect();
  }

  send(frame) {
    if (!this._isOpen()) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  close() {
    this.closed = true;
    this.started = false;
    this._drop();
    clearTimeout(this.timer);
    if (typeof window !== 'undefined') {
      window.removeEventListener('online', this._online);
      window.removeEventListener('offline', this._offline);
      document.removeEventListener('visibilitychange', this._visible);
    }
    this._status('offline');
  }

  get online() {
    return this.state === 'online';
  }

  // --- internals ---

  _isOpen() {
    return !!this.ws && this.ws.readyState === 1;
  }

  _status(state) {
    if (state === this.state) return;
    this.state = state;
    try {
      this.onStatus(state);
    } catch (e) {
      console.error(e);
    }
  }

  _wake(resetBackoff) {
    if (!this.started || this.closed) return;
    if (resetBackoff) this.attempt = 0;
    if (this.ws && this.ws.readyState <= 1) {
      // Still (thinking it is) connected: make it prove it.
      if (this._isOpen()) this._ping();
      return;
    }
    clearTimeout(this.timer);
    this._connect();
  }

  async _connect() {
    clearTimeout(this.timer);
    if (this.closed || !this.started) return;
    const gen = ++this.gen;
    if (typeof navigator !== 'undefined' && navigator.onLine === false) {
      this._status('offline');
      this._schedule(MAX_DELAY);
      return;
    }
    this._status(this.everOpen || this.attempt > 0 ? 'reconnecting' : 'connecting');
    let ticket;
    try {
      ticket = await this.getTicket();
    } catch (e) {
      if (gen !== this.gen || this.closed) return;
      this._retry();
      return;
    }
    if (gen !== this.gen || this.closed) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/v1/ws?ticket=${encodeURIComponent(ticket)}`);
    } catch {
      this._retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.everOpen = true;
      this.openedAt = this.heard = this.lastTick = Date.now();
      this.pinged = 0;
      this._status('online');
      for (const topic of this.subs) this._sendSubscribe(topic);
      clearInterval(this.ticker);
      this.ticker = setInterval(() => this._tick(), TICK);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.heard = Date.now();
      this.attempt = 0;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== 'object') return;
      if (frame.type === 'pong') return;
      if (frame.type === 'message' && frame.thread_id && Number.isInteger(frame.seq)) {
        const topic = 'thread:' + frame.thread_id;
        this.setCursor(topic, frame.seq);
      } else if (frame.type === 'error' && frame.topic && (frame.code === 'not_found' || frame.code === 'forbidden')) {
        // Refused for good: do not ask again on every reconnect.
        this.subs.delete(frame.topic);
      }
      try {
        this.onFrame(frame);
      } catch (e) {
        console.error(e);
      }
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this._onClose(ev.code);
    };
    ws.onerror = () => {}; // onclose follows
  }

  _sendSubscribe(topic) {
    const frame = { type: 'subscribe', topic };
    const cursor = this.cursors.get(topic);
    if (topic.startsWith('thread:') && cursor != null) frame.after_seq = cursor;
    this.send(frame);
  }

  _ping() {
    if (this.send({ type: 'ping' })) this.pinged = Date.now();
  }

  _tick() {
    if (!this._isOpen()) return;
    const now = Date.now();
    // A tick much later than due means the timers were throttled (a hidden
    // tab, a sleeping phone): silence then proves nothing; just ping.
    const late = now - this.lastTick > TICK * 3;
    this.lastTick = now;
    if (!late && now - this.heard > DEAD_AFTER && this.pinged > this.heard) {
      this._dead();
      return;
    }
    if (late && this.pinged > this.heard && now - this.pinged > DEAD_AFTER) this.pinged = 0;
    if (now - Math.max(this.heard, this.pinged) >= PING_EVERY) this._ping();
  }

  _dead() {
    this._drop();
    this._onClose(4010);
  }

  // Forget the current socket without waiting for a closing handshake.
  _drop() {
    clearInterval(this.ticker);
    const ws = this.ws;
    this.ws = null;
    this.gen++;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      /* already closing */
    }
  }

  _onClose(code) {
    clearInterval(this.ticker);
    this.ws = null;
    if (this.closed || !this.started) return;
    // A connection that lived a while starts the backoff over.
    if (this.openedAt && Date.now() - this.openedAt > 10000) this.attempt = 0;
    this.openedAt = 0;
    if (code === 1001 || code === 4008) {
      // Server going away / we were too slow: come back soon (jittered so a
      // whole fleet of clients does not arrive at once) and resume.
      this.attempt = 1;
    } else if (code === 1008) {
      // Policy: we flooded. Slow down.
      this.attempt = Math.max(this.attempt, 5);
    }
    this._retry();
  }

  _retry() {
    if (this.closed || !this.started) return;
    this._status(typeof navigator !== 'undefined' && navigator.onLine === false ? 'offline' : 'reconnecting');
    const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    // "Equal jitter": half fixed, half random.
    this._schedule(base / 2 + Math.random() * (base / 2));
  }

  _schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), Math.max(MIN_DELAY, Math.min(ms, MAX_DELAY)));
  }
}

'use strict';
// A bare Node.js WebSocket broadcast server that stores nothing: the baseline
// the `ws-fanout` benchmark compares Tandem's hub with (see README.md).
//
// It speaks the subset of Tandem's API the benchmark uses, with the same
// frame shapes:
//
//   POST /v1/threads                 -> 201 {"id": <uuid>, ...}
//   POST /v1/threads/{id}/messages   -> next seq of the thread (in memory),
//                                       broadcast to its subscribers, 201 message
//   GET  /v1/ws                      -> WebSocket; `subscribe`, `unsubscribe`, `ping`
//
// Nothing is persisted and no token is checked: the Authorization header is
// accepted as it comes. Listens on 127.0.0.1:$PORT (argument 1, or the PORT
// environment variable, or 8090).

const http = require('node:http');
const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 8090);
const host = process.env.HOST || '127.0.0.1';

/** thread id -> { id, customerId, lastSeq, subscribers: Set<WebSocket> } */
const threads = new Map();

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function error(res, status, code, message) {
  send(res, status, { error: { code, message } });
}

function readJson(req, res, then) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let body;
    try {
      body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
    } catch (e) {
      error(res, 400, 'malformed_json', String(e.message));
      return;
    }
    if (body === null || typeof body !== 'object') {
      error(res, 400, 'malformed_json', 'expected a JSON object');
      return;
    }
    then(body);
  });
}

function createThread(req, res) {
  readJson(req, res, (body) => {
    const now = new Date().toISOString();
    const thread = {
      id: crypto.randomUUID(),
      customerId: String(body.customer_id ?? ''),
      lastSeq: 0,
      subscribers: new Set(),
    };
    threads.set(thread.id, thread);
    send(res, 201, {
      id: thread.id,
      customer_id: thread.customerId,
      title: body.title ?? null,
      status: 'open',
      assigned_to: 'human',
      assignee: null,
      metadata: {},
      last_seq: 0,
      created_at: now,
      updated_at: now,
    });
  });
}

function postMessage(req, res, threadId) {
  readJson(req, res, (body) => {
    const thread = threads.get(threadId);
    if (!thread) {
      error(res, 404, 'not_found', 'no such thread');
      return;
    }
    thread.lastSeq += 1;
    const seq = thread.lastSeq;
    // The same fields as Tandem's stored message (tandem-store model/message.rs).
    const message = {
      id: crypto.randomUUID(),
      thread_id: thread.id,
      seq,
      role: 'user',
      agent_name: null,
      author: { kind: 'customer', id: thread.customerId },
      content: body.content,
      visibility: 'public',
      status: 'published',
      metadata: {},
      reply_to: null,
      created_at: new Date().toISOString(),
    };
    // Encoded once, sent to every subscriber as a text frame.
    const frame = Buffer.from(
      JSON.stringify({ type: 'message', thread_id: thread.id, seq, message }),
    );
    for (const ws of thread.subscribers) {
      ws.send(frame, { binary: false });
    }
    send(res, 201, message);
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (req.method === 'POST' && path === '/v1/threads') {
    createThread(req, res);
    return;
  }
  const m = /^\/v1\/threads\/([^/]+)\/messages$/.exec(path);
  if (req.method === 'POST' && m) {
    postMessage(req, res, m[1]);
    return;
  }
  if (req.method === 'GET' && path === '/healthz') {
    send(res, 200, { status: 'ok' });
    return;
  }
  error(res, 404, 'not_found', 'no such route');
});
server.keepAliveTimeout = 75_000;

// Tandem does not compress frames either.
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  if (req.url.split('?', 1)[0] !== '/v1/ws') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

wss.on('connection', (ws) => {
  /** Threads this socket is subscribed to. */
  const subscribed = new Set();
  const reply = (frame) => ws.send(JSON.stringify(frame));

  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      reply({ type: 'error', code: 'binary_not_supported', message: 'text frames only' });
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data.toString('utf8'));
    } catch (e) {
      reply({ type: 'error', code: 'malformed_frame', message: String(e.message) });
      return;
    }
    const topic = typeof frame.topic === 'string' ? frame.topic : '';
    const thread = topic.startsWith('thread:') ? threads.get(topic.slice(7)) : undefined;
    switch (frame.type) {
      case 'subscribe':
        if (!thread) {
          reply({ type: 'error', code: 'not_found', message: 'no such thread', topic });
          return;
        }
        thread.subscribers.add(ws);
        subscribed.add(thread);
        reply({ type: 'subscribed', topic, last_seq: thread.lastSeq, recovered: true });
        return;
      case 'unsubscribe':
        if (thread) {
          thread.subscribers.delete(ws);
          subscribed.delete(thread);
        }
        reply({ type: 'unsubscribed', topic });
        return;
      case 'ping':
        reply(frame.nonce === undefined ? { type: 'pong' } : { type: 'pong', nonce: frame.nonce });
        return;
      default:
        reply({ type: 'error', code: 'unknown_type', message: 'unknown frame type' });
    }
  });

  ws.on('close', () => {
    for (const thread of subscribed) {
      thread.subscribers.delete(ws);
    }
    subscribed.clear();
  });
  ws.on('error', () => {});
});

server.listen(port, host, () => {
  console.log(`node-ws-baseline listening on ${host}:${server.address().port}`);
});

function stop() {
  for (const ws of wss.clients) {
    ws.close(1001, 'server shutting down');
  }
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

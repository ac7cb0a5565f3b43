// Rendering one thread message: who wrote it (AI, human, customer, system,
// tool), when, its visibility and approval status, tool plumbing of
// ask_human, and the routing decision behind it.

import { h, shortTime, fullTime, initials } from './util.js';

/** customer|ai|human|system|tool, as the DOM contract names authors. */
export function authorKind(m) {
  if (m.role === 'tool') return 'tool';
  const kind = m.author && m.author.kind;
  if (kind === 'customer' || kind === 'ai' || kind === 'human' || kind === 'system') return kind;
  if (m.role === 'user') return 'customer';
  if (m.role === 'system') return 'system';
  return m.metadata && m.metadata.provider === 'human' ? 'human' : 'ai';
}

function authorName(m, kind, me, thread) {
  switch (kind) {
    case 'customer':
      return (m.author && m.author.id) || (thread && thread.customer_id) || 'Customer';
    case 'ai':
      return m.agent_name || (m.author && m.author.id) || 'AI';
    case 'human':
      return m.agent_name === me ? `${me} (you)` : m.agent_name || (m.author && m.author.id) || 'Agent';
    case 'tool':
      return m.agent_name ? (m.agent_name === me ? `${me} (you)` : m.agent_name) : 'Tandem';
    default:
      return m.agent_name && m.agent_name !== 'system' ? m.agent_name : 'System';
  }
}

const ROLE_LABEL = { customer: 'Customer', ai: 'AI', human: 'Agent', system: 'System', tool: 'Tool' };

function stringify(value) {
  if (value == null) return '';
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** The readable lines of a message's content, tool calls and results included. */
export function messageLines(m) {
  if (typeof m.content === 'string') return [m.content];
  const lines = [];
  for (const part of m.content || []) {
    if (part.type === 'text') lines.push(part.text);
    else if (part.type === 'tool_call') {
      const args = part.arguments || {};
      if (part.name === 'ask_human') lines.push(`AI asked a human: ${args.question ?? stringify(args)}`);
      else if (part.name === 'escalate') {
        lines.push(`AI escalated to a human: ${args.reason ?? stringify(args)}`);
        if (args.suggested_reply) lines.push(`Suggested reply: ${args.suggested_reply}`);
      } else lines.push(`AI called ${part.name}: ${stringify(args)}`);
    } else if (part.type === 'tool_result') {
      const r = part.result;
      if (part.name === 'ask_human') {
        if (r && typeof r === 'object' && r.answer != null) lines.push(`Answer: ${r.answer}`);
        else lines.push(`Answer: none${r && r.note ? ` (${r.note})` : ''}`);
      } else lines.push(`${part.is_error ? 'Tool error' : 'Result'} (${part.name}): ${stringify(r)}`);
    }
  }
  return lines;
}

/** Routing lines of a message: the deciding strategy, then every verdict. */
export function routingLines(meta) {
  const out = [];
  if (!meta || typeof meta !== 'object') return out;
  const r = meta.routing;
  if (r && typeof r === 'object') {
    out.push(`Routed by ${r.strategy || '?'}${r.responder ? ` → ${r.responder}` : ''}${r.reason ? `: ${r.reason}` : ''}`);
  }
  if (Array.isArray(meta.decisions)) {
    for (const d of meta.decisions) {
      if (r && d.strategy === r.strategy && d.reason === r.reason) continue;
      if (d.strategy === 'approval') out.push(`Held for approval${d.reason ? `: ${d.reason}` : ''}`);
      else out.push(`${d.strategy}${d.responder ? ` → ${d.responder}` : ' abstained'}${d.reason ? `: ${d.reason}` : ''}`);
    }
  }
  if (typeof meta.confidence === 'number') out.push(`Confidence ${Math.round(meta.confidence * 100)}%`);
  const desk = meta.desk;
  if (desk && typeof desk === 'object') {
    if (desk.deadline_passed) out.push('Deadline passed: the AI answers instead');
    if (desk.holding) out.push('Holding message: the deadline passed, a human will answer');
  }
  const approval = meta.approval;
  if (approval && typeof approval === 'object') {
    if (approval.deadline_passed) out.push('Published as written: the approval deadline passed');
    else if (approval.edited) out.push(`Edited before approval${approval.by ? ` by ${approval.by}` : ''}`);
  }
  return out;
}

/** Tags shown in a message's header. */
function tags(m, kind, me) {
  const out = [];
  const meta = m.metadata || {};
  const suggestion = meta.suggestion;
  if (m.status === 'pending_approval') out.push(['Draft · awaiting approval', 'tag-draft']);
  else if (m.status === 'rejected') out.push(['Rejected draft', 'tag-rejected']);
  else if (m.status === 'approved') out.push(['Approved draft', 'tag-approved']);
  if (suggestion && suggestion.requested_by) {
    out.push([`AI suggestion for ${suggestion.requested_by === me ? 'you' : suggestion.requested_by}`, 'tag-suggestion']);
  } else if (suggestion && suggestion.id) {
    out.push([suggestion.edited ? 'Sent from AI suggestion (edited)' : 'Sent from AI suggestion', 'tag-suggestion']);
  }
  if (m.visibility === 'internal' && m.status === 'published' && !(suggestion && suggestion.requested_by)) {
    if (kind === 'tool' || (Array.isArray(m.content) && m.content.some((p) => p.type !== 'text'))) {
      out.push(['Internal · AI tools', 'tag-internal']);
    } else out.push(['Internal note', 'tag-note']);
  }
  return out;
}

/** A `thread-message` element for a stored message. */
export function renderMessage(m, me, thread) {
  const kind = authorKind(m);
  const name = authorName(m, kind, me, thread);
  const lines = messageLines(m);
  const routes = routingLines(m.metadata);
  const isNote = m.visibility === 'internal';
  const classes = ['msg', `msg-${kind}`];
  if (isNote) classes.push('msg-internal');
  if (m.status !== 'published') classes.push(`msg-${m.status}`);
  if (kind === 'human' && m.agent_name === me) classes.push('msg-me');
  const body = h('div', { class: 'msg-text', testid: 'message-text' }, lines.join('\n'));
  const el = h(
    'li',
    { class: classes.join(' '), testid: 'thread-message' },
    h('div', { class: `avatar avatar-${kind}`, 'aria-hidden': 'true' }, kind === 'ai' ? 'AI' : initials(name.replace(/ \(you\)$/, ''))),
    h(
      'div',
      { class: 'msg-main' },
      h(
        'div',
        { class: 'msg-head' },
        h('span', { class: 'msg-author' }, name),
        h('span', { class: `role role-${kind}` }, ROLE_LABEL[kind]),
        tags(m, kind, me).map(([text, cls]) => h('span', { class: `tag ${cls}` }, text)),
        h('time', { class: 'msg-time', datetime: m.created_at, title: fullTime(m.created_at) }, shortTime(m.created_at)),
      ),
      body,
      routes.length
        ? h('div', { class: 'routing-reason', testid: 'routing-reason' },
          h('span', { class: 'routing-icon', 'aria-hidden': 'true' }, '↳'), routes.join(' · '))
        : null,
    ),
  );
  el.dataset.messageId = m.id;
  el.dataset.seq = String(m.seq);
  el.dataset.author = kind;
  el.dataset.visibility = m.visibility;
  el.dataset.status = m.status;
  return el;
}

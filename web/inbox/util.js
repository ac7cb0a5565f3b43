// Small DOM and time helpers shared by the inbox modules.

/** Creates an element: h('div', {class: 'x', testid: 'y', dataset: {...}}, children…). */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const key in props) {
      const value = props[key];
      if (value == null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'testid') node.setAttribute('data-testid', value);
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'hidden') node.hidden = !!value;
      else if (value === true) node.setAttribute(key, '');
      else node.setAttribute(key, value);
    }
  }
  for (const child of children) append(node, child);
  return node;
}

function append(node, child) {
  if (child == null || child === false) return;
  if (Array.isArray(child)) child.forEach((c) => append(node, c));
  else node.append(child instanceof Node ? child : String(child));
}

/** Sets textContent only when it changes (no needless layout work). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Sets or removes an attribute only when it changes. */
export function setAttr(node, name, value) {
  if (value == null || value === false) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value));
  }
}

export function show(node, visible) {
  if (node.hidden === !!visible) node.hidden = !visible;
}

const pad = (n) => String(n).padStart(2, '0');

/** "4:12", "1:02:03", "3d 4h" for a duration in seconds. */
export function clock(seconds) {
  const s = Math.floor(Math.abs(seconds));
  if (s >= 86400) return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const secs = s % 60;
  return hours ? `${hours}:${pad(minutes)}:${pad(secs)}` : `${minutes}:${pad(secs)}`;
}

/** The countdown text of a deadline (ms since epoch), and whether it passed. */
export function dueText(dueMs, now = Date.now()) {
  if (!dueMs) return { text: 'No deadline', overdue: false, soon: false };
  const left = (dueMs - now) / 1000;
  if (left >= 0) return { text: `due in ${clock(left)}`, overdue: false, soon: left < 300 };
  return { text: `overdue ${clock(-left)}`, overdue: true, soon: false };
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
});
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** A message time: "14:05" today, "Nov 21, 14:05" otherwise. */
export function shortTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
}

export function fullTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : fullFmt.format(d);
}

/** "3 min ago" style relative time. */
export function ago(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!t) return '';
  const s = Math.max(0, (now - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** The plain text of a message's content (text or parts). */
export function contentText(content) {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.filter((p) => p.type === 'text').map((p) => p.text).join('\n');
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/);
  return ((parts[0]?.[0] || '?') + (parts[1]?.[0] || '')).toUpperCase();
}

export const KIND_LABEL = {
  question: 'Question',
  approval: 'Approval',
  escalation: 'Escalation',
  handoff: 'Handoff',
};

export const PRIORITY_RANK = { urgent: 0, high: 1, normal: 2, low: 3 };

export const $ = (id) => document.getElementById(id);

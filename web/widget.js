/* Tandem chat widget: <script src="https://HOST/widget.js" data-widget-key="wk_…" async></script> */
(function () {
  'use strict';
  var s = document.currentScript;
  if (!s || window.__tandemWidget) return;
  var d = s.dataset, key = d.widgetKey;
  if (!key) { console.error('tandem widget: data-widget-key is required'); return; }
  window.__tandemWidget = true;
  var HOST = new URL(s.src, location.href).origin;
  var left = d.position === 'left';
  var seenKey = 'tandem-widget-seen:' + key;
  var btn, frame, badge, open = false, ready = false;

  var hash = new URLSearchParams();
  if (d.userId) hash.set('user_id', d.userId);
  if (d.userHash) hash.set('user_hash', d.userHash);
  if (d.name) hash.set('name', d.name);
  var src = HOST + '/chat?key=' + encodeURIComponent(key) + '&embed=1' + (hash.toString() ? '#' + hash : '');

  var side = left ? 'left' : 'right';
  var css =
    '.tandem-widget-button{position:fixed;' + side + ':20px;bottom:20px;z-index:2147483000;width:60px;height:60px;border:0;border-radius:50%;' +
    'background:#4338ca;color:#fff;cursor:pointer;display:grid;place-items:center;padding:0;margin:0;' +
    'box-shadow:0 6px 24px rgba(17,24,39,.28);transition:transform .15s ease}' +
    '.tandem-widget-button:hover{transform:scale(1.06)}' +
    '.tandem-widget-button:focus-visible{outline:3px solid #2563eb;outline-offset:3px}' +
    '.tandem-widget-button svg{width:28px;height:28px;display:block}' +
    '.tandem-widget-button .tandem-widget-x{display:none}' +
    '.tandem-widget-open .tandem-widget-chat{display:none}.tandem-widget-open .tandem-widget-x{display:block}' +
    '.tandem-widget-badge{position:absolute;top:-4px;' + (left ? 'right' : 'left') + ':-4px;min-width:22px;height:22px;padding:0 6px;' +
    'border-radius:11px;background:#dc2626;color:#fff;font:700 12px/22px system-ui,sans-serif;text-align:center;box-sizing:border-box}' +
    '.tandem-widget-frame{position:fixed;' + side + ':20px;bottom:92px;z-index:2147483000;width:380px;height:600px;' +
    'max-height:calc(100vh - 112px);max-width:calc(100vw - 40px);border:0;border-radius:18px;background:#fff;' +
    'box-shadow:0 12px 48px rgba(17,24,39,.3);color-scheme:normal;opacity:0;transform:translateY(12px);visibility:hidden;' +
    'transition:opacity .18s ease,transform .18s ease,visibility 0s .18s}' +
    '.tandem-widget-frame.tandem-widget-shown{opacity:1;transform:none;visibility:visible;transition:opacity .18s ease,transform .18s ease}' +
    '@media (max-width:479px){.tandem-widget-frame{left:0;right:0;top:0;bottom:0;width:100%;height:100%;max-width:none;max-height:none;border-radius:0}' +
    '.tandem-widget-button.tandem-widget-open{display:none}}' +
    '@media (prefers-reduced-motion:reduce){.tandem-widget-button,.tandem-widget-frame{transition:none!important}}';

  // Built with the DOM (no innerHTML: host pages may enforce Trusted Types).
  function svg(path, cls, stroke) {
    var NS = 'http://www.w3.org/2000/svg', el = document.createElementNS(NS, 'svg'), p = document.createElementNS(NS, 'path');
    var at = { 'class': cls, viewBox: '0 0 24 24', 'aria-hidden': 'true', focusable: 'false', fill: stroke ? 'none' : 'currentColor' };
    if (stroke) { at.stroke = 'currentColor'; at['stroke-width'] = '2.4'; at['stroke-linecap'] = 'round'; }
    for (var k in at) el.setAttribute(k, at[k]);
    p.setAttribute('d', path);
    el.appendChild(p);
    return el;
  }

  function post(msg) {
    if (ready && frame.contentWindow) frame.contentWindow.postMessage(msg, HOST);
  }

  function makeFrame() {
    if (frame) return;
    frame = document.createElement('iframe');
    frame.className = 'tandem-widget-frame';
    frame.setAttribute('data-testid', 'tandem-widget-frame');
    frame.title = 'Support chat';
    frame.src = src;
    frame.setAttribute('allow', 'clipboard-write');
    frame.setAttribute('referrerpolicy', 'strict-origin-when-cross-origin');
    document.body.appendChild(frame);
  }

  function setOpen(next, fromFrame) {
    if (next === open) return;
    open = next;
    if (open) {
      makeFrame();
      try { localStorage.setItem(seenKey, '1'); } catch (e) { /* storage blocked */ }
      frame.classList.add('tandem-widget-shown');
      frame.removeAttribute('aria-hidden');
      setUnread(0);
      post({ type: 'tandem:visible', visible: true });
      setTimeout(function () { if (open) frame.focus(); }, 60);
    } else if (frame) {
      frame.classList.remove('tandem-widget-shown');
      frame.setAttribute('aria-hidden', 'true');
      post({ type: 'tandem:visible', visible: false });
    }
    btn.classList.toggle('tandem-widget-open', open);
    btn.setAttribute('aria-expanded', String(open));
    if (!open && frame && (fromFrame || document.activeElement === frame)) btn.focus();
  }

  function setUnread(n) {
    n = Math.max(0, n | 0);
    badge.textContent = n > 99 ? '99+' : String(n);
    badge.style.display = !n || open ? 'none' : 'block';
  }

  function init() {
    var style = document.createElement('style');
    style.setAttribute('data-tandem-widget', '');
    style.textContent = css;
    document.head.appendChild(style);

    btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'tandem-widget-button';
    btn.setAttribute('data-testid', 'tandem-widget-button');
    btn.setAttribute('aria-label', 'Open support chat');
    btn.setAttribute('aria-expanded', 'false');
    badge = document.createElement('span');
    badge.className = 'tandem-widget-badge';
    badge.setAttribute('aria-hidden', 'true');
    btn.appendChild(svg('M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z', 'tandem-widget-chat'));
    btn.appendChild(svg('M6 6l12 12M18 6L6 18', 'tandem-widget-x', true));
    btn.appendChild(badge);
    badge.style.display = 'none';
    btn.addEventListener('click', function () { setOpen(!open); });
    document.body.appendChild(btn);

    window.addEventListener('message', function (e) {
      if (e.origin !== HOST || !frame || e.source !== frame.contentWindow) return;
      var m = e.data || {};
      if (m.type === 'tandem:close') setOpen(false, true);
      else if (m.type === 'tandem:unread') setUnread(m.count);
      else if (m.type === 'tandem:ready') {
        ready = true;
        post({ type: 'tandem:visible', visible: open });
        if (open) frame.focus(); // the first load replaced the document focused on open
      }
    });
    document.addEventListener('keydown', function (e) {
      if (e.key === 'Escape' && open) setOpen(false, true);
    });

    if (d.open === 'true') setOpen(true);
    else {
      // A returning visitor: load the chat hidden, so replies raise the badge.
      var seen = false;
      try { seen = localStorage.getItem(seenKey) === '1'; } catch (e) { /* storage blocked */ }
      if (seen) {
        var later = window.requestIdleCallback || function (f) { setTimeout(f, 1500); };
        later(function () { if (!frame) { makeFrame(); frame.setAttribute('aria-hidden', 'true'); } });
      }
    }
  }

  if (document.body) init();
  else document.addEventListener('DOMContentLoaded', init);
})();

// kraal web UI: the live session stream, the composer, toasts and notifications.
// Pages work without this script (forms post and redirect); it makes them live. Every
// piece of agent output arrives as markup the server rendered and escaped, so nothing here
// turns text into HTML.
(() => {
  'use strict';

  const toast = (text, kind) => {
    const t = document.getElementById('toast');
    if (!t) return;
    t.textContent = text;
    t.dataset.kind = kind || 'error';
    t.classList.add('show');
    clearTimeout(t._timer);
    t._timer = setTimeout(() => t.classList.remove('show'), 6000);
  };

  document.addEventListener('htmx:responseError', (e) => {
    const x = e.detail.xhr;
    toast((x && x.responseText) || 'Request failed');
  });
  document.addEventListener('htmx:sendError', () => toast('The daemon is unreachable'));

  if ('serviceWorker' in navigator && navigator.serviceWorker) {
    navigator.serviceWorker.register('/static/sw.js', { scope: '/' }).catch(() => {});
  }

  // ----- Session page: the live event log -----
  const log = document.getElementById('log');
  if (log) {
    const session = log.dataset.session;
    let last = Number(log.dataset.lastSeq || 0);
    const conn = document.getElementById('connection');
    const stateBox = document.getElementById('state');
    let source = null;
    let retry = null;

    const nearBottom = () => window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
    const append = (html) => {
      const t = document.createElement('template');
      t.innerHTML = html; // server-rendered, escaped markup
      log.appendChild(t.content);
    };
    const streaming = () => {
      let s = log.querySelector('.ev.assistant.streaming');
      if (!s) {
        s = document.createElement('div');
        s.className = 'ev assistant streaming';
        const text = document.createElement('div');
        text.className = 'text';
        s.appendChild(text);
        log.appendChild(s);
      }
      return s.querySelector('.text');
    };

    const onEvent = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.seq <= last) return; // never twice
      last = ev.seq;
      log.dataset.lastSeq = String(last);
      const follow = nearBottom();
      if (ev.kind === 'assistant_delta') {
        const t = document.createElement('template');
        t.innerHTML = ev.html;
        streaming().appendChild(t.content);
      } else {
        if (ev.kind === 'assistant_text') {
          const s = log.querySelector('.ev.assistant.streaming');
          if (s) s.remove();
        }
        if (ev.html) append(ev.html);
      }
      if (ev.cost) {
        const c = document.getElementById('cost');
        if (c) c.textContent = ev.cost;
      }
      if (ev.state && stateBox) {
        stateBox.innerHTML = '';
        const b = document.createElement('span');
        b.className = 'badge';
        b.dataset.state = ev.state;
        b.textContent = ev.state.replace(/_/g, ' ');
        stateBox.appendChild(b);
      }
      // Answered approval requests lose their buttons.
      if (ev.kind === 'approval_decision') {
        const d = log.querySelector(`.ev.decision[data-seq="${ev.seq}"]`);
        const req = d && d.dataset.request;
        if (req) {
          for (const a of log.querySelectorAll('.ev.approval')) {
            if (a.dataset.request === req) a.querySelector('form')?.remove();
          }
        }
      }
      if (follow) window.scrollTo(0, document.body.scrollHeight);
      if (window.htmx) window.htmx.process(log);
    };

    const connect = () => {
      clearTimeout(retry);
      if (source) source.close();
      // A fresh connection resumes after the last event shown; the browser's own
      // reconnects send Last-Event-ID, which the server honours the same way.
      source = new EventSource(`/s/${session}/live?after=${last}`);
      source.onmessage = onEvent;
      source.onopen = () => { if (conn) conn.hidden = true; };
      source.onerror = () => {
        if (conn) conn.hidden = false;
        if (source.readyState === EventSource.CLOSED) retry = setTimeout(connect, 2000);
      };
    };
    connect();
    window.addEventListener('online', connect);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && (!source || source.readyState === EventSource.CLOSED)) connect();
    });
    window.kraalReconnect = connect;
    window.scrollTo(0, document.body.scrollHeight);
  }

  // ----- The composer: clear after sending; Ctrl/Cmd+Enter sends -----
  const composer = document.getElementById('composer');
  if (composer) {
    const box = composer.querySelector('textarea');
    composer.addEventListener('htmx:afterRequest', (e) => {
      if (e.detail.successful && e.detail.elt === composer) {
        box.value = '';
        toast('Sent', 'ok');
      }
    });
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        composer.requestSubmit();
      }
    });
  }

  // ----- Notifications when a session finishes, fails or needs approval -----
  const button = document.getElementById('enable-notifications');
  if (button && 'Notification' in window && Notification.permission !== 'granted') {
    button.hidden = false;
    button.addEventListener('click', async () => {
      const p = await Notification.requestPermission();
      if (p === 'granted') button.hidden = true;
    });
  }
  const labels = { done: 'finished', failed: 'failed', needs_approval: 'needs approval' };
  const onScreen = (c) => !document.hidden && log && log.dataset.session === c.session;
  const notify = async (c) => {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    if (onScreen(c)) return;
    const title = `${c.workspace}: ${labels[c.state]}`;
    const options = { body: c.title, tag: c.session, data: { url: `/s/${c.session}` } };
    const reg = navigator.serviceWorker && (await navigator.serviceWorker.getRegistration());
    if (reg) reg.showNotification(title, options);
    else new Notification(title, options);
  };
  if (window.EventSource) {
    const changes = new EventSource('/notify');
    changes.onmessage = (m) => {
      const c = JSON.parse(m.data);
      // A turn ending shows as waiting for input; failures and approvals always notify.
      if (c.state === 'waiting_for_input') c.state = 'done';
      if (labels[c.state]) notify(c);
    };
  }
})();

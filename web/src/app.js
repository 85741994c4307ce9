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

  // ----- The composer: clear after sending; Ctrl/Cmd+Enter sends; attachments -----
  const composer = document.getElementById('composer');
  if (composer) {
    const box = composer.querySelector('textarea');
    const files = document.getElementById('attach');
    const attached = document.getElementById('attached');
    const MAX_FILE = 20 * 1024 * 1024;
    const MAX_ALL = 50 * 1024 * 1024;
    const showFiles = () => {
      if (!files || !attached) return;
      const list = Array.from(files.files || []);
      attached.hidden = list.length === 0;
      attached.textContent = list.map((f) => `📎 ${f.name} (${Math.ceil(f.size / 1024)} KiB)`).join('  ');
    };
    if (files) files.addEventListener('change', showFiles);
    composer.addEventListener('htmx:confirm', (e) => {
      if (e.detail.elt !== composer || !files) return;
      const list = Array.from(files.files || []);
      const big = list.find((f) => f.size > MAX_FILE);
      const total = list.reduce((n, f) => n + f.size, 0);
      if (big || total > MAX_ALL) {
        e.preventDefault();
        toast(big ? `${big.name} is larger than 20 MiB` : 'The attachments are larger than 50 MiB together');
      } else if (!box.value.trim() && list.length === 0) {
        e.preventDefault();
        toast('Write a message or attach a file');
      }
    });
    composer.addEventListener('htmx:afterRequest', (e) => {
      if (e.detail.successful && e.detail.elt === composer) {
        box.value = '';
        if (files) files.value = '';
        showFiles();
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

  // ----- Review: tap a diff line to comment on it -----
  document.addEventListener('click', (e) => {
    const cancel = e.target.closest('tr.comment-form button.cancel');
    if (cancel) { cancel.closest('tr.comment-form').remove(); return; }
    const row = e.target.closest('#diff tr.line');
    if (!row || e.target.closest('a, button, textarea, input')) return;
    const next = row.nextElementSibling;
    if (next && next.classList.contains('comment-form')) { next.querySelector('textarea').focus(); return; }
    const diff = document.getElementById('diff');
    const tr = document.createElement('tr');
    tr.className = 'comment-form';
    const td = document.createElement('td');
    td.colSpan = 3;
    const form = document.createElement('form');
    form.setAttribute('hx-post', `/w/${diff.dataset.ws}/comments`);
    form.setAttribute('hx-target', '#diff');
    form.setAttribute('hx-swap', 'outerHTML');
    for (const [k, v] of [['path', row.dataset.path], ['line', row.dataset.line], ['side', row.dataset.side]]) {
      const i = document.createElement('input');
      i.type = 'hidden'; i.name = k; i.value = v;
      form.appendChild(i);
    }
    const label = document.createElement('div');
    label.className = 'muted';
    label.textContent = `Comment on ${row.dataset.path} line ${row.dataset.line}${row.dataset.side === 'old' ? ' (removed)' : ''}`;
    const text = document.createElement('textarea');
    text.name = 'body'; text.rows = 3; text.required = true;
    text.placeholder = 'What should the agent change here?';
    const actions = document.createElement('div');
    actions.className = 'actions';
    const save = document.createElement('button');
    save.type = 'submit'; save.className = 'small'; save.textContent = 'Add comment';
    const no = document.createElement('button');
    no.type = 'button'; no.className = 'secondary outline small cancel'; no.textContent = 'Cancel';
    actions.append(save, no);
    form.append(label, text, actions);
    td.appendChild(form);
    tr.appendChild(td);
    row.after(tr);
    if (window.htmx) window.htmx.process(form);
    text.focus();
  });
  document.addEventListener('keydown', (e) => {
    const row = e.target.closest && e.target.closest('#diff tr.line');
    if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); row.click(); }
  });

  // ----- Ports: an open QR code stays open when the list refreshes -----
  let openPorts = [];
  document.addEventListener('htmx:beforeSwap', (e) => {
    const t = e.detail.target;
    if (t && t.id === 'ports') {
      openPorts = Array.from(t.querySelectorAll('li[data-port] details[open]')).map((d) => d.closest('li').dataset.port);
    }
  });
  document.addEventListener('htmx:afterSettle', () => {
    const p = document.getElementById('ports');
    if (!p) return;
    for (const port of openPorts) {
      const d = p.querySelector(`li[data-port="${port}"] details`);
      if (d) d.open = true;
    }
  });

  // ----- Web Push: "notify this device" -----
  const b64ToBytes = (s) => {
    const pad = '='.repeat((4 - (s.length % 4)) % 4);
    const raw = atob((s + pad).replace(/-/g, '+').replace(/_/g, '/'));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  };
  const csrf = () => (document.querySelector('meta[name=csrf-token]') || {}).content || '';
  const pushToggle = document.getElementById('push-toggle');
  const pushStatus = document.getElementById('push-status');
  const deviceLabel = () => {
    const ua = navigator.userAgent;
    const os = /iPhone|iPad/.test(ua) ? 'iOS' : /Android/.test(ua) ? 'Android' : /Mac/.test(ua) ? 'macOS' : /Linux/.test(ua) ? 'Linux' : /Windows/.test(ua) ? 'Windows' : 'device';
    const browser = /Edg\//.test(ua) ? 'Edge' : /Chrome\//.test(ua) ? 'Chrome' : /Firefox\//.test(ua) ? 'Firefox' : /Safari\//.test(ua) ? 'Safari' : 'browser';
    return `${browser} on ${os}`;
  };
  const pushSupported = () => 'serviceWorker' in navigator && navigator.serviceWorker && 'PushManager' in window;
  const currentSub = async () => {
    if (!pushSupported()) return null;
    const reg = await navigator.serviceWorker.ready;
    return reg.pushManager.getSubscription();
  };
  window.kraalPushSubscription = currentSub;
  const markThisDevice = (sub) => {
    const id = localStorage.getItem('kraal-push-id');
    for (const el of document.querySelectorAll('article.device')) {
      const mine = !!sub && el.dataset.subscription === id;
      const badge = el.querySelector('.this-device');
      if (badge) badge.hidden = !mine;
    }
  };
  const refreshToggle = async () => {
    if (!pushToggle) return;
    if (!pushSupported()) {
      pushStatus.textContent = window.isSecureContext
        ? 'This browser cannot receive push notifications (on iPhone: add kraal to the home screen first).'
        : 'Push notifications need HTTPS (e.g. tailscale serve) or localhost.';
      return;
    }
    const sub = await currentSub();
    pushToggle.disabled = false;
    pushToggle.textContent = sub ? 'Stop notifying this device' : 'Notify this device';
    pushToggle.dataset.on = sub ? '1' : '0';
    pushStatus.textContent = sub ? 'This device gets notifications.' : 'This device gets no notifications.';
    markThisDevice(sub);
  };
  if (pushToggle) {
    refreshToggle().catch((err) => { pushStatus.textContent = `Push unavailable: ${err.message || err}`; });
    pushToggle.addEventListener('click', async () => {
      pushToggle.disabled = true;
      try {
        const reg = await navigator.serviceWorker.ready;
        const existing = await reg.pushManager.getSubscription();
        if (existing) {
          await fetch('/push/unsubscribe', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() }, body: JSON.stringify({ endpoint: existing.endpoint }) });
          await existing.unsubscribe();
          localStorage.removeItem('kraal-push-id');
        } else {
          if ('Notification' in window && Notification.permission !== 'granted') {
            const p = await Notification.requestPermission();
            if (p !== 'granted') throw new Error('notifications are blocked for this site');
          }
          const sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(pushToggle.dataset.key) });
          const body = { ...sub.toJSON(), label: deviceLabel() };
          const r = await fetch('/push/subscribe', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() }, body: JSON.stringify(body) });
          if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || `HTTP ${r.status}`);
          localStorage.setItem('kraal-push-id', (await r.json()).id);
        }
        window.location.reload();
      } catch (err) {
        toast(`Could not change notifications: ${err.message || err}`);
        pushToggle.disabled = false;
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
    // A device with push gets these from the daemon already.
    if (await currentSub().catch(() => null)) return;
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

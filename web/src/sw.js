// kraal's service worker: makes the web UI installable, and shows notifications on phones
// (where only a worker may) — also pushed ones (Web Push) when no kraal page is open and
// the phone is locked. An approval's Approve / Deny buttons answer it from the lock screen:
// each carries a single-use capability for that one request, POSTed without a cookie.
// It caches nothing: every page is live and behind a login.
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', () => {});

const closeTagged = (tag) =>
  self.registration.getNotifications({ tag }).then((ns) => ns.forEach((n) => n.close()));

self.addEventListener('push', (e) => {
  let d;
  try {
    d = e.data ? e.data.json() : {};
  } catch (_) {
    d = { title: 'kraal', body: e.data ? e.data.text() : '' };
  }
  // Answered somewhere else: the question goes away on this device too.
  if (d.kind === 'answered') {
    e.waitUntil(closeTagged(d.tag));
    return;
  }
  const approval = d.kind === 'approval';
  const options = {
    body: d.body || '',
    tag: d.tag || undefined,
    data: d,
    icon: '/static/icon-192.png',
    badge: '/static/icon-192.png',
    renotify: approval,
    requireInteraction: approval,
    actions: (d.actions || []).map((a) => ({ action: a.action, title: a.title })),
  };
  e.waitUntil(self.registration.showNotification(d.title || 'kraal', options));
});

const openPage = (url) =>
  self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((list) => {
    for (const c of list) {
      if ('focus' in c) { c.navigate(url); return c.focus(); }
    }
    return self.clients.openWindow(url);
  });

// Keeps the worker alive until `p` settles (an event a script made cannot be extended,
// but what it started runs on).
const extend = (e, p) => {
  try { e.waitUntil(p); } catch (_) { /* not extendable */ }
};

self.addEventListener('notificationclick', (e) => {
  const d = e.notification.data || {};
  const act = (d.actions || []).find((a) => a.action === e.action);
  e.notification.close();
  if (act) {
    // From the lock screen: answer without opening a page.
    extend(e,
      fetch(act.url, { method: 'POST', credentials: 'omit', cache: 'no-store' })
        .then(async (r) => {
          if (r.ok) return undefined;
          const j = await r.json().catch(() => ({}));
          return self.registration.showNotification(d.title || 'kraal', {
            body: `Not answered: ${j.message || r.status}`,
            tag: d.tag,
            data: { url: d.url },
          });
        })
        .catch(() => self.registration.showNotification(d.title || 'kraal', {
          body: 'Not answered: the daemon is unreachable',
          tag: d.tag,
          data: { url: d.url },
        })),
    );
    return;
  }
  extend(e, openPage(d.url || '/'));
});

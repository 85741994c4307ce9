// Browser test of supervising from a phone (390×844): Debian's Chromium driven by
// playwright-core. Run by crates/kraal/tests/it/supervision.rs, which starts the daemon
// (with --preview-domain localhost), a scripted model, a Web Push service on loopback
// (whose mailbox holds the messages it decrypted), and a workspace with a changed file,
// a `python3 -m http.server` on 8000 and a WebSocket echo server on 127.0.0.1:8765.
// Env: KRAAL_URL, KRAAL_TOKEN, KRAAL_WS, KRAAL_BIN, KRAAL_SOCKET, SCREENSHOTS,
//      PUSH_ENDPOINT, PUSH_P256DH, PUSH_AUTH, PUSH_MAILBOX, PREVIEW_DOMAIN.
// Every step asserts; the first failure exits non-zero with its reason.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const URL = env('KRAAL_URL');
const TOKEN = env('KRAAL_TOKEN');
const WS = env('KRAAL_WS');
const SHOTS = env('SCREENSHOTS');
const DOMAIN = env('PREVIEW_DOMAIN');
const PORT = new globalThis.URL(URL).port;
mkdirSync(SHOTS, { recursive: true });

const kraal = (...args) =>
  execFileSync(env('KRAAL_BIN'), args, { env: { ...process.env, KRAAL_SOCKET: env('KRAAL_SOCKET') }, encoding: 'utf8' });
const events = (sid) => kraal('events', sid, '--json').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

let step = 0;
const log = (m) => console.log(`[${++step}] ${m}`);
const shot = async (page, name) => { await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true }); };
const until = async (what, cond, timeout = 90000) => {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
};
const waitText = (page, text, timeout = 90000) =>
  page.waitForFunction((t) => document.querySelector('#log').innerText.includes(t), text, { timeout });

// The push service a real phone's browser would use (FCM, Mozilla, Apple) is not reachable
// here, so the browser's PushManager is given the subscription of the loopback push
// service instead: what the page does with it, and what the daemon sends to it, is real.
const stubPush = ({ endpoint, p256dh, auth }) => {
  if (!('PushManager' in window)) return;
  const make = () => ({
    endpoint,
    expirationTime: null,
    toJSON: () => ({ endpoint, expirationTime: null, keys: { p256dh, auth } }),
    unsubscribe: async () => { localStorage.removeItem('stub-sub'); return true; },
  });
  PushManager.prototype.subscribe = async function (opts) {
    const key = new Uint8Array(opts.applicationServerKey);
    localStorage.setItem('stub-key', btoa(String.fromCharCode(...key)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''));
    localStorage.setItem('stub-sub', '1');
    return make();
  };
  PushManager.prototype.getSubscription = async function () {
    return localStorage.getItem('stub-sub') ? make() : null;
  };
};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// A 1×1 PNG.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z/C/HgAGgwJ/lK3Q6wAAAABJRU5ErkJggg==', 'base64');

try {
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  await phone.grantPermissions(['notifications'], { origin: URL });
  await phone.addInitScript(stubPush, { endpoint: env('PUSH_ENDPOINT'), p256dh: env('PUSH_P256DH'), auth: env('PUSH_AUTH') });
  const page = await phone.newPage();
  await page.goto(`${URL}/login`);
  await page.fill('#token', TOKEN);
  await Promise.all([page.waitForURL(`${URL}/`), page.click('button[type=submit]')]);
  log('logged in');

  // ---------- Notify this device ----------
  await page.goto(`${URL}/settings/notifications`);
  const sw = await until('the service worker', async () => phone.serviceWorkers()[0]
    || (await page.evaluate(async () => !!(await navigator.serviceWorker.getRegistration())) && phone.serviceWorkers()[0]));
  await page.waitForSelector('#push-toggle:not([disabled])');
  assert.equal(await page.textContent('#push-toggle'), 'Notify this device');
  await Promise.all([page.waitForNavigation(), page.click('#push-toggle')]);
  await page.waitForSelector('article.device .this-device:not([hidden])');
  assert.equal(await page.evaluate(() => localStorage.getItem('stub-key')), await page.getAttribute('#push-toggle', 'data-key'),
    'the browser subscribed with the daemon\'s VAPID key');
  const subs = JSON.parse(kraal('push', 'ls', '--json')).subscriptions;
  assert.equal(subs.length, 1, JSON.stringify(subs));
  assert.match(subs[0].label, /Chrome on/);
  await shot(page, 'phone-notifications');
  log('the service worker registered; "Notify this device" registered this browser with the daemon');

  // ---------- An approval, answered from the notification ----------
  await page.goto(`${URL}/w/${WS}`);
  await page.click('details.new-session summary');
  await page.fill('details.new-session textarea[name=message]', 'write approved.txt');
  await page.check('details.new-session input[name=ask]');
  await Promise.all([page.waitForURL(/\/s\/se-/), page.click('details.new-session button[type=submit]')]);
  const sid = page.url().split('/s/')[1];
  await page.waitForSelector('#log .ev.approval', { timeout: 90000 });
  // What the daemon pushed, as the push service decrypted it.
  const pushed = await until('the approval push', async () => {
    const box = await (await fetch(env('PUSH_MAILBOX'))).json();
    return box.find((m) => m.kind === 'approval' && m.session === sid);
  });
  const cdp = await phone.newCDPSession(page);
  const regs = [];
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => regs.push(...e.registrations));
  await cdp.send('ServiceWorker.enable');
  const reg = await until('the worker registration', () => regs.find((r) => r.scopeURL === `${URL}/` && !r.isDeleted));
  const deliver = () => cdp.send('ServiceWorker.deliverPushMessage', { origin: URL, registrationId: reg.registrationId, data: JSON.stringify(pushed) });
  await deliver();
  // A worker that is still starting can miss a message under load; a repeat is harmless
  // (the tag makes it replace the first), so deliver again every few seconds until shown.
  let tries = 0;
  const shown = await until('the notification', async () => {
    if (++tries % 25 === 0) await deliver();
    const list = await sw.evaluate(async (tag) => (await self.registration.getNotifications({ tag }))
      .map((n) => ({ title: n.title, body: n.body, actions: n.actions.map((a) => a.action), interaction: n.requireInteraction })), pushed.tag);
    return list[0];
  });
  assert.equal(shown.title, `${WS}: Bash needs approval`);
  assert.match(shown.body, /echo approved > \/workspace\/approved\.txt/);
  assert.deepEqual(shown.actions, ['approve', 'deny']);
  assert.equal(shown.interaction, true, 'an approval stays until answered');
  log('a push event made the worker show the approval with Approve / Deny');
  // The lock screen's Approve button: the worker POSTs the action URL, no page involved.
  await sw.evaluate(async (tag) => {
    const [n] = await self.registration.getNotifications({ tag });
    self.dispatchEvent(new NotificationEvent('notificationclick', { notification: n, action: 'approve' }));
  }, pushed.tag);
  await waitText(page, 'Approved and done.');
  assert.ok(events(sid).some((e) => e.type === 'approval_decision' && e.allow === true), 'approved');
  assert.equal(kraal('exec', WS, '--', 'cat', 'approved.txt'), 'approved\n');
  log('its Approve action reached the daemon: the agent ran the command');

  // ---------- Review: comment on a line, send it to the agent ----------
  await page.goto(`${URL}/w/${WS}`);
  const line = '#diff tr.line[data-path="src/main.rs"][data-side="new"][data-line="2"]';
  await page.waitForSelector(line);
  await page.tap(`${line} td.code`);
  await page.fill('tr.comment-form textarea', 'Please use a named constant here.');
  await shot(page, 'phone-review-comment-form');
  await page.click('tr.comment-form button[type=submit]');
  await page.waitForSelector('#diff .comment[data-comment]');
  assert.match(await page.textContent('#diff .comment'), /Please use a named constant here\./);
  // It survives a reload, and is open until resolved.
  await page.reload();
  await page.waitForSelector('#diff .comment .badge[data-state=needs_approval]');
  await shot(page, 'phone-review-comment');
  await page.selectOption('form.review-send select[name=target]', sid);
  await Promise.all([page.waitForURL(`${URL}/s/${sid}`), page.click('form.review-send button[type=submit]')]);
  await waitText(page, 'Thanks, fixing the review comment.');
  const sent = events(sid).filter((e) => e.type === 'user_message').pop();
  assert.match(sent.text, /`src\/main\.rs` line 2/);
  assert.match(sent.text, /> 2 \|     let answer = 42;/);
  log('a line comment was sent to the session, quoting file, line and code');

  // ---------- An image from the camera roll ----------
  await page.setInputFiles('#attach', { name: 'dot.png', mimeType: 'image/png', buffer: PNG });
  await page.waitForSelector('#attached:not([hidden])');
  await page.fill('#composer textarea', 'what is in this picture?');
  await shot(page, 'phone-composer-attachment');
  await page.click('#composer button[type=submit]');
  await waitText(page, 'I see the picture.');
  await page.waitForFunction(() => { const i = document.querySelector('#log .ev.user img.thumb'); return i && i.complete && i.naturalWidth === 1; });
  await shot(page, 'phone-session-attachment');
  log('an attached image was sent and shows in the conversation');

  // ---------- Dev-server previews ----------
  await page.goto(`${URL}/w/${WS}`);
  await page.waitForSelector('#ports li[data-port="8000"] a[role=button]');
  await page.waitForSelector('#ports li[data-port="8765"]');
  await page.click('#ports li[data-port="8000"] details.qr-box summary');
  await page.waitForFunction(() => { const q = document.querySelector('#ports li[data-port="8000"] img.qr'); return q && q.complete && q.naturalWidth > 0; });
  await page.locator('#ports').scrollIntoViewIfNeeded();
  await shot(page, 'phone-workspace-ports');
  // The path form: sandboxed, so the dev server's page can never reach the web UI.
  const [pathPage] = await Promise.all([phone.waitForEvent('page'), page.click('#ports li[data-port="8000"] a:text("Open")')]);
  await pathPage.waitForLoadState();
  // The visit got a login of its own for this port, in the path (no cookie reaches a
  // sandboxed page).
  assert.match(pathPage.url(), new RegExp(`^${URL}/p/${WS}/8000/~[0-9a-f]{64}/$`));
  assert.match(await pathPage.textContent('body'), /Directory listing for \//);
  assert.equal(await pathPage.evaluate(() => window.origin), 'null', 'a path preview runs in an opaque origin');
  await Promise.all([pathPage.waitForNavigation(), pathPage.click('a[href="README.md"]')]);
  assert.match(await pathPage.textContent('body'), /# demo/);
  await shot(pathPage, 'phone-preview-path');
  log('python3 -m http.server loads through /p/ws/8000/ (sandboxed; its links work)');
  // Its own origin, for absolute paths and WebSockets.
  const [own] = await Promise.all([phone.waitForEvent('page'), page.click('#ports li[data-port="8000"] a:text("Open on its own origin")')]);
  await own.waitForURL(`http://8000--${WS}.${DOMAIN}:${PORT}/`);
  assert.match(await own.textContent('body'), /Directory listing for \//);
  assert.equal(await own.evaluate(() => window.origin), `http://8000--${WS}.${DOMAIN}:${PORT}`);
  await shot(own, 'phone-preview-origin');
  const wsPage = await phone.newPage();
  await wsPage.goto(`${URL}/w/${WS}/open/8765`);
  await wsPage.waitForURL(`http://8765--${WS}.${DOMAIN}:${PORT}/`);
  assert.match(await wsPage.textContent('body'), /kraal ws echo/);
  const echo = await wsPage.evaluate(() => new Promise((resolve, reject) => {
    const s = new WebSocket(`ws://${location.host}/`);
    s.onopen = () => s.send('ping from the phone');
    s.onmessage = (m) => { resolve(m.data); s.close(); };
    s.onerror = () => reject(new Error('websocket failed'));
    setTimeout(() => reject(new Error('no echo')), 15000);
  }));
  assert.equal(echo, 'echo: ping from the phone');
  log('the WebSocket echo server (bound to the sandbox loopback) answers through the per-port origin');
  const wsPath = await phone.newPage();
  await wsPath.goto(`${URL}/p/${WS}/8765/`);
  assert.match(await wsPath.textContent('body'), /kraal ws echo/);
  const echo2 = await wsPath.evaluate(() => new Promise((resolve, reject) => {
    const s = new WebSocket(location.href.replace(/^http/, 'ws'));
    s.onopen = () => s.send('ping by path');
    s.onmessage = (m) => { resolve(m.data); s.close(); };
    s.onerror = () => reject(new Error('websocket failed'));
    setTimeout(() => reject(new Error('no echo')), 15000);
  }));
  assert.equal(echo2, 'echo: ping by path');
  log('…and through the path preview too');

  // No login, no preview.
  const stranger = await browser.newContext();
  const s = await stranger.newPage();
  await s.goto(`${URL}/p/${WS}/8000/`);
  assert.match(s.url(), /\/login\?next=/);
  const forged = await s.goto(`${URL}/p/${WS}/8000/~${'0'.repeat(64)}/`);
  assert.equal(forged.status(), 401);
  const r = await s.goto(`http://8000--${WS}.${DOMAIN}:${PORT}/`);
  assert.equal(r.status(), 401);
  assert.match(await s.textContent('body'), /Log in through kraal/);
  await stranger.close();
  log('previews need the login (a stranger gets the login page or a 401)');

  console.log('ALL PASSED');
} finally {
  await browser.close();
}

// Browser test of kraal's web UI: Debian's Chromium driven by playwright-core, at a phone
// viewport (390×844) and a desktop one. Run by the `kraal` end-to-end tests
// (crates/kraal/tests/it/web.rs), which start a daemon, a scripted model server and a
// workspace first, and pass them in the environment:
//   KRAAL_URL, KRAAL_TOKEN, KRAAL_WS, KRAAL_BIN, KRAAL_SOCKET, SCREENSHOTS.
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
mkdirSync(SHOTS, { recursive: true });

const kraal = (...args) =>
  execFileSync(env('KRAAL_BIN'), args, { env: { ...process.env, KRAAL_SOCKET: env('KRAAL_SOCKET') }, encoding: 'utf8' });
const events = (sid) => kraal('events', sid, '--json').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

let step = 0;
const log = (m) => console.log(`[${++step}] ${m}`);
const shot = async (page, name) => { await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true }); };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// Notifications: a stand-in Notification records what would be shown (headless Chromium
// shows none), and the page is told notifications are allowed.
const recordNotifications = () => {
  window.__notified = [];
  Object.defineProperty(navigator, 'serviceWorker', { value: undefined });
  class FakeNotification {
    constructor(title, options) { window.__notified.push({ title, body: options && options.body }); }
    static get permission() { return 'granted'; }
    static requestPermission() { return Promise.resolve('granted'); }
  }
  window.Notification = FakeNotification;
};

async function login(page) {
  await page.goto(`${URL}/`);
  assert.match(page.url(), /\/login\?next=/, 'pages redirect to the login page without a session');
  await page.fill('#token', 'kraal_wrong');
  await page.click('button[type=submit]');
  await page.waitForSelector('p.error');
  assert.match(await page.textContent('p.error'), /not valid/);
  await page.fill('#token', TOKEN);
  await Promise.all([page.waitForURL(`${URL}/`), page.click('button[type=submit]')]);
}

const seqsInDom = (page) =>
  page.$$eval('#log [data-seq]', (els) => els.map((e) => Number(e.dataset.seq)));
/** The events the page renders (with a data-seq): all but deltas, commands, ids and busy states. */
const renderable = (evs) =>
  evs.filter((e) => !['assistant_delta', 'command_run', 'agent_session'].includes(e.type)
    && !(e.type === 'state' && ['working', 'starting'].includes(e.state))).map((e) => e.seq);
const waitText = (page, text, timeout = 90000) =>
  page.waitForFunction((t) => document.querySelector('#log').innerText.includes(t), text, { timeout });

try {
  // ---------------- Phone ----------------
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  await phone.addInitScript(recordNotifications);
  const page = await phone.newPage();
  await page.goto(`${URL}/login`);
  await shot(page, 'phone-login');
  await login(page);
  log('logged in (a wrong token was refused first)');

  await page.waitForSelector(`a.card[href="/w/${WS}"]`);
  await shot(page, 'phone-dashboard');
  log('the dashboard lists the workspace');

  // A watcher page: notifications arrive on the dashboard while the session runs elsewhere.
  const watcher = await phone.newPage();
  await watcher.goto(`${URL}/`);

  await page.click(`a.card[href="/w/${WS}"]`);
  await page.waitForSelector('details.new-session');
  await page.click('details.new-session summary');
  await page.fill('details.new-session textarea[name=message]', 'first task');
  await Promise.all([page.waitForURL(/\/s\/se-/), page.click('details.new-session button[type=submit]')]);
  const sid = page.url().split('/s/')[1];
  log(`started session ${sid} from the workspace page`);

  // Watch it stream, then send a message while the agent works.
  await page.waitForFunction(() => document.querySelector('#log .ev.assistant.streaming .delta'), null, { timeout: 60000 });
  await shot(page, 'phone-session-streaming');
  await page.fill('#composer textarea', 'a follow-up while you work');
  await page.click('#composer button[type=submit]');
  await waitText(page, 'a follow-up while you work');
  log('events stream in live; a message sent mid-turn shows at once');
  await waitText(page, 'Got the follow-up.');
  await waitText(page, 'XSS check done.');
  await page.waitForSelector('#state .badge[data-state=waiting_for_input]', { timeout: 60000 });
  assert.equal(await page.evaluate(() => window.pwned), undefined, 'agent output never runs as script');
  assert.ok((await page.textContent('#log')).includes('<script>window.pwned=1</script>'), 'the markup is shown as text');
  log('the follow-up was answered; agent output with <script> stayed inert text');
  // Tool calls are collapsible and show the edit's diff.
  await page.click('#log details.ev.tool summary >> nth=0');
  await page.waitForSelector('#log .ev.file pre.diff .add');
  await shot(page, 'phone-session-done');
  assert.deepEqual(await seqsInDom(page), renderable(events(sid)), 'the page shows every event once, in order');

  await watcher.waitForFunction(() => window.__notified.length > 0, null, { timeout: 30000 });
  const notes = await watcher.evaluate(() => window.__notified);
  assert.ok(notes.some((n) => n.title === `${WS}: finished` && n.body === 'first task'), JSON.stringify(notes));
  log('the dashboard page raised a notification when the turn finished');

  // Approvals: a session that asks before using tools.
  await page.goto(`${URL}/w/${WS}`);
  await page.click('details.new-session summary');
  await page.fill('details.new-session textarea[name=message]', 'do something that needs approval');
  await page.check('details.new-session input[name=ask]');
  await Promise.all([page.waitForURL(/\/s\/se-/), page.click('details.new-session button[type=submit]')]);
  const asker = page.url().split('/s/')[1];
  await page.waitForSelector('#log .ev.approval form button[value="1"]', { timeout: 60000 });
  await page.waitForSelector('#state .badge[data-state=needs_approval]');
  await shot(page, 'phone-session-approval');
  await page.click('#log .ev.approval form button[value="1"]');
  await waitText(page, 'Approved and done.');
  assert.ok(await page.$('#log .ev.decision'), 'the decision is in the log');
  assert.equal(await page.$('#log .ev.approval form'), null, 'answered requests lose their buttons');
  await watcher.waitForFunction(() => window.__notified.some((n) => n.title.endsWith('needs approval')), null, { timeout: 30000 });
  log('the approval request was answered from the phone (and notified)');

  // The diff of uncommitted changes.
  await page.goto(`${URL}/w/${WS}`);
  await page.waitForSelector('#diff details.diff-file');
  const diff = await page.textContent('#diff');
  assert.ok(diff.includes('README.md') && diff.includes('+# demo, edited in the browser test'), diff);
  assert.ok(diff.includes('approved.txt'), 'new files are listed');
  await shot(page, 'phone-workspace-diff');
  log('the workspace page shows the diff against HEAD and the new files');

  // The terminal, with the extra keys row.
  await page.goto(`${URL}/w/${WS}/terminal`);
  await page.waitForFunction(() => document.getElementById('term-status').textContent === 'connected', null, { timeout: 30000 });
  await page.click('#terminal');
  await page.keyboard.type('echo hi-from-xterm-$((6*7))');
  await page.keyboard.press('Enter');
  const termText = () => page.evaluate(() => {
    const b = window.kraalTerminal.buffer.active;
    let s = '';
    for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + '\n';
    return s;
  });
  await page.waitForFunction(() => {
    const b = window.kraalTerminal.buffer.active;
    for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true).includes('hi-from-xterm-42')) return true;
    return false;
  }, null, { timeout: 20000 });
  // Ctrl from the extra row, then C: interrupts a running command.
  await page.keyboard.type('sleep 300');
  await page.keyboard.press('Enter');
  // Ctrl-C only reaches `sleep` once the shell has made it the foreground job; sent
  // earlier, the shell takes the interrupt and `sleep` runs on, so wait until it exists.
  const sleeping = () => {
    try {
      kraal('exec', '-n', WS, '--', 'sh', '-c',
        'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sleep ] && exit 0; done; exit 1');
      return true;
    } catch { return false; }
  };
  for (let i = 0; !sleeping(); i++) {
    assert.ok(i < 100, '`sleep 300` typed in the terminal never started');
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.click('.keys [data-ctrl]');
  await page.keyboard.press('c');
  await page.keyboard.type('echo after-ctrl-c');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const b = window.kraalTerminal.buffer.active;
    let n = 0;
    for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true).includes('after-ctrl-c')) n++;
    return n >= 2; // the command line and its output
  }, null, { timeout: 20000 });
  assert.ok((await termText()).includes('hi-from-xterm-42'));
  await shot(page, 'phone-terminal');
  log('typed in the browser terminal; the Ctrl key of the extra row works');

  // Offline and back: nothing lost, nothing twice.
  await page.goto(`${URL}/s/${sid}`);
  await page.waitForSelector('#log [data-seq]');
  await phone.setOffline(true);
  await page.evaluate(() => window.kraalReconnect());
  await page.waitForSelector('#connection:not([hidden])', { timeout: 15000 });
  const before = (await seqsInDom(page)).length;
  kraal('send', '--wait', sid, 'sent while the phone was offline');
  await phone.setOffline(false);
  await page.evaluate(() => window.dispatchEvent(new Event('online')));
  await waitText(page, 'Offline stream done.');
  await page.waitForSelector('#connection[hidden]', { state: 'attached' });
  const after = await seqsInDom(page);
  assert.ok(after.length > before);
  assert.deepEqual(after, renderable(events(sid)), 'after reconnecting: every event exactly once, in order');
  assert.equal(new Set(after).size, after.length);
  log('went offline, events happened meanwhile, and the stream resumed without gap or duplicate');

  // Templates: create, version, launch.
  await page.goto(`${URL}/templates/new`);
  await page.fill('input[name=name]', 'Browser bot');
  await page.fill('input[name=description]', 'made by the browser test');
  await page.selectOption('select[name=agent]', 'claude');
  await page.fill('textarea[name=system_prompt]', 'Be brief.');
  await page.fill('input[name=memory_mib]', '512');
  await Promise.all([page.waitForURL(/\/templates\/tp-/), page.click('main form[action="/templates"] button[type=submit]')]);
  await page.fill('input[name=description]', 'second version');
  await Promise.all([page.waitForURL(/\/templates\/tp-/), page.click('form[action^="/templates/tp-"]:not([action$=launch]):not([action$=delete]) button[type=submit]')]);
  assert.ok((await page.textContent('h2')).includes('v2'), 'editing made version 2');
  await shot(page, 'phone-template');
  await page.fill('input[name=workspace]', 'from-template');
  await Promise.all([page.waitForURL(`${URL}/w/from-template`), page.click('form[action$=launch] button[type=submit]')]);
  await page.waitForFunction(async () => {
    const r = await fetch(location.href, { headers: { accept: 'text/html' } });
    return (await r.text()).includes('data-state="running"');
  }, null, { timeout: 90000, polling: 1000 });
  log('a template was created, edited into version 2 and launched as a workspace');

  await page.goto(`${URL}/logs`);
  await page.waitForSelector('table');
  assert.ok((await page.textContent('table')).includes('from-template'));
  await shot(page, 'phone-logs');
  log('the logs page lists workspace events');

  // ---------------- Desktop ----------------
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const d = await desk.newPage();
  await login(d);
  // The dashboard lists every session that is not done, with the workspace cards agreeing.
  await d.waitForSelector(`#workspaces ul.sessions a.session[href="/s/${sid}"]`);
  assert.ok(await d.$(`#workspaces ul.sessions a.session[href="/s/${asker}"]`), 'the approval session is listed');
  await shot(d, 'desktop-dashboard');
  await d.goto(`${URL}/w/${WS}`);
  await d.waitForSelector('#diff details.diff-file');
  await shot(d, 'desktop-workspace');
  // Commit everything, then push to a remote (a bare repository inside the workspace).
  await d.fill('form.commit input[name=message]', 'changes reviewed in the browser');
  await Promise.all([d.waitForNavigation(), d.click('form.commit button[type=submit]')]);
  await d.waitForFunction(() => document.querySelector('#diff').innerText.includes('No uncommitted changes'), null, { timeout: 30000 });
  assert.equal(kraal('exec', WS, '--', 'git', 'log', '-1', '--format=%s').trim(), 'changes reviewed in the browser');
  kraal('exec', WS, '--', 'sh', '-c', 'git init -q --bare /tmp/remote.git && git remote add origin /tmp/remote.git');
  await Promise.all([d.waitForNavigation(), d.click('form[action$="/push"] button')]);
  assert.equal(
    kraal('exec', WS, '--', 'git', '--git-dir=/tmp/remote.git', 'log', '-1', '--format=%s', '--all').trim(),
    'changes reviewed in the browser');
  log('committed all changes and pushed them (setting the upstream) from the desktop page');
  await d.goto(`${URL}/s/${sid}`);
  await d.waitForSelector('#log [data-seq]');
  assert.deepEqual(await seqsInDom(d), renderable(events(sid)));
  await shot(d, 'desktop-session');
  await d.goto(`${URL}/s/${asker}`);
  await shot(d, 'desktop-session-approval');
  await d.goto(`${URL}/w/${WS}/files?path=README.md`);
  assert.ok((await d.textContent('pre.file')).includes('edited in the browser test'));
  await shot(d, 'desktop-file');
  await d.goto(`${URL}/templates`);
  await shot(d, 'desktop-templates');
  await d.goto(`${URL}/w/${WS}/terminal`);
  await d.waitForFunction(() => document.getElementById('term-status').textContent === 'connected', null, { timeout: 30000 });
  await shot(d, 'desktop-terminal');
  // Logging out ends the session for that browser.
  await d.goto(`${URL}/`);
  await Promise.all([d.waitForURL(/\/login/), d.click('form[action="/logout"] button')]);
  await d.goto(`${URL}/`);
  assert.match(d.url(), /\/login/);
  log('desktop pages render; logging out ends the browser session');
  console.log('ALL PASSED');
} catch (e) {
  console.error(`FAILED after step ${step}: ${e.stack || e}`);
  await browser.close();
  process.exit(1);
}
await browser.close();

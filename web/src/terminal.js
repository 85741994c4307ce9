// The workspace terminal: xterm.js on the exec WebSocket (the protocol of `kraal shell`):
// a JSON `start` message, then stdin as binary messages; output arrives as binary
// messages of [stream byte][8-byte sequence][data], control messages as JSON text.
(() => {
  'use strict';
  const box = document.getElementById('terminal');
  if (!box || !window.Terminal) return;
  const status = document.getElementById('term-status');
  const term = new window.Terminal({
    cursorBlink: true, fontSize: 14, scrollback: 5000,
    theme: { background: '#000000', foreground: '#e6e6e6', cursor: '#e8a33d' },
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.kraalTerminal = term;

  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/w/${encodeURIComponent(box.dataset.workspace)}/exec`);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  const send = (text) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(text)); };

  ws.onopen = () => {
    ws.send(JSON.stringify({
      type: 'start',
      argv: ['/bin/sh', '-c', 'if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi'],
      tty: { rows: term.rows, cols: term.cols },
    }));
  };
  ws.onmessage = (m) => {
    if (typeof m.data === 'string') {
      const msg = JSON.parse(m.data);
      if (msg.type === 'started') status.textContent = 'connected';
      else if (msg.type === 'exit') { status.textContent = `exited (${msg.code ?? 'signal ' + msg.signal})`; term.write('\r\n[the shell exited]\r\n'); }
      else if (msg.type === 'error') { status.textContent = msg.message; term.write(`\r\n[${msg.message}]\r\n`); }
      return;
    }
    term.write(new Uint8Array(m.data, 9));
  };
  ws.onclose = () => { if (status.textContent === 'connected') status.textContent = 'disconnected'; };

  // The Ctrl key of the extra row applies to the next key typed.
  const ctrlButton = document.querySelector('.keys [data-ctrl]');
  let ctrl = false;
  const setCtrl = (on) => { ctrl = on; ctrlButton.setAttribute('aria-pressed', String(on)); };
  term.onData((d) => {
    if (ctrl && d.length === 1) {
      const c = d.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) d = String.fromCharCode(c - 64);
      setCtrl(false);
    }
    send(d);
  });
  for (const b of document.querySelectorAll('.keys button')) {
    b.addEventListener('click', () => {
      if (b.dataset.ctrl) setCtrl(!ctrl);
      else send(b.dataset.key);
      term.focus();
    });
  }
  const resize = () => {
    fit.fit();
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', rows: term.rows, cols: term.cols }));
  };
  window.addEventListener('resize', resize);
  term.focus();
})();

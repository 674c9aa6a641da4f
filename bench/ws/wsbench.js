'use strict';
// WebSocket echo server and load client for bench/websocket.py, on the `ws` package, so that
// neither end is what limits a proxy under test (one Node process each).
//
//   node wsbench.js echo PORT
//       Echoes every message back, text as text and binary as binary, on 127.0.0.1:PORT.
//   node wsbench.js check URL
//       One connection: a text and a binary message must come back unchanged, and a close
//       with 1000 must be answered with 1000. Exit status 0 and "ok", or 1 and the reason.
//   node wsbench.js load URL CONNECTIONS SECONDS SIZE WINDOW MAX_MESSAGES
//       Opens CONNECTIONS, prints "open" and waits for a line on stdin. Then each connection
//       keeps WINDOW text messages of SIZE bytes in flight (WINDOW = 1: a closed loop, send,
//       wait for the echo, send the next) until SECONDS have passed or MAX_MESSAGES echoes have
//       come back. Prints one JSON line (echoes, seconds, round-trip percentiles, errors, the
//       client's own CPU seconds), waits for another line on stdin (or its end), closes every
//       connection with 1000 (at most 5 s) and exits.

const readline = require('node:readline');
const { performance } = require('node:perf_hooks');
const { WebSocket, WebSocketServer } = require('ws');

const SOCKET_OPTIONS = { perMessageDeflate: false, skipUTF8Validation: true };
const OPEN_TIMEOUT_MS = 10000;
const CLOSE_TIMEOUT_MS = 5000;

function fail(message) {
  process.stderr.write(`wsbench: ${message}\n`);
  process.exit(1);
}

function echo(port) {
  const server = new WebSocketServer({ host: '127.0.0.1', port, backlog: 1024, ...SOCKET_OPTIONS });
  server.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });
  server.on('error', (e) => fail(`echo server: ${e.message}`));
  process.on('SIGTERM', () => process.exit(0));
}

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ...SOCKET_OPTIONS, handshakeTimeout: OPEN_TIMEOUT_MS });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_, res) => reject(new Error(`answered ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

async function check(url) {
  const timer = setTimeout(() => fail(`check: no answer within ${OPEN_TIMEOUT_MS} ms`), OPEN_TIMEOUT_MS);
  let ws;
  try {
    ws = await open(url);
  } catch (e) {
    fail(`check: ${url}: ${e.message}`);
  }
  const sent = [
    [Buffer.from('check: text through the proxy'), false],
    [Buffer.from([0, 1, 2, 253, 254, 255]), true],
  ];
  const received = [];
  ws.on('message', (data, isBinary) => {
    received.push([data, isBinary]);
    if (received.length === sent.length) ws.close(1000, 'done');
  });
  ws.on('close', (code) => {
    clearTimeout(timer);
    for (let i = 0; i < sent.length; i++) {
      const [data, isBinary] = received[i] || [Buffer.alloc(0), null];
      if (!data.equals(sent[i][0]) || isBinary !== sent[i][1]) {
        fail(`check: message ${i} came back as ${JSON.stringify(data.toString())} (binary ${isBinary})`);
      }
    }
    if (code !== 1000) fail(`check: closed with ${code}, wanted 1000`);
    process.stdout.write('ok\n');
    process.exit(0);
  });
  for (const [data, binary] of sent) ws.send(data, { binary });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function load(url, connections, seconds, size, window, maxMessages) {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const nextLine = () => lines.next();
  const payload = Buffer.alloc(size, 'x');
  const chunk = 1 << 16;
  const latencies = [new Float64Array(chunk)]; // round trips in ms, in chunks
  let filled = 0;
  let echoes = 0;
  let errors = 0;
  let running = false;
  let ended = 0;
  let sockets;
  try {
    sockets = await Promise.all(Array.from({ length: connections }, () => open(url)));
  } catch (e) {
    fail(`load: opening ${connections} connections to ${url}: ${e.message}`);
  }
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const stop = () => {
    if (!running) return;
    running = false;
    ended = performance.now();
    finish();
  };
  for (const ws of sockets) {
    const sentAt = [];
    ws.sentAt = sentAt;
    ws.on('message', (data) => {
      const now = performance.now();
      const started = sentAt.shift();
      if (!running) return;
      if (!data.equals(payload)) errors += 1;
      if (filled === chunk) {
        latencies.push(new Float64Array(chunk));
        filled = 0;
      }
      latencies[latencies.length - 1][filled++] = now - started;
      echoes += 1;
      if (echoes >= maxMessages) {
        stop();
        return;
      }
      sentAt.push(performance.now());
      ws.send(payload);
    });
    ws.on('close', () => { if (running) errors += 1; });
    ws.on('error', () => {});
  }
  process.stdout.write('open\n');
  await nextLine();
  const cpu = process.cpuUsage();
  running = true;
  const began = performance.now();
  const timer = setTimeout(stop, seconds * 1000);
  for (const ws of sockets) {
    for (let i = 0; i < window; i++) {
      ws.sentAt.push(performance.now());
      ws.send(payload);
    }
  }
  await finished;
  clearTimeout(timer);
  const used = process.cpuUsage(cpu);
  const all = new Float64Array(echoes);
  let at = 0;
  for (let i = 0; i < latencies.length; i++) {
    const part = i === latencies.length - 1 ? latencies[i].subarray(0, filled) : latencies[i];
    all.set(part, at);
    at += part.length;
  }
  all.sort();
  const result = {
    echoes,
    seconds: (ended - began) / 1000,
    p50_ms: percentile(all, 50),
    p99_ms: percentile(all, 99),
    max_ms: all.length ? all[all.length - 1] : 0,
    errors,
    client_cpu: (used.user + used.system) / 1e6,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await nextLine();
  const closed = sockets.map((ws) => new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) resolve();
    ws.once('close', resolve);
    ws.close(1000, 'done');
  }));
  setTimeout(() => fail('load: connections not closed within 5 s'), CLOSE_TIMEOUT_MS).unref();
  await Promise.all(closed);
  process.exit(0);
}

function integer(text, name, low, high) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < low || value > high) {
    fail(`${name} must be an integer from ${low} to ${high}, not ${text}`);
  }
  return value;
}

const [command, ...args] = process.argv.slice(2);
if (command === 'echo' && args.length === 1) {
  echo(integer(args[0], 'PORT', 1, 65535));
} else if (command === 'check' && args.length === 1) {
  check(args[0]);
} else if (command === 'load' && args.length === 6) {
  load(
    args[0],
    integer(args[1], 'CONNECTIONS', 1, 10000),
    integer(args[2], 'SECONDS', 1, 600),
    integer(args[3], 'SIZE', 1, 1 << 20),
    integer(args[4], 'WINDOW', 1, 1000),
    integer(args[5], 'MAX_MESSAGES', 1, 100000000),
  );
} else {
  fail('usage: wsbench.js echo PORT | check URL | load URL CONNECTIONS SECONDS SIZE WINDOW MAX_MESSAGES');
}

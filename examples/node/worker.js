// A worker process driving sentinel.js, for the tests (test/*.test.js and
// tests/test_cross_language.py). It talks over stdout, one line at a time.
//
//   node worker.js race DSN NAMESPACE LEDGER_TABLE BARRIER_LOCK KEY...
//       Connects, then waits at the start barrier: pg_advisory_lock_shared(BARRIER_LOCK),
//       which the test holds exclusively until every worker waits on it. Then
//       calls once() for every key in an order shuffled by its pid. The function
//       inserts (key, 'node', pid) into LEDGER_TABLE through a connection of its
//       own and returns {key, language, pid, token, ...}. A call that finds the
//       execution alive is repeated with a short backoff until it gets an answer
//       (30 s at most). Prints `result {"language", "pid", "alive", "seen": {key: result}}`.
//   node worker.js once DSN NAMESPACE KEY
//       One once() whose function returns {key, language: 'node', pid}; prints `result <Result as JSON>`.
//   node worker.js hang DSN NAMESPACE KEY TTL_MS HARD_TTL_MS
//       Claims KEY; the function prints `started <fence>` and never returns (the test kills it).
//
// DSN is a postgresql:// URL, a libpq keyword/value string, or '-' for libpq's PG* variables.

import crypto from 'node:crypto';

import pg from 'pg';

import { connectionConfig, once } from './sentinel.js';

function payload(key, language) {
  return {
    key,
    language,
    pid: process.pid,
    token: crypto.randomBytes(8).toString('hex'),
    amount: 9900,
    note: 'ünïcødé ✓ "quoted" \\ back\nslash',
    nested: { list: [1, 2.5, null, true, 'x'], empty: {} },
  };
}

function shuffled(items, seed) {
  const out = [...items];
  let s = seed >>> 0 || 1;
  for (let i = out.length - 1; i > 0; i -= 1) {
    s = (s * 1103515245 + 12345) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const print = (line) => new Promise((resolve) => process.stdout.write(`${line}\n`, resolve));

async function race(dsn, namespace, ledgerTable, barrierLock, keys) {
  const pool = new pg.Pool({ ...connectionConfig(dsn), max: 4, application_name: 'sentinel-node-worker' });
  pool.on('error', () => {}); // an idle client's lost connection: the next checkout connects afresh
  const ledger = new pg.Client(connectionConfig(dsn));
  await ledger.connect();
  await pool.query('select 1');

  // The start barrier: blocks until the test releases its exclusive lock.
  const barrier = new pg.Client(connectionConfig(dsn));
  await barrier.connect();
  await barrier.query('select pg_advisory_lock_shared($1)', [barrierLock]);
  await barrier.query('select pg_advisory_unlock_shared($1)', [barrierLock]);
  await barrier.end();

  const insert = `insert into ${pg.escapeIdentifier(ledgerTable)} (key, language, pid) values ($1, 'node', $2)`;
  const seen = {};
  let alive = 0;
  for (const key of shuffled(keys, process.pid)) {
    const fn = async () => {
      await ledger.query(insert, [key, process.pid]);
      return payload(key, 'node');
    };
    const deadline = Date.now() + 30_000;
    let delay = 5;
    for (;;) {
      const r = await once(pool, { namespace, key, fn, ttlMs: 5000, hardTtlMs: 30000 });
      if (!r.executionAlive) {
        seen[key] = { state: r.state, response: r.response, replayed: r.replayed, fence: r.fence, uncertain: r.uncertain };
        break;
      }
      alive += 1;
      if (Date.now() > deadline) throw new Error(`${key}: still alive after 30 s`);
      await sleep(delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 100);
    }
  }
  await print(`result ${JSON.stringify({ language: 'node', pid: process.pid, alive, seen })}`);
  await ledger.end();
  await pool.end();
}

async function one(dsn, namespace, key) {
  const pool = new pg.Pool({ ...connectionConfig(dsn), max: 2 });
  try {
    const r = await once(pool, { namespace, key, fn: () => ({ key, language: 'node', pid: process.pid }) });
    await print(`result ${JSON.stringify(r)}`);
  } finally {
    await pool.end();
  }
}

async function hang(dsn, namespace, key, ttlMs, hardTtlMs) {
  const pool = new pg.Pool({ ...connectionConfig(dsn), max: 2 });
  await once(pool, {
    namespace, key, ttlMs, hardTtlMs,
    fn: async (ctx) => {
      await print(`started ${ctx.fence}`);
      await new Promise(() => { setInterval(() => {}, 1 << 30); }); // never returns
    },
  });
}

const [mode, dsn, namespace, ...rest] = process.argv.slice(2);
try {
  if (mode === 'race') {
    const [ledgerTable, barrierLock, ...keys] = rest;
    await race(dsn, namespace, ledgerTable, Number(barrierLock), keys);
  } else if (mode === 'once') {
    await one(dsn, namespace, rest[0]);
  } else if (mode === 'hang') {
    await hang(dsn, namespace, rest[0], Number(rest[1]), Number(rest[2]));
  } else {
    console.error('usage: node worker.js race|once|hang DSN NAMESPACE ...');
    process.exit(2);
  }
} catch (err) {
  console.error(err);
  process.exit(1);
}

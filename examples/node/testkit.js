// Shared by the tests (kept out of test/, where node --test would run it as a test file): a pool on the test database, the schema, unique
// namespaces, and waits on real conditions with deadlines.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import pg from 'pg';

import { connectionConfig } from './sentinel.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const EXAMPLE_DIR = here;
export const ROOT = path.resolve(EXAMPLE_DIR, '..', '..');

/** The test database: SENTINEL_TEST_DSN, else libpq's PG* variables ('-'). */
export const DSN = process.env.SENTINEL_TEST_DSN || '-';

export function makePool(max = 6) {
  const pool = new pg.Pool({
    ...connectionConfig(DSN), max, application_name: 'sentinel-node-test',
  });
  pool.on('error', () => {}); // an idle client lost its connection; the pool replaces it
  return pool;
}

/**
 * Installs the current schema (sql/schema/*.sql, in order) when the database
 * has none, and records every migration with the checksum of its file, as
 * sentinel.init_db does; under the installers' advisory lock (the one init_db
 * takes), so parallel test files and other installers never race.
 */
export async function ensureSchema(pool) {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query("select pg_advisory_xact_lock(hashtext('sentinel.init_db'))");
    const { rows } = await client.query("select to_regnamespace('sentinel') is null as missing");
    if (rows[0].missing) {
      const dir = path.join(ROOT, 'sql', 'schema');
      for (const name of fs.readdirSync(dir).filter((n) => /^\d\d_.*\.sql$/.test(n)).sort()) {
        await client.query(fs.readFileSync(path.join(dir, name), 'utf8'));
      }
      const migrations = path.join(ROOT, 'sql', 'migrations');
      for (const name of fs.readdirSync(migrations).filter((n) => n.endsWith('.sql')).sort()) {
        const text = fs.readFileSync(path.join(migrations, name), 'utf8');
        await client.query('insert into sentinel.migrations (id, name, checksum) values ($1, $2, $3)',
          [Number(name.slice(0, 4)), name.slice(0, -4), crypto.createHash('sha256').update(text, 'utf8').digest('hex')]);
      }
    }
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

export const uniqueNamespace = () => `node-${crypto.randomBytes(8).toString('hex')}`;

/** DSN with the login of another role: user and password appended (the last one wins, in a URL or a key=value string). */
export function dsnAs(user, password) {
  if (/^postgres(ql)?:\/\//.test(DSN)) {
    const q = `user=${encodeURIComponent(user)}&password=${encodeURIComponent(password)}`;
    return `${DSN}${DSN.includes('?') ? '&' : '?'}${q}`;
  }
  return `${DSN === '-' ? '' : DSN} user=${user} password=${password}`;
}

/**
 * A login role with a password of its own, created through the admin pool and
 * granted with grant_v2 on one namespace ({namespace}), with grant_v1 on every
 * namespace and the legacy tokenless calls ({legacy: true}), or nothing.
 * Returns {role, dsn, pool (logged in as the role), drop()}.
 */
export async function loginRole(admin, { namespace = null, legacy = false } = {}) {
  const role = `node_${crypto.randomBytes(6).toString('hex')}`;
  const password = crypto.randomBytes(16).toString('hex');
  await admin.query(`create role ${role} login password '${password}'`);
  if (legacy) await admin.query('select sentinel.grant_v1($1)', [role]);
  else if (namespace !== null) await admin.query('select sentinel.grant_v2($1, $2)', [role, namespace]);
  const dsn = dsnAs(role, password);
  const pool = new pg.Pool({ ...connectionConfig(dsn), max: 4, application_name: 'sentinel-node-test' });
  pool.on('error', () => {});
  return {
    role,
    dsn,
    pool,
    async drop() {
      await pool.end();
      await admin.query('delete from sentinel.rights where role = to_regrole($1)', [role]);
      await admin.query('delete from sentinel.watchers where role = to_regrole($1)', [role]);
      await admin.query(`drop owned by ${role}`);
      await admin.query(`drop role ${role}`);
    },
  };
}

/** Polls fn until it returns a truthy value (returned), or fails after timeoutMs naming what. */
export async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** One value from the database. */
export async function scalar(pool, text, values = []) {
  const { rows } = await pool.query({ text, values, rowMode: 'array' });
  return rows[0]?.[0];
}

/** True once the database clock says the lease of (ns, key) has lapsed. */
export const leaseLapsed = (pool, ns, key) =>
  scalar(pool, 'select lease_expires_at <= now from sentinel.inspect_v1($1, $2)', [ns, key]);

/** True once the database clock is ms past the claim while the lease is still ahead: only heartbeats do that. */
export const renewedPast = (pool, ns, key, ms) =>
  scalar(pool, `select now >= claimed_at + $3 * interval '1 millisecond' and lease_expires_at > now
                  from sentinel.inspect_v1($1, $2)`, [ns, key, ms]);

/** Resolves once ctx.signal is aborted (the lease is lost); rejects after timeoutMs, so no test hangs. */
export function untilLost(ctx, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the lease was not lost within ${timeoutMs} ms`)), timeoutMs);
    ctx.signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** A promise and the function that resolves it. */
export function gate() {
  let open;
  const opened = new Promise((resolve) => { open = resolve; });
  return { opened, open };
}

/** Spawns `node worker.js ARGS...`; expect(prefix, ms) returns its next stdout line with that prefix. */
export function spawnWorker(...args) {
  const child = spawn(process.execPath, [path.join(EXAMPLE_DIR, 'worker.js'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const rl = readline.createInterface({ input: child.stdout });
  const queue = [];
  let waiter = null;
  let closed = false;
  rl.on('line', (line) => {
    queue.push(line);
    if (waiter) waiter();
  });
  rl.on('close', () => {
    closed = true;
    if (waiter) waiter();
  });
  return {
    child,
    stderr: () => stderr,
    /** The next stdout line starting with prefix, within timeoutMs. */
    async expect(prefix, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        while (queue.length) {
          const line = queue.shift();
          if (line.startsWith(prefix)) return line.slice(prefix.length);
        }
        const remaining = deadline - Date.now();
        if (closed || remaining <= 0) {
          throw new Error(`worker ${args[0]}: no line "${prefix}..." within ${timeoutMs} ms ` +
            `(exit ${child.exitCode}); stderr: ${stderr}`);
        }
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, remaining);
          waiter = () => { clearTimeout(timer); resolve(); };
        });
        waiter = null;
      }
    },
  };
}

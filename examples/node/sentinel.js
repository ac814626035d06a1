// A Node.js client of the Sentinel SQL protocol (docs/protocol.md).
//
//   import pg from 'pg';
//   import { once } from './sentinel.js';
//
//   // query_timeout: a bound on the wait for each reply (a hung proxy or a frozen server acknowledges
//   // and never answers; no TCP timeout sees that). The Python driver's reply_timeout is the same idea.
//   const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, query_timeout: 10000 });
//   const result = await once(pool, {
//     namespace: 'payments', key: 'payment-order-789', ttlMs: 3000, hardTtlMs: 30000,
//     fn: async (ctx) => chargeCard({ amount: 9900, idempotencyKey: `${ctx.key}:${ctx.fence}` }),
//   });
//   if (result.executionAlive) { /* someone else is running it now: ask again later */ }
//   else if (result.uncertain) { /* the outcome is unknown: reconcile before retrying */ }
//   else { return result.response; }   // fresh or replayed
//
// Like the Python driver it holds no protocol logic of its own: every decision
// is taken by the database functions. once() = acquire_v1 (straight to
// executing), run fn while a timer renews the lease every ttlMs / 3 on a
// client of its own, then complete_v1 or fail_v1 (abandon_v1 when the result
// cannot be stored). Every call is one autocommit statement.
//
// Pool sizing: while fn runs, once() holds one client of the pool for its
// heartbeat; give the pool at least (concurrent once() calls) * 2 clients if fn
// itself uses the same pool.

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';

import pg from 'pg';

// The protocol's limits and SQLSTATEs, defined once for every client (sql/protocol.json).
const PROTOCOL = JSON.parse(readFileSync(new URL('../../sql/protocol.json', import.meta.url), 'utf8'));
const LIMITS = PROTOCOL.limits;

export const API_VERSION = 1;
export const MAX_KEY_BYTES = LIMITS.max_key_bytes;
export const MAX_TTL_MS = LIMITS.max_ttl_ms;
const MAX_REASON_CHARS = LIMITS.max_reason_chars;
const MAX_FINGERPRINT_CHARS = LIMITS.max_fingerprint_chars;
const NAMESPACE_RE = new RegExp(LIMITS.namespace_pattern);

// --- errors -----------------------------------------------------------------

export class SentinelError extends Error {
  constructor(message, props = {}) {
    super(message, props.cause ? { cause: props.cause } : undefined);
    this.name = 'SentinelError';
    for (const [k, v] of Object.entries(props)) if (k !== 'cause') this[k] = v;
  }
}

/** The database could not be reached (or the connection broke) before anything ran. */
export class DatabaseUnavailable extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'DatabaseUnavailable'; }
}

/** The schema is missing, or does not provide protocol version 1. */
export class SchemaError extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'SchemaError'; }
}

/** The key was first used with another fingerprint. */
export class KeyMismatch extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'KeyMismatch'; }
}

/** fn ran, but the key was reconciled meanwhile: its response (in .response) was not recorded. */
export class FencedOut extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'FencedOut'; }
}

/** fn ran, but its return value cannot be stored as JSON: the key is marked uncertain. */
export class ResultNotSerializable extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'ResultNotSerializable'; }
}

/** Misuse refused by the database with a documented SQLSTATE of class SN (in .code). */
export class ProtocolError extends SentinelError {
  constructor(message, props) { super(message, props); this.name = ProtocolError.names[props.code] ?? 'ProtocolError'; }

  static names = Object.fromEntries(Object.entries(PROTOCOL.sqlstates).map(([code, e]) => [code, e.class]));
}

/** True for errors that mean "the connection failed or broke", not "the database said no". */
export function isConnectionError(err) {
  if (!err) return false;
  const code = typeof err.code === 'string' ? err.code : '';
  if (code.startsWith('08') || ['57P01', '57P02', '57P03', '53300'].includes(code)) return true;
  if (/^E[A-Z]+$/.test(code)) return true; // ECONNREFUSED, ECONNRESET, EPIPE, ENOENT (socket), ...
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Connection ended|not queryable/i
    .test(String(err.message));
}

function wrapError(err, what) {
  if (err instanceof SentinelError) return err;
  if (isConnectionError(err)) {
    return new DatabaseUnavailable(`sentinel: ${what}: database unavailable (${err.message})`, { cause: err });
  }
  if (typeof err?.code === 'string' && err.code.startsWith('SN')) {
    return new ProtocolError(err.message, { code: err.code, cause: err });
  }
  if (err?.code === '3F000' || err?.code === '42883') {
    return new SchemaError(
      `sentinel: ${what}: the sentinel schema (protocol v${API_VERSION}) is missing: ` +
      'install it with `sentinel migrate` (or psql -f sql/schema.sql)', { cause: err });
  }
  return err;
}

// --- connections ------------------------------------------------------------------

/**
 * A pg Pool/Client config from a libpq connection string: a URL
 * (postgresql://user@host/db?host=/socket/dir, which pg parses itself), a
 * keyword/value string (host=/tmp dbname=app user=me, what psycopg and libpq
 * also accept), or '' / '-' / undefined for libpq's PG* variables, which pg reads.
 */
export function connectionConfig(dsn) {
  if (!dsn || dsn === '-') return {};
  if (/^postgres(ql)?:\/\//.test(dsn)) return { connectionString: dsn };
  const config = {};
  const re = /\s*([A-Za-z_]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|((?:[^\s'\\]|\\.)*))/gy;
  let m;
  let end = 0;
  while ((m = re.exec(dsn)) !== null && m[0] !== '') {
    end = re.lastIndex;
    const value = (m[2] ?? m[3]).replace(/\\(.)/g, '$1');
    switch (m[1]) {
      case 'host': case 'hostaddr': config.host = value; break;
      case 'port': config.port = Number(value); break;
      case 'user': config.user = value; break;
      case 'password': config.password = value; break;
      case 'dbname': config.database = value; break;
      case 'application_name': config.application_name = value; break;
      case 'connect_timeout': config.connectionTimeoutMillis = Number(value) * 1000; break;
      case 'sslmode':
        config.ssl = value === 'disable' || value === 'allow' || value === 'prefer' ? false
          : value === 'require' ? { rejectUnauthorized: false } : true;
        break;
      default: break; // other libpq keywords have no pg equivalent here
    }
  }
  if (dsn.slice(end).trim() !== '') throw new TypeError(`cannot parse the connection string near ${JSON.stringify(dsn.slice(end))}`);
  return config;
}

// --- values -------------------------------------------------------------------

// bigint columns (fence) as Numbers while they are exact; jsonb, timestamptz as pg parses them.
const INT8_OID = 20;
function parseInt8(text) {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : BigInt(text);
}
const TYPES = {
  getTypeParser: (oid, format) => (oid === INT8_OID ? parseInt8 : pg.types.getTypeParser(oid, format)),
};

async function query(conn, text, values) {
  const res = await conn.query({ text, values, types: TYPES });
  return res.rows[0];
}

let ownerTag = null;
/** This process's owner tag, host:pid:random (for diagnostics only). */
export function owner() {
  if (!ownerTag || !ownerTag.includes(`:${process.pid}:`)) {
    ownerTag = `${os.hostname().slice(0, 120)}:${process.pid}:${crypto.randomBytes(4).toString('hex')}`;
  }
  return ownerTag;
}

function checkKey(key) {
  if (typeof key !== 'string') throw new ProtocolError(`key must be a string, got ${typeof key}`, { code: 'SN001' });
  if (key === '') throw new ProtocolError('key must be a non-empty string', { code: 'SN001' });
  if (key.includes('\0')) throw new ProtocolError('key must not contain NUL characters', { code: 'SN001' });
  const size = Buffer.byteLength(key, 'utf8');
  if (size > MAX_KEY_BYTES) {
    throw new ProtocolError(`key is ${size} bytes long in UTF-8; the maximum is ${MAX_KEY_BYTES}`, { code: 'SN001' });
  }
}

function checkNamespace(ns) {
  if (typeof ns !== 'string' || !NAMESPACE_RE.test(ns)) {
    throw new ProtocolError(
      `invalid namespace ${JSON.stringify(ns)}: use 1 to 63 characters of a-z, 0-9, '_', '.' or '-', starting with a letter or digit`,
      { code: 'SN002' });
  }
}

function checkTtl(name, value) {
  if (!Number.isSafeInteger(value) || value <= 0 || value > MAX_TTL_MS) {
    throw new ProtocolError(`${name} must be an integer number of milliseconds between 1 and ${MAX_TTL_MS}, got ${value}`,
      { code: 'SN003' });
  }
}

// A lone surrogate (half of a UTF-16 pair) has no UTF-8 form: jsonb refuses its
// \uXXXX escape. Spelled out as text, so the user's error is still recorded.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function errorDocument(err) {
  const type = err?.constructor?.name ?? typeof err;
  const message = String(err?.message ?? err)
    .replace(LONE_SURROGATE, (c) => `\\u${c.charCodeAt(0).toString(16)}`)
    .replaceAll('\0', '\\0').slice(0, 4000);
  return JSON.stringify({ type: `node.${type}`, message });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- the protocol calls ----------------------------------------------------------

const ACQUIRE_SQL =
  'select outcome, fence, state, attempt, response, error, claimed_at, lease_expires_at, hard_expires_at, now ' +
  'from sentinel.acquire_v1(namespace => $1, key => $2, owner => $3, ttl_ms => $4, hard_ttl_ms => $5, ' +
  'start => true, fingerprint => $6)';
const HEARTBEAT_SQL = 'select alive, state, lease_expires_at from sentinel.heartbeat_v1($1, $2, $3)';
const COMPLETE_SQL = 'select outcome, state, fence from sentinel.complete_v1($1, $2, $3, $4::jsonb)';
const FAIL_SQL = 'select outcome, state, fence from sentinel.fail_v1($1, $2, $3, $4::jsonb, false)';
const ABANDON_SQL = 'select outcome, state, fence from sentinel.abandon_v1($1, $2, $3, $4)';

const checkedPools = new WeakMap();

/** Once per pool: refuse a database whose schema does not provide protocol v1. */
export function checkSchema(pool) {
  let p = checkedPools.get(pool);
  if (!p) {
    p = (async () => {
      let row;
      try {
        row = await query(pool, 'select sentinel.api_versions() as versions, sentinel.schema_version() as version');
      } catch (err) {
        throw wrapError(err, 'checking the schema');
      }
      if (!row.versions.includes(API_VERSION)) {
        throw new SchemaError(
          `sentinel: the database provides protocol versions [${row.versions}], not ${API_VERSION}: ` +
          'this client is too old for it');
      }
      return row.version;
    })();
    p.catch(() => checkedPools.delete(pool));
    checkedPools.set(pool, p);
  }
  return p;
}

/**
 * Runs fn at most once for (namespace, key) and resolves to a Result:
 *
 *   { namespace, key, state, response, replayed, executionAlive, uncertain,
 *     fence, attempt, error, persisted, hardExpiresAt, failed, completed }
 *
 * Exactly one of these holds: executionAlive (another worker runs it now),
 * uncertain (an execution started and its outcome is unknown: reconcile it),
 * failed (a permanent failure is replayed in error), or completed with
 * response, fresh (replayed false) or replayed.
 *
 * fn(ctx) may be async. ctx carries namespace, key, fence, attempt, claimedAt,
 * hardExpiresAt, leaseExpiresAt (as last renewed), leaseLost and signal (an
 * AbortSignal aborted once a heartbeat finds the execution no longer ours).
 * Its return value is stored as JSON (undefined as null); the fresh caller gets
 * the same decoded JSON that later callers get replayed. A throw is recorded as
 * failed (the next call retries) and rethrown unchanged.
 */
export async function once(pool, {
  namespace = 'default', key, fn, ttlMs = 3000, hardTtlMs, fingerprint = null, log = defaultLog,
} = {}) {
  checkNamespace(namespace);
  checkKey(key);
  if (typeof fn !== 'function') throw new TypeError(`fn must be a function, got ${typeof fn}`);
  checkTtl('ttlMs', ttlMs);
  const hard = hardTtlMs ?? ttlMs;
  checkTtl('hardTtlMs', hard);
  if (hard < ttlMs) throw new ProtocolError(`hardTtlMs (${hard}) must be >= ttlMs (${ttlMs})`, { code: 'SN003' });
  if (fingerprint !== null && (typeof fingerprint !== 'string' || fingerprint === '' || fingerprint.length > MAX_FINGERPRINT_CHARS)) {
    throw new ProtocolError(`fingerprint must be a string of 1 to ${MAX_FINGERPRINT_CHARS} characters`, { code: 'SN004' });
  }

  await checkSchema(pool);
  let row;
  try {
    row = await query(pool, ACQUIRE_SQL, [namespace, key, owner(), ttlMs, hard, fingerprint]);
  } catch (err) {
    throw wrapError(err, `acquiring ${namespace}/${key}`);
  }
  const base = { namespace, key, state: row.state, fence: row.fence, attempt: row.attempt };
  switch (row.outcome) {
    case 'completed':
      return result({ ...base, response: row.response, replayed: true });
    case 'alive':
      return result({ ...base, executionAlive: true, hardExpiresAt: row.hard_expires_at });
    case 'uncertain':
      return result({ ...base, uncertain: true, hardExpiresAt: row.hard_expires_at });
    case 'failed':
      return result({ ...base, replayed: true, error: row.error });
    case 'mismatch':
      throw new KeyMismatch(
        `key ${namespace}/${key} was first used with another fingerprint: a key reused for different work`,
        { namespace, key });
    case 'acquired':
      break;
    default:
      throw new SentinelError(`unexpected acquire outcome ${row.outcome}`);
  }

  // The hard deadline as a local monotonic instant, from the database's clock difference.
  const deadline = performance.now() + Math.max(row.hard_expires_at - row.now, 0);
  const lease = new Heartbeat(pool, namespace, key, row.fence, ttlMs, log);
  const ctx = {
    namespace, key, fence: row.fence, attempt: row.attempt,
    claimedAt: row.claimed_at, hardExpiresAt: row.hard_expires_at,
    signal: lease.controller.signal,
    get leaseLost() { return lease.controller.signal.aborted; },
    get leaseExpiresAt() { return lease.leaseExpiresAt; },
  };
  const rec = (sql, values) => record(pool, sql, values, deadline, log, `${namespace}/${key}`);
  const abandon = (reason) => abandonExecution(pool, namespace, key, row.fence, reason, deadline, log);

  lease.start();
  let value;
  try {
    value = await fn(ctx);
  } catch (err) {
    await lease.stop();
    const r = await rec(FAIL_SQL, [namespace, key, row.fence, errorDocument(err)]);
    if (r?.outcome === 'stale') {
      log('warn', `${namespace}/${key} failed under a stale fence ${row.fence}; the failure was not recorded`);
    } else if (r?.outcome === 'uncertain') {
      // The database's rule: a failure after the lease was lost may follow effects.
      log('warn', `${namespace}/${key} failed after its lease was lost under fence ${row.fence}; ` +
        'the key stays uncertain (the error is kept for the reconciler)');
    }
    throw err;
  }
  await lease.stop();

  let text;
  let recorded;
  try {
    text = JSON.stringify(value === undefined ? null : value);
    if (typeof text !== 'string') throw new TypeError(`JSON.stringify returned ${typeof text}`);
    recorded = JSON.parse(text);
  } catch (err) {
    const marked = await abandon(`result not serialisable: ${err.name}: ${err.message}`.slice(0, MAX_REASON_CHARS));
    throw new ResultNotSerializable(
      `${namespace}/${key}: the function ran but its result could not be serialised to JSON (${err.message}); ` +
      'the key is marked uncertain and will not run again until reconciled',
      { value, recorded: marked, cause: err });
  }

  let r;
  try {
    r = await rec(COMPLETE_SQL, [namespace, key, row.fence, text]);
  } catch (err) {
    if (typeof err?.code === 'string' && err.code.startsWith('22')) {
      // PostgreSQL refused the JSON (say a \u0000 escape in jsonb).
      const marked = await abandon(`result refused by the database: ${err.message}`.slice(0, MAX_REASON_CHARS));
      throw new ResultNotSerializable(
        `${namespace}/${key}: the function ran but PostgreSQL refused its result as jsonb (${err.message}); ` +
        'the key is marked uncertain and will not run again until reconciled',
        { value, recorded: marked, cause: err });
    }
    throw wrapError(err, `recording ${namespace}/${key}`);
  }
  if (r === null) {
    log('error', `${namespace}/${key} ran under fence ${row.fence} but its response could not be recorded ` +
      'before the hard deadline; other callers will see it uncertain');
    return result({ ...base, state: 'executing', response: recorded, persisted: false, hardExpiresAt: row.hard_expires_at });
  }
  if (r.outcome === 'stale') {
    throw new FencedOut(
      `${namespace}/${key}: the function ran under fence ${row.fence}, but the key was reconciled meanwhile ` +
      `(state now ${r.state}); its response was not recorded`,
      { response: recorded, fence: row.fence, state: r.state });
  }
  return result({ ...base, state: 'completed', response: recorded, hardExpiresAt: row.hard_expires_at });
}

function result(fields) {
  const r = {
    namespace: fields.namespace,
    key: fields.key,
    state: fields.state,
    response: fields.response ?? null,
    replayed: fields.replayed ?? false,
    executionAlive: fields.executionAlive ?? false,
    uncertain: fields.uncertain ?? false,
    fence: fields.fence ?? null,
    attempt: fields.attempt ?? null,
    error: fields.error ?? null,
    persisted: fields.persisted ?? true,
    hardExpiresAt: fields.hardExpiresAt ?? null,
  };
  r.failed = r.state === 'failed';
  r.completed = r.state === 'completed';
  return Object.freeze(r);
}

function defaultLog(level, message) {
  if (level !== 'debug') console.error(`sentinel ${level}: ${message}`);
}

/**
 * Runs a recording call (complete_v1, fail_v1, abandon_v1), retrying on a fresh
 * client while the connection fails, until the deadline. Resolves to the row,
 * or null if the database stayed out of reach. Other errors are thrown. A call
 * that committed but whose answer was lost comes back as 'already_recorded'.
 */
async function record(pool, sql, values, deadline, log, what) {
  let delay = 50;
  for (;;) {
    try {
      return await query(pool, sql, values);
    } catch (err) {
      if (!isConnectionError(err)) throw err;
      const remaining = deadline - performance.now();
      if (remaining <= 0) return null;
      log('warn', `${what}: recording failed (${err.message}); retrying for up to ${(remaining / 1000).toFixed(1)} s`);
      await sleep(Math.min(delay * (0.5 + Math.random()), remaining));
      delay = Math.min(delay * 2, 1000);
    }
  }
}

async function abandonExecution(pool, namespace, key, fence, reason, deadline, log) {
  try {
    const r = await record(pool, ABANDON_SQL, [namespace, key, fence, reason], deadline, log, `${namespace}/${key}`);
    if (r === null) {
      log('error', `${namespace}/${key}: could not be marked uncertain (database unavailable); it will read ` +
        'uncertain once its lease lapses');
      return false;
    }
    log('warn', `${namespace}/${key} marked ${r.outcome}: ${reason}`);
    return r.outcome === 'uncertain' || r.outcome === 'released';
  } catch (err) {
    log('error', `${namespace}/${key}: could not be marked uncertain: ${err.message}`);
    return false;
  }
}

/**
 * Renews one execution's lease every ttlMs / 3 with heartbeat_v1, on a client
 * of its own checked out of the pool at the first beat. A lost connection costs
 * one beat: the next beat takes a fresh client. When the database answers
 * alive = false the AbortController is aborted and the timer stops: the
 * execution is no longer ours (lease lapsed, hard deadline passed, or the key
 * was reconciled under a new fence).
 */
class Heartbeat {
  constructor(pool, namespace, key, fence, ttlMs, log) {
    Object.assign(this, { pool, namespace, key, fence, log });
    this.intervalMs = Math.max(Math.floor(ttlMs / 3), 10);
    this.controller = new AbortController();
    this.client = null;
    this.timer = null;
    this.inFlight = null;
    this.leaseExpiresAt = null;
    this.beats = 0;
  }

  start() {
    this.timer = setInterval(() => {
      if (!this.inFlight) this.inFlight = this.beat().finally(() => { this.inFlight = null; });
    }, this.intervalMs);
  }

  async beat() {
    const what = `${this.namespace}/${this.key}`;
    try {
      this.client ??= await this.pool.connect();
      const row = await query(this.client, HEARTBEAT_SQL, [this.namespace, this.key, this.fence]);
      this.beats += 1;
      if (row.alive) {
        this.leaseExpiresAt = row.lease_expires_at;
        return;
      }
      this.log('warn', `${what}: lease lost under fence ${this.fence} (state now ${row.state ?? 'gone'})`);
      clearInterval(this.timer);
      this.controller.abort(new SentinelError(`${what}: lease lost under fence ${this.fence} (state ${row.state})`));
    } catch (err) {
      this.log('warn', `${what}: heartbeat failed (${err.message}); retrying at the next beat`);
      if (this.client) {
        this.client.release(err); // destroys the client: the next beat connects afresh
        this.client = null;
      }
    }
  }

  async stop() {
    clearInterval(this.timer);
    if (this.inFlight) await this.inFlight;
    if (this.client) {
      this.client.release();
      this.client = null;
    }
  }
}

// --- operator calls (thin wrappers) ---------------------------------------------

/** The execution record of (namespace, key) as inspect_v1 shows it, or null. */
export async function inspect(pool, { namespace = 'default', key }) {
  try {
    return (await query(pool, 'select * from sentinel.inspect_v1($1, $2)', [namespace, key])) ?? null;
  } catch (err) {
    throw wrapError(err, `inspecting ${namespace}/${key}`);
  }
}

/** reconcile_v1: resolve a key as completed (with response), failed, or release it. */
export async function reconcile(pool, {
  namespace = 'default', key, action, actor, reason, response = null, error = null, force = false,
}) {
  const json = (v) => (v === null || v === undefined ? null : JSON.stringify(v));
  try {
    return await query(pool,
      'select * from sentinel.reconcile_v1($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)',
      [namespace, key, action, actor, reason, action === 'completed' ? JSON.stringify(response) : json(response),
        json(error), force]);
  } catch (err) {
    throw wrapError(err, `reconciling ${namespace}/${key}`);
  }
}

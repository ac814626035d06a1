// A Node.js client of the Sentinel SQL protocol, version 3 (docs/protocol.md).
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
// Like the Python driver it holds no protocol logic of its own: the database
// functions take every decision (the argument rules, the outcomes, the
// fencing); this client runs them, renews the lease and reports what they
// answered. once() draws a random token, the proof of its claim, and calls
// acquire_v2 with it (straight to executing); it runs fn while a timer renews
// the lease every ttlMs / 3 with heartbeat_v2 on a client of its own, then
// records complete_v3 or fail_v3 (abandon_v2 when the result cannot be
// stored), each presenting the token. Every call is one autocommit statement.
// These are the calls of protocol version 3, which a role granted one
// namespace (`sentinel grant ROLE --namespace NS`, select
// sentinel.grant_v2('role', 'ns')) may execute.
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

/** The protocol version this client speaks: the database must list it in api_versions(). */
export const API_VERSION = 3;
// abandon_v2 refuses a longer reason; the reasons this client writes are cut to it.
const MAX_REASON_CHARS = PROTOCOL.limits.max_reason_chars;

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

/** The schema is missing, or does not provide protocol version 3. */
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

/**
 * fn ran, but complete_v3 answered conflict: the record under its fence already holds another
 * response, which stands and which every replay serves. Only the holder of the claim's token can
 * record under it, so that response was written without the token, by a role that still has the
 * legacy complete_v1/complete_v2. .response holds what fn returned; inspect the key's events and
 * reconcile it if the stored response is wrong.
 */
export class RecordConflict extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'RecordConflict'; }
}

/** The database role may not make this call (SQLSTATE 42501); the message names the grant to ask for. */
export class PermissionDenied extends SentinelError {
  constructor(message, props) { super(message, props); this.name = 'PermissionDenied'; }
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
  if (err?.code === '42501') {
    // A right missing in a namespace: the database names the role, the namespace and the grant
    // in its hint. A function this role may not execute at all: name the grant that gives it.
    const message = err.hint ? `${err.message}; ${err.hint}`
      : `${err.message}: the schema owner grants what an application needs in a namespace with ` +
        "`sentinel grant <role> --namespace <ns>` (or `select sentinel.grant_v2('<role>', '<ns>')`)";
    return new PermissionDenied(`sentinel: ${what}: ${message.replace(/^sentinel: /, '')}`,
      { code: err.code, cause: err });
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

// What JavaScript cannot hand over as the SQL types expect. Every rule on the
// values themselves (lengths, ranges, the namespace pattern, hard >= ttl) is the
// database's: acquire_v2 refuses them with a SQLSTATE of class SN, raised here as
// the ProtocolError of that name, before anything runs.
function checkTypes({ namespace, key, fn, ttlMs, hardTtlMs, fingerprint }) {
  for (const [name, value, code] of [['namespace', namespace, 'SN002'], ['key', key, 'SN001']]) {
    if (typeof value !== 'string') throw new ProtocolError(`${name} must be a string, got ${typeof value}`, { code });
    // PostgreSQL text cannot hold NUL: the database would never see such a value.
    if (value.includes('\0')) throw new ProtocolError(`${name} must not contain NUL characters`, { code });
  }
  if (typeof fn !== 'function') throw new TypeError(`fn must be a function, got ${typeof fn}`);
  for (const [name, value] of [['ttlMs', ttlMs], ['hardTtlMs', hardTtlMs ?? 1]]) {
    if (!Number.isSafeInteger(value)) {
      throw new ProtocolError(`${name} must be an integer number of milliseconds, got ${value}`, { code: 'SN003' });
    }
  }
  if (fingerprint !== null && typeof fingerprint !== 'string') {
    throw new ProtocolError(`fingerprint must be a string or null, got ${typeof fingerprint}`, { code: 'SN004' });
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

// Protocol version 3: the calls that change a claim present the token given to acquire_v2.
const ACQUIRE_SQL =
  'select outcome, fence, state, attempt, response, error, claimed_at, lease_expires_at, hard_expires_at, now ' +
  'from sentinel.acquire_v2(namespace => $1, key => $2, owner => $3, ttl_ms => $4, hard_ttl_ms => $5, ' +
  'start => true, fingerprint => $6, token => $7)';
const HEARTBEAT_SQL = 'select alive, state, lease_expires_at from sentinel.heartbeat_v2($1, $2, $3, $4)';
const COMPLETE_SQL = 'select outcome, state, fence from sentinel.complete_v3($1, $2, $3, $4, $5::jsonb, null)';
const FAIL_SQL = 'select outcome, state, fence from sentinel.fail_v3($1, $2, $3, $4, $5::jsonb, false, null)';
const ABANDON_SQL = 'select outcome, state, fence from sentinel.abandon_v2($1, $2, $3, $4, $5)';

/** A fresh proof of a claim: 32 hex digits from the operating system's random source. */
const newToken = () => crypto.randomBytes(16).toString('hex');

const checkedPools = new WeakMap();

/** Once per pool: refuse a database whose schema does not provide protocol version 3. */
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
          (Math.max(...row.versions) < API_VERSION
            ? `its schema (version ${row.version}) is older than this client: upgrade it with \`sentinel migrate\``
            : 'this client is too old for it'));
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
 *
 * Rejects with ProtocolError (an argument the database refused: nothing ran),
 * PermissionDenied (this role has no right in the namespace: nothing ran),
 * KeyMismatch, FencedOut (the key was reconciled while fn ran), RecordConflict
 * (the fence already holds another response, written without the claim's
 * token) or ResultNotSerializable.
 */
export async function once(pool, {
  namespace = 'default', key, fn, ttlMs = 3000, hardTtlMs = null, fingerprint = null, log = defaultLog,
} = {}) {
  checkTypes({ namespace, key, fn, ttlMs, hardTtlMs, fingerprint });
  await checkSchema(pool);
  const token = newToken();
  let row;
  try {
    row = await query(pool, ACQUIRE_SQL, [namespace, key, owner(), ttlMs, hardTtlMs, fingerprint, token]);
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

  const what = `${namespace}/${key}`;
  const fence = row.fence;
  // The hard deadline as a local monotonic instant, from the database's clock difference:
  // recordings are retried until then.
  const deadline = performance.now() + Math.max(row.hard_expires_at - row.now, 0);
  const lease = new Heartbeat(pool, namespace, key, fence, token, ttlMs, log);
  const ctx = {
    namespace, key, fence, attempt: row.attempt,
    claimedAt: row.claimed_at, hardExpiresAt: row.hard_expires_at,
    signal: lease.controller.signal,
    get leaseLost() { return lease.controller.signal.aborted; },
    get leaseExpiresAt() { return lease.leaseExpiresAt; },
  };
  const rec = (sql, ...values) => record(pool, sql, [namespace, key, fence, token, ...values], deadline, log, what);
  const abandon = (reason) => abandonExecution(rec, reason.slice(0, MAX_REASON_CHARS), log, what);

  lease.start();
  let value;
  try {
    value = await fn(ctx);
  } catch (err) {
    await lease.stop();
    const r = await rec(FAIL_SQL, errorDocument(err));
    switch (r?.outcome) {
      case 'recorded': case 'already_recorded':
        break;
      case 'uncertain': // a failure after the lease was lost may follow effects
        log('warn', `${what} failed after its lease was lost under fence ${fence}; ` +
          'the key stays uncertain (the error is kept for the reconciler)');
        break;
      case 'conflict':
        log('error', `${what} failed under fence ${fence}, but that fence already holds another error, which ` +
          'stands (recorded without the claim\'s token); inspect the key\'s events');
        break;
      case undefined:
        log('error', `${what} failed under fence ${fence}; the failure could not be recorded before the hard ` +
          'deadline: other callers will see the key uncertain');
        break;
      default: // stale
        log('warn', `${what} failed under fence ${fence}, which is no longer current (state now ${r.state}); ` +
          'the failure was not recorded');
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
    const marked = await abandon(`result not serialisable: ${err.name}: ${err.message}`);
    throw new ResultNotSerializable(
      `${what}: the function ran but its result could not be serialised to JSON (${err.message}); ` +
      'the key is marked uncertain and will not run again until reconciled',
      { value, recorded: marked, cause: err });
  }

  let r;
  try {
    r = await rec(COMPLETE_SQL, text);
  } catch (err) {
    if (typeof err?.code === 'string' && (err.code.startsWith('22') || err.code === 'SN015')) {
      // PostgreSQL refused the JSON (say a \u0000 escape in jsonb), or it is over the DBA's cap.
      const marked = await abandon(`result refused by the database: ${err.message}`);
      throw new ResultNotSerializable(
        `${what}: the function ran but the database refused to store its result (${err.message}); ` +
        'the key is marked uncertain and will not run again until reconciled',
        { value, recorded: marked, cause: err });
    }
    throw wrapError(err, `recording ${what}`);
  }
  const ran = { ...base, response: recorded, hardExpiresAt: row.hard_expires_at };
  switch (r?.outcome) {
    case 'recorded': case 'already_recorded':
      return result({ ...ran, state: r.state });
    case undefined:
      log('error', `${what} ran under fence ${fence} but its response could not be recorded ` +
        'before the hard deadline; other callers will see it uncertain');
      return result({ ...ran, state: 'executing', persisted: false });
    case 'stale':
      throw new FencedOut(
        `${what}: the function ran under fence ${fence}, but the key was reconciled meanwhile ` +
        `(state now ${r.state}); its response was not recorded`,
        { response: recorded, fence, state: r.state });
    case 'conflict':
      log('error', `${what}: the function ran under fence ${fence}, but that fence already holds another ` +
        'response, which stands (recorded without the claim\'s token)');
      throw new RecordConflict(
        `${what}: the function ran under fence ${fence}, but the record under that fence holds another response, ` +
        'which every replay serves; it was written without the claim\'s token (a role with the legacy ' +
        'complete_v1/complete_v2): see the key\'s events (sentinel events) and reconcile it',
        { response: recorded, fence, state: r.state });
    default:
      throw new SentinelError(`${what}: unexpected outcome ${r.outcome} from complete_v3`);
  }
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

// A lock timeout or a serialization failure wrote nothing and leaves the connection usable.
const RETRY_SQLSTATES = new Set(['55P03', '40001', '40P01']);

/**
 * Runs a recording call (complete_v3, fail_v3, abandon_v2), retrying on a fresh
 * client while the connection fails (or a lock timeout or serialization failure
 * aborts it), until the deadline. Resolves to the row, or null if no answer came
 * before the deadline. Other errors are thrown. A call that committed but whose
 * answer was lost is asked again with the same token: the database answers
 * already_recorded.
 */
async function record(pool, sql, values, deadline, log, what) {
  let delay = 50;
  for (;;) {
    try {
      return await query(pool, sql, values);
    } catch (err) {
      if (!isConnectionError(err) && !RETRY_SQLSTATES.has(err?.code)) throw err;
      const remaining = deadline - performance.now();
      if (remaining <= 0) return null;
      log('warn', `${what}: recording failed (${err.message}); retrying for up to ${(remaining / 1000).toFixed(1)} s`);
      await sleep(Math.min(delay * (0.5 + Math.random()), remaining));
      delay = Math.min(delay * 2, 1000);
    }
  }
}

/** Marks our execution uncertain with abandon_v2; true if the database recorded it (or released the claim). */
async function abandonExecution(rec, reason, log, what) {
  try {
    const r = await rec(ABANDON_SQL, reason);
    if (r === null) {
      log('error', `${what}: could not be marked uncertain (database unavailable); it will read ` +
        'uncertain once its lease lapses');
      return false;
    }
    log('warn', `${what} marked ${r.outcome}: ${reason}`);
    return r.outcome === 'uncertain' || r.outcome === 'released';
  } catch (err) {
    log('error', `${what}: could not be marked uncertain: ${err.message}`);
    return false;
  }
}

/**
 * Renews one execution's lease every ttlMs / 3 with heartbeat_v2 (presenting the
 * claim's token), on a client of its own checked out of the pool at the first
 * beat. A lost connection costs one beat: the next beat takes a fresh client.
 * When the database answers alive = false the AbortController is aborted and the
 * timer stops: the execution is no longer ours (lease lapsed, hard deadline
 * passed, or the key was reconciled or recorded meanwhile).
 */
class Heartbeat {
  constructor(pool, namespace, key, fence, token, ttlMs, log) {
    Object.assign(this, { pool, namespace, key, fence, token, log });
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
      const row = await query(this.client, HEARTBEAT_SQL, [this.namespace, this.key, this.fence, this.token]);
      this.beats += 1;
      if (row.alive) {
        this.leaseExpiresAt = row.lease_expires_at;
        return;
      }
      this.log('warn', `${what}: lease lost under fence ${this.fence} (state now ${row.state ?? 'gone'})`);
      clearInterval(this.timer);
      this.controller.abort(new SentinelError(`${what}: lease lost under fence ${this.fence} (state ${row.state})`));
    } catch (err) {
      this.log('warn', `${what}: heartbeat failed (${wrapError(err, 'renewing the lease').message}); ` +
        'retrying at the next beat');
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

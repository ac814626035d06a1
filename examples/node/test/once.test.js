// once() from Node against a real PostgreSQL (SENTINEL_TEST_DSN, else PG*).
// Time-dependent checks use short real TTLs and the database's clock; every
// wait polls a real condition with a deadline.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import {
  FencedOut, KeyMismatch, ProtocolError, ResultNotSerializable, inspect, once, reconcile,
} from '../sentinel.js';
import {
  DSN, ensureSchema, gate, leaseLapsed, makePool, renewedPast, spawnWorker, uniqueNamespace, untilLost, waitFor,
} from '../testkit.js';

let pool;
const quiet = () => {};

before(async () => {
  pool = makePool();
  await ensureSchema(pool);
});
after(async () => {
  await pool.end();
});

const T = { timeout: 45_000 };

describe('once()', () => {
  test('a fresh run, then a replay of the same response', T, async () => {
    const namespace = uniqueNamespace();
    let calls = 0;
    const fn = async (ctx) => {
      calls += 1;
      assert.equal(ctx.key, 'order-1');
      assert.equal(ctx.attempt, 1);
      assert.equal(ctx.leaseLost, false);
      return { charged: 9900, note: 'ünïcødé ✓', list: [1, 2.5, null, true], at: new Date(0) };
    };
    const first = await once(pool, { namespace, key: 'order-1', fn, ttlMs: 2000 });
    assert.equal(calls, 1);
    assert.equal(first.replayed, false);
    assert.equal(first.state, 'completed');
    assert.equal(first.completed, true);
    assert.equal(first.executionAlive, false);
    assert.equal(first.uncertain, false);
    assert.equal(first.persisted, true);
    assert.equal(first.attempt, 1);
    assert.equal(typeof first.fence, 'number');
    // The fresh caller gets the decoded JSON, exactly what a replay gets (the Date became a string).
    const expected = { charged: 9900, note: 'ünïcødé ✓', list: [1, 2.5, null, true], at: '1970-01-01T00:00:00.000Z' };
    assert.deepEqual(first.response, expected);

    const second = await once(pool, { namespace, key: 'order-1', fn, ttlMs: 2000 });
    assert.equal(calls, 1, 'a replay must not run the function');
    assert.equal(second.replayed, true);
    assert.equal(second.state, 'completed');
    assert.equal(second.fence, first.fence);
    assert.deepEqual(second.response, expected);

    const row = await inspect(pool, { namespace, key: 'order-1' });
    assert.equal(row.state, 'completed');
    assert.deepEqual(row.response, expected);
  });

  test('undefined is recorded as JSON null', T, async () => {
    const namespace = uniqueNamespace();
    const first = await once(pool, { namespace, key: 'k', fn: () => undefined });
    const second = await once(pool, { namespace, key: 'k', fn: () => 'never' });
    assert.equal(first.response, null);
    assert.equal(second.response, null);
    assert.equal(second.replayed, true);
  });

  test('alive while another execution heartbeats past its TTL; replay afterwards', T, async () => {
    const namespace = uniqueNamespace();
    const release = gate();
    const started = gate();
    const ttlMs = 600;
    const running = once(pool, {
      namespace, key: 'k', ttlMs, hardTtlMs: 60_000,
      fn: async (ctx) => { started.open(ctx); await release.opened; return { by: 'first' }; },
    });
    const ctx = await started.opened;
    let ran = false;
    try {
      // Three TTLs after the claim the lease is still ahead: only heartbeats can do that.
      await waitFor(() => renewedPast(pool, namespace, 'k', 3 * ttlMs), 15_000, 'the lease to be renewed past 3 TTLs');
      assert.ok(ctx.leaseExpiresAt instanceof Date, 'ctx.leaseExpiresAt is set by the heartbeat');

      const other = await once(pool, { namespace, key: 'k', ttlMs, fn: () => { ran = true; } });
      assert.equal(ran, false);
      assert.equal(other.executionAlive, true);
      assert.equal(other.state, 'executing');
      assert.equal(other.fence, ctx.fence);
      assert.equal(other.uncertain, false);
      assert.equal(other.replayed, false);
    } finally {
      release.open();
    }
    const first = await running;
    assert.deepEqual(first.response, { by: 'first' });
    assert.equal(ctx.leaseLost, false);
    const replay = await once(pool, { namespace, key: 'k', fn: () => { ran = true; } });
    assert.equal(ran, false);
    assert.deepEqual(replay.response, { by: 'first' });
    assert.equal(replay.replayed, true);
  });

  test('uncertain after the lease of a killed worker lapses; never run again', T, async () => {
    const namespace = uniqueNamespace();
    const worker = spawnWorker('hang', DSN, namespace, 'k', '500', '60000');
    try {
      const fence = Number(await worker.expect('started ', 15_000));
      worker.child.kill('SIGKILL');
      await waitFor(() => leaseLapsed(pool, namespace, 'k'), 15_000, 'the lease to lapse (database clock)');

      let ran = false;
      const r = await once(pool, { namespace, key: 'k', fn: () => { ran = true; } });
      assert.equal(ran, false, 'an uncertain key must not run again');
      assert.equal(r.uncertain, true);
      assert.equal(r.state, 'uncertain');
      assert.equal(r.fence, fence);
      assert.equal(r.replayed, false);
      assert.equal(r.executionAlive, false);
      const row = await inspect(pool, { namespace, key: 'k' });
      assert.equal(row.stored_state, 'uncertain');
      assert.equal(row.uncertain_reason, 'lease expired');

      // Until an operator resolves it.
      await reconcile(pool, { namespace, key: 'k', action: 'release', actor: 'node-test', reason: 'no effect found' });
      const again = await once(pool, { namespace, key: 'k', fn: () => 'second attempt' });
      assert.equal(again.response, 'second attempt');
      assert.equal(again.attempt, 2);
      assert.ok(again.fence > fence);
    } finally {
      worker.child.kill('SIGKILL');
    }
  });

  test('a failure is recorded, rethrown unchanged, and retried by the next call', T, async () => {
    const namespace = uniqueNamespace();
    const boom = new RangeError('card declined');
    await assert.rejects(once(pool, { namespace, key: 'k', fn: async () => { throw boom; } }), (err) => err === boom);
    const row = await inspect(pool, { namespace, key: 'k' });
    assert.equal(row.state, 'failed');
    assert.deepEqual(row.error, { type: 'node.RangeError', message: 'card declined' });
    assert.equal(row.error_permanent, false);

    const r = await once(pool, { namespace, key: 'k', fn: () => ({ ok: true }) });
    assert.equal(r.replayed, false);
    assert.equal(r.attempt, 2);
    assert.ok(r.fence > row.fence, 'the retry runs under a larger fence');
    assert.deepEqual(r.response, { ok: true });
  });

  test('a lone surrogate in an error message: the error is rethrown unchanged and recorded spelled out', T, async () => {
    const namespace = uniqueNamespace();
    const boom = new Error('cannot export report-\udcff.csv');
    await assert.rejects(once(pool, { namespace, key: 'k', fn: async () => { throw boom; } }), (err) => err === boom);
    const row = await inspect(pool, { namespace, key: 'k' });
    assert.equal(row.state, 'failed');
    assert.equal(row.error.message, 'cannot export report-\\udcff.csv');
  });

  test('a permanent failure is replayed as failed', T, async () => {
    const namespace = uniqueNamespace();
    await assert.rejects(once(pool, { namespace, key: 'k', fn: () => { throw new Error('x'); } }));
    await reconcile(pool, {
      namespace, key: 'k', action: 'failed', actor: 'node-test', reason: 'stolen card', error: { code: 'stolen' },
    });
    let ran = false;
    const r = await once(pool, { namespace, key: 'k', fn: () => { ran = true; } });
    assert.equal(ran, false);
    assert.equal(r.failed, true);
    assert.equal(r.replayed, true);
    assert.deepEqual(r.error, { code: 'stolen' });
  });

  test('fenced out: a late completion after a reconcile is refused; the operator\'s response stays', T, async () => {
    const namespace = uniqueNamespace();
    const started = gate();
    const running = once(pool, {
      namespace, key: 'k', ttlMs: 400, hardTtlMs: 60_000, log: quiet,
      fn: async (ctx) => {
        started.open(ctx);
        await untilLost(ctx, 20_000); // until a heartbeat finds the execution no longer ours
        return { by: 'late worker' };
      },
    });
    const ctx = await started.opened;
    const rec = await reconcile(pool, {
      namespace, key: 'k', action: 'completed', actor: 'node-test', reason: 'done by hand',
      response: { by: 'operator' }, force: true,
    });
    assert.ok(rec.fence > ctx.fence);
    await assert.rejects(running, (err) => {
      assert.ok(err instanceof FencedOut, `expected FencedOut, got ${err}`);
      assert.deepEqual(err.response, { by: 'late worker' });
      assert.equal(err.fence, ctx.fence);
      assert.equal(err.state, 'completed');
      return true;
    });
    assert.equal(ctx.leaseLost, true);
    const replay = await once(pool, { namespace, key: 'k', fn: () => 'never' });
    assert.deepEqual(replay.response, { by: 'operator' });
  });

  test('past the hard deadline the lease is lost, yet the owner\'s completion under its current fence is recorded', T, async () => {
    const namespace = uniqueNamespace();
    const started = gate();
    const running = once(pool, {
      namespace, key: 'k', ttlMs: 300, hardTtlMs: 300, log: quiet,
      fn: async (ctx) => {
        started.open(ctx);
        await untilLost(ctx, 20_000);
        return 'late but known';
      },
    });
    const ctx = await started.opened;
    const r = await running;
    assert.equal(ctx.leaseLost, true);
    assert.equal(r.state, 'completed');
    assert.equal(r.response, 'late but known');
    const row = await inspect(pool, { namespace, key: 'k' });
    assert.equal(row.state, 'completed');
    assert.equal(row.fence, ctx.fence);
  });

  test('a result that cannot be stored marks the key uncertain and is never re-run', T, async () => {
    const namespace = uniqueNamespace();
    await assert.rejects(once(pool, { namespace, key: 'big', fn: () => ({ n: 10n }), log: quiet }), ResultNotSerializable);
    await assert.rejects(once(pool, { namespace, key: 'nul', fn: () => 'a\u0000b', log: quiet }), ResultNotSerializable);
    for (const key of ['big', 'nul']) {
      const row = await inspect(pool, { namespace, key });
      assert.equal(row.stored_state, 'uncertain', key);
      const r = await once(pool, { namespace, key, fn: () => 'never' });
      assert.equal(r.uncertain, true, key);
    }
  });

  test('another fingerprint for the same key raises KeyMismatch', T, async () => {
    const namespace = uniqueNamespace();
    await once(pool, { namespace, key: 'k', fingerprint: 'charge:9900', fn: () => 1 });
    await assert.rejects(once(pool, { namespace, key: 'k', fingerprint: 'charge:1', fn: () => 2 }), KeyMismatch);
  });

  test('bad input is refused before anything runs', T, async () => {
    const fn = () => { throw new Error('must not run'); };
    const cases = [
      [{ namespace: 'Bad Namespace', key: 'k' }, 'InvalidNamespace'],
      [{ namespace: 'ok', key: '' }, 'InvalidKey'],
      [{ namespace: 'ok', key: 'x'.repeat(1025) }, 'InvalidKey'],
      [{ namespace: 'ok', key: 'k', ttlMs: 0 }, 'InvalidTTL'],
      [{ namespace: 'ok', key: 'k', ttlMs: 2000, hardTtlMs: 1000 }, 'InvalidTTL'],
      [{ namespace: 'ok', key: 'k', fingerprint: '' }, 'InvalidText'],
    ];
    for (const [opts, name] of cases) {
      await assert.rejects(once(pool, { ...opts, fn }), (err) => err instanceof ProtocolError && err.name === name);
    }
  });

  test('every SQLSTATE of the protocol table has its name, as in Python', T, async () => {
    const table = JSON.parse(readFileSync(new URL('../../../sql/protocol.json', import.meta.url), 'utf8'));
    for (const [code, entry] of Object.entries(table.sqlstates)) {
      assert.equal(new ProtocolError('x', { code }).name, entry.class, code);
    }
    // one the database raises: an update of the append-only event log
    const { rows } = await pool.query("select count(*)::int as n from sentinel.events");
    assert.ok(rows[0].n >= 0);
    await assert.rejects(
      pool.query("update sentinel.events set reason = 'rewritten'").catch((err) => { throw new ProtocolError(err.message, { code: err.code }); }),
      (err) => err.name === 'AppendOnly');
  });
});

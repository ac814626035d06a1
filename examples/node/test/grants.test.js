// once() as a login role granted one namespace (grant_v2): it may call only the
// token calls of protocol version 3, never the tokenless _v1 ones. And the
// conflict a role with the legacy calls can cause, which once() reports.
// Against a real PostgreSQL (SENTINEL_TEST_DSN, else PG*); every role logs in
// with its own password on connections of its own.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { PermissionDenied, RecordConflict, ResultNotSerializable, inspect, once } from '../sentinel.js';
import {
  ensureSchema, gate, loginRole, makePool, renewedPast, scalar, uniqueNamespace, untilLost, waitFor,
} from '../testkit.js';

let admin;
const roles = [];
const quiet = () => {};

before(async () => {
  admin = makePool();
  await ensureSchema(admin);
});
after(async () => {
  for (const r of roles) await r.drop();
  await admin.end();
});

async function role(options) {
  const r = await loginRole(admin, options);
  roles.push(r);
  return r;
}

const T = { timeout: 45_000 };

describe('a role granted one namespace (grant_v2)', () => {
  test('has none of the tokenless calls, yet runs once() there: heartbeats, completion, failure, abandon', T, async () => {
    const namespace = uniqueNamespace();
    const app = await role({ namespace });
    const legacy = await scalar(admin, `
      select array_agg(f order by f) from unnest(array[
        'sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)',
        'sentinel.heartbeat_v1(text, text, bigint)',
        'sentinel.complete_v1(text, text, bigint, jsonb)',
        'sentinel.complete_v2(text, text, bigint, jsonb, bigint)',
        'sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint)',
        'sentinel.abandon_v1(text, text, bigint, text)']) f
       where has_function_privilege($1, f, 'execute')`, [app.role]);
    assert.equal(legacy, null, `a grant_v2 role must not execute the tokenless calls: ${legacy}`);

    // A run whose lease must be renewed (three TTLs past the claim, only heartbeat_v2 can do that).
    const ttlMs = 600;
    const started = gate();
    const release = gate();
    const running = once(app.pool, {
      namespace, key: 'k', ttlMs, hardTtlMs: 60_000,
      fn: async (ctx) => { started.open(ctx); await release.opened; return { by: app.role }; },
    });
    const ctx = await started.opened;
    try {
      await waitFor(() => renewedPast(admin, namespace, 'k', 3 * ttlMs), 15_000, 'the lease to be renewed past 3 TTLs');
    } finally {
      release.open();
    }
    const first = await running;
    assert.equal(ctx.leaseLost, false);
    assert.equal(first.state, 'completed');
    assert.equal(first.replayed, false);
    assert.deepEqual(first.response, { by: app.role });
    const replay = await once(app.pool, { namespace, key: 'k', fn: () => 'never' });
    assert.equal(replay.replayed, true);
    assert.deepEqual(replay.response, { by: app.role });

    // fail_v3: the failure is recorded, and the next call runs again.
    const boom = new Error('card declined');
    await assert.rejects(once(app.pool, { namespace, key: 'f', fn: () => { throw boom; } }), (err) => err === boom);
    const failed = await inspect(admin, { namespace, key: 'f' });
    assert.equal(failed.state, 'failed');
    assert.deepEqual(failed.error, { type: 'node.Error', message: 'card declined' });

    // abandon_v2: a result that cannot be stored marks the key uncertain.
    await assert.rejects(once(app.pool, { namespace, key: 'big', fn: () => ({ n: 10n }), log: quiet }),
      (err) => err instanceof ResultNotSerializable && err.recorded === true);
    const big = await inspect(admin, { namespace, key: 'big' });
    assert.equal(big.stored_state, 'uncertain');
  });

  test('is refused in another namespace with an error naming the grant; nothing runs', T, async () => {
    const namespace = uniqueNamespace();
    const other = uniqueNamespace();
    const app = await role({ namespace });
    let ran = false;
    await assert.rejects(once(app.pool, { namespace: other, key: 'k', fn: () => { ran = true; } }), (err) => {
      assert.ok(err instanceof PermissionDenied, `expected PermissionDenied, got ${err}`);
      assert.equal(err.code, '42501');
      assert.match(err.message, new RegExp(`role ${app.role} may not claim keys in namespace '${other}'`));
      assert.ok(err.message.includes(`sentinel grant ${app.role} --namespace ${other}`), err.message);
      return true;
    });
    assert.equal(ran, false);
    assert.equal(await inspect(admin, { namespace: other, key: 'k' }), null, 'nothing was claimed');
    const mine = await once(app.pool, { namespace, key: 'k', fn: () => 'mine' });
    assert.equal(mine.response, 'mine');
  });

  test('a role with no grant at all is told which grant to ask for', T, async () => {
    const nobody = await role({});
    let ran = false;
    await assert.rejects(once(nobody.pool, { namespace: uniqueNamespace(), key: 'k', fn: () => { ran = true; } }),
      (err) => {
        assert.ok(err instanceof PermissionDenied, `expected PermissionDenied, got ${err}`);
        assert.ok(err.message.includes('`sentinel grant <role> --namespace <ns>`'), err.message);
        assert.ok(err.message.includes("select sentinel.grant_v2('<role>', '<ns>')"), err.message);
        return true;
      });
    assert.equal(ran, false);
  });
});

describe('conflict', () => {
  test('a legacy role completes the running key without the token: once() rejects with RecordConflict', T, async () => {
    const namespace = uniqueNamespace();
    const app = await role({ namespace });
    const forger = await role({ legacy: true });
    const logged = [];
    const started = gate();
    const running = once(app.pool, {
      namespace, key: 'k', ttlMs: 400, hardTtlMs: 60_000,
      log: (level, message) => logged.push([level, message]),
      fn: async (ctx) => {
        started.open(ctx);
        await untilLost(ctx, 20_000); // the heartbeat finds the key completed by someone else
        return { charged: 100 };
      },
    });
    const ctx = await started.opened;
    const forged = await forger.pool.query(
      'select outcome from sentinel.complete_v1($1, $2, $3, $4::jsonb)', [namespace, 'k', ctx.fence, '{"forged": true}']);
    assert.equal(forged.rows[0].outcome, 'recorded', 'the legacy call records without the token');

    await assert.rejects(running, (err) => {
      assert.ok(err instanceof RecordConflict, `expected RecordConflict, got ${err}`);
      assert.deepEqual(err.response, { charged: 100 });
      assert.equal(err.fence, ctx.fence);
      assert.equal(err.state, 'completed');
      assert.match(err.message, /holds another response/);
      assert.match(err.message, /without the claim's token/);
      return true;
    });
    assert.equal(ctx.leaseLost, true);
    assert.ok(logged.some(([level, m]) => level === 'error' && m.includes('already holds another response')), logged);
    // The stored response stands: every replay serves it.
    const replay = await once(app.pool, { namespace, key: 'k', fn: () => 'never' });
    assert.equal(replay.replayed, true);
    assert.deepEqual(replay.response, { forged: true });
  });
});

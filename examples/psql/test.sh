#!/usr/bin/env bash
# End-to-end test of once.sh against a real PostgreSQL.
#
#   examples/psql/test.sh [DSN]
#
# The server is DSN, else $SENTINEL_TEST_DSN, else libpq's PG* variables. If
# the database has no sentinel schema, it is installed from sql/schema.sql
# (under the installers' advisory lock). Every check runs in a fresh
# namespace. Prints one "ok N - ..." or "not ok N - ..." line per check and
# closes with "N passed, N failed"; exits 1 if any check failed.
#
# Time-dependent checks use short real TTLs and ask the database's clock
# whether a lease has lapsed; every wait polls a real condition with a deadline.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ONCE="$here/once.sh"
DSN=${1:-${SENTINEL_TEST_DSN:-}}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
NS="psql-test-$(date +%s)-$$"

work=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-psql-test.XXXXXX")
workers=()
roles=()
cleanup() {
    local pid role
    for pid in "${workers[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    for role in "${roles[@]}"; do
        q -v role="$role" > /dev/null <<'SQL' || echo "# could not drop role $role"
delete from sentinel.rights where role = to_regrole(:'role');
delete from sentinel.watchers where role = to_regrole(:'role');
drop owned by :"role";
drop role :"role";
SQL
    done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok $((passed + failed)) - $1"; }
not_ok() {
    failed=$((failed + 1)); echo "not ok $((passed + failed)) - $1"
    shift
    local line
    for line in "$@"; do echo "#   $line"; done
}

# psql for the test's own queries: one value per line, fields joined by "|".
q() { psql -X -q -At -v ON_ERROR_STOP=1 ${DSN:+-d "$DSN"} "$@"; }

# once KEY [once.sh options] -- COMMAND...: runs once.sh (which takes its
# options before the key); sets RC, OUT (the stdout file) and ERR.
once() {
    local key=$1; shift
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    RC=0
    "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" "${opts[@]}" "$key" "$@" > "$work/out" 2> "$work/err" < /dev/null || RC=$?
    OUT="$work/out"
    ERR=$(cat "$work/err")
}

# Starts once.sh in the background in a process group of its own; sets WORKER.
start_worker() {
    local key=$1 tag=$2; shift 2
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    set -m
    "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" "${opts[@]}" "$key" "$@" \
        > "$work/$tag.out" 2> "$work/$tag.err" < /dev/null &
    WORKER=$!
    set +m
    workers+=("$WORKER")
}

# Waits up to 30 s for a background worker; sets WRC (its exit status, or
# "timeout" after a watchdog killed its process group).
join_worker() {
    local pid=$1 flag="$work/joined-$1"
    (
        start=$SECONDS
        while [ ! -e "$flag" ]; do
            if [ $(( SECONDS - start )) -ge 30 ]; then
                : > "$flag.timeout"
                kill -KILL -- "-$pid" 2> /dev/null
                exit 0
            fi
            sleep 0.05
        done
    ) &
    local watchdog=$!
    WRC=0
    wait "$pid" 2> /dev/null || WRC=$?
    : > "$flag"
    wait "$watchdog" || true
    if [ -e "$flag.timeout" ]; then
        WRC=timeout
        echo "# worker $pid did not end within 30 s: killed"
    fi
}

# wait_for WHAT SECONDS COMMAND...: polls until COMMAND succeeds; false on timeout.
wait_for() {
    local what=$1 limit=$2 start=$SECONDS; shift 2
    until "$@"; do
        if [ $(( SECONDS - start )) -ge "$limit" ]; then
            echo "# timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.02
    done
}

# record KEY: "effective state|stored state|fence|attempt|reason|response|error" from inspect_v1.
record() {
    q -v ns="$NS" -v key="$1" <<'SQL'
select concat_ws('|', state, stored_state, fence, attempt, coalesce(uncertain_reason, '-'),
                 coalesce(response::text, '-'), coalesce(error::text, '-'))
  from sentinel.inspect_v1(:'ns', :'key')
SQL
}
state_is() { [ "$(record "$1" | cut -d'|' -f1-2)" = "$2" ]; }
lease_lapsed() {
    [ "$(q -v ns="$NS" -v key="$1" <<'SQL'
select lease_expires_at <= now from sentinel.inspect_v1(:'ns', :'key')
SQL
    )" = t ]
}
# True once the database clock is MS milliseconds past the claim of KEY while
# its lease is still in the future: only heartbeats can have done that.
renewed_past() {
    [ "$(q -v ns="$NS" -v key="$1" -v ms="$2" <<'SQL'
select now >= claimed_at + :'ms' * interval '1 millisecond' and lease_expires_at > now
  from sentinel.inspect_v1(:'ns', :'key')
SQL
    )" = t ]
}
lines() { if [ -e "$1" ]; then wc -l < "$1" | tr -d ' '; else echo 0; fi; }

# login_role: creates a login role with a password of its own (dropped at the
# end); sets ROLE, and ROLE_DSN, the test's DSN logging in as it (the last
# user and password given win, in a URL as in a key=value string).
login_role() {
    local pw
    ROLE="sentinel_t_$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')"
    pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    q -v role="$ROLE" -v pw="$pw" > /dev/null <<'SQL'
create role :"role" login password :'pw';
SQL
    roles+=("$ROLE")
    case $DSN in
        *://*) ROLE_DSN="$DSN$(case $DSN in *\?*) echo '&';; *) echo '?';; esac)user=$ROLE&password=$pw" ;;
        *)     ROLE_DSN="$DSN user=$ROLE password=$pw" ;;
    esac
}

# --- the schema -------------------------------------------------------------

q -v schema="$root/sql/schema.sql" <<'SQL'
select pg_advisory_lock(hashtext('sentinel.init_db')) \g /dev/null
select to_regnamespace('sentinel') is null as missing \gset
\if :missing
\echo '# installing the sentinel schema from sql/schema.sql'
begin;
\i :schema
commit;
\endif
select pg_advisory_unlock(hashtext('sentinel.init_db')) \g /dev/null
SQL
versions=$(q -c 'select sentinel.api_versions()')
if [ "$(q -c 'select 3 = any (sentinel.api_versions())')" != t ]; then
    echo "Bail out! the database provides protocol versions $versions, not 3"; exit 1
fi
echo "# namespace $NS; $(psql --version); server $(q -c 'show server_version')"

# --- 1. fresh run, replay, exact bytes ---------------------------------------

ledger="$work/ledger-fresh"
once pay-1 -- sh -c "echo run >> '$ledger'; echo 'charged 9900'"
if [ "$RC" = 0 ] && [ "$(cat "$OUT")" = "charged 9900" ] && [ "$(lines "$ledger")" = 1 ] \
   && [ "$(record pay-1 | cut -d'|' -f1,4,6)" = 'completed|1|{"stdout": "charged 9900\n"}' ]; then
    ok "fresh run: exit 0, prints the output, records it as {\"stdout\": ...}"
else
    not_ok "fresh run" "exit $RC, stdout '$(cat "$OUT")', runs $(lines "$ledger"), record $(record pay-1)" "$ERR"
fi

once pay-1 -- sh -c "echo run >> '$ledger'; echo 'something else'"
if [ "$RC" = 0 ] && [ "$(cat "$OUT")" = "charged 9900" ] && [ "$(lines "$ledger")" = 1 ] \
   && grep -q 'replaying' <<< "$ERR"; then
    ok "replay: exit 0, the recorded output, the command does not run"
else
    not_ok "replay" "exit $RC, stdout '$(cat "$OUT")', runs $(lines "$ledger")" "$ERR"
fi

printf 'tab\there\n\\q not a psql command\nquote '"'"' and "double" and $(x) `y`\nünïcødé ✓\n\n\n' > "$work/expected"
once bytes-1 -- cat "$work/expected"
cp "$OUT" "$work/fresh"
once bytes-1 -- cat /dev/null
if cmp -s "$work/expected" "$work/fresh" && cmp -s "$work/expected" "$OUT" && [ "$RC" = 0 ]; then
    ok "fresh run and replay print exactly the command's bytes (tabs, quotes, backslashes, UTF-8, trailing newlines)"
else
    not_ok "exact bytes" "$(od -c "$OUT" | head -5)"
fi

printf 'before\0after \377\376 not UTF-8\n\0' > "$work/binary"
once binary-1 -- cat "$work/binary"
cp "$OUT" "$work/binary-fresh"
once binary-1 -- cat /dev/null
if cmp -s "$work/binary" "$work/binary-fresh" && cmp -s "$work/binary" "$OUT" && [ "$RC" = 0 ] \
   && [ "$(record binary-1 | cut -d'|' -f6)" = "{\"stdout_base64\": \"$(base64 -w0 "$work/binary")\"}" ]; then
    ok "output with NUL bytes or not UTF-8 is stored as base64 and replayed byte for byte"
else
    not_ok "binary output" "exit $RC, record $(record binary-1); replay: $(od -c "$OUT" | head -3)" "$ERR"
fi

once stdin-1 -- cat < /dev/null
RC=0; printf 'from stdin\n' | "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" stdin-2 -- cat > "$work/out" 2> /dev/null || RC=$?
if [ "$RC" = 0 ] && [ "$(cat "$work/out")" = "from stdin" ]; then
    ok "the command reads once.sh's standard input"
else
    not_ok "stdin" "exit $RC, stdout '$(cat "$work/out")'"
fi

# --- 2. failure recorded, then retried ---------------------------------------

ledger="$work/ledger-fail"
once fail-1 -- sh -c "echo run >> '$ledger'; echo partial; exit 3"
rec=$(record fail-1)
if [ "$RC" = 3 ] && [ "$(cut -d'|' -f1,4,7 <<< "$rec")" = 'failed|1|{"exit": 3, "stdout": "partial\n"}' ]; then
    ok "a failing command: exit status 3 passed through, recorded failed with {\"exit\": 3, ...}"
else
    not_ok "failure recorded" "exit $RC, record $rec" "$ERR"
fi
fence1=$(cut -d'|' -f3 <<< "$rec")
once fail-1 -- sh -c "echo run >> '$ledger'; echo fixed"
rec=$(record fail-1)
if [ "$RC" = 0 ] && [ "$(cat "$OUT")" = fixed ] && [ "$(lines "$ledger")" = 2 ] \
   && [ "$(cut -d'|' -f1,4 <<< "$rec")" = 'completed|2' ] && [ "$(cut -d'|' -f3 <<< "$rec")" -gt "$fence1" ]; then
    ok "the next call retries a failure: attempt 2 under a larger fence, completed"
else
    not_ok "retry after failure" "exit $RC, runs $(lines "$ledger"), record $rec, first fence $fence1" "$ERR"
fi

# --- 3. alive while a heartbeating worker runs; replay after ---------------

ledger="$work/ledger-alive"
go="$work/go-alive"
start_worker alive-1 alive -t 900 -H 60000 -- sh -c "echo run >> '$ledger'; while [ ! -e '$go' ]; do sleep 0.02; done; echo done"
w=$WORKER
if wait_for "alive-1 to be renewed past 3 TTLs" 15 renewed_past alive-1 2700; then
    once alive-1 -- sh -c "echo run >> '$ledger'"
    if [ "$RC" = 200 ] && grep -q 'being executed' <<< "$ERR" && [ "$(lines "$ledger")" = 1 ]; then
        ok "heartbeats keep a running command alive past 3 TTLs; a second caller gets exit 200 (alive)"
    else
        not_ok "alive" "exit $RC, runs $(lines "$ledger")" "$ERR"
    fi
else
    not_ok "alive: the lease was not renewed" "$(record alive-1)" "$(cat "$work/alive.err")"
fi
: > "$go"
join_worker "$w"
once alive-1 -- false
if [ "$WRC" = 0 ] && [ "$(cat "$work/alive.out")" = done ] && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = done ]; then
    ok "the heartbeating worker completes; the next caller replays its output"
else
    not_ok "alive then completed" "worker exit $WRC, stdout '$(cat "$work/alive.out")'; replay exit $RC" "$(cat "$work/alive.err")"
fi

# --- 3b. -w WAIT_MS: a second caller waits for the running worker's output ---

ledger="$work/ledger-wait"
go="$work/go-wait"
start_worker wait-1 waited-on -t 900 -H 60000 -- sh -c "echo run >> '$ledger'; while [ ! -e '$go' ]; do sleep 0.02; done; echo first"
w=$WORKER
wait_for "wait-1 to start" 15 state_is wait-1 "executing|executing" || true
start_worker wait-1 waiter -w 20000 -- sh -c "echo run >> '$ledger'; echo second"
waiter=$WORKER
if wait_for "the waiter to poll" 15 grep -qs 'waiting up to 20000 ms' "$work/waiter.err"; then
    : > "$go"
    join_worker "$w"; first_rc=$WRC
    join_worker "$waiter"
    if [ "$first_rc" = 0 ] && [ "$WRC" = 0 ] && [ "$(cat "$work/waiter.out")" = first ] \
            && [ "$(lines "$ledger")" = 1 ]; then
        ok "-w: a caller that meets a running key waits, then prints that run's output (the command ran once)"
    else
        not_ok "-w" "worker exit $first_rc, waiter exit $WRC, waiter stdout '$(cat "$work/waiter.out")', runs $(lines "$ledger")" \
            "$(cat "$work/waiter.err")"
    fi
else
    : > "$go"
    join_worker "$w"; join_worker "$waiter"
    not_ok "-w: the second caller never waited" "exit $WRC" "$(cat "$work/waiter.err")"
fi

# --- 4. uncertain: the worker is killed mid-run ------------------------------

ledger="$work/ledger-killed"
start_worker killed-1 killed -t 800 -- sh -c "echo run >> '$ledger'; exec sleep 600"
w=$WORKER
wait_for "the command of killed-1 to start" 30 test -s "$ledger" || true
kill -KILL -- "-$w"
join_worker "$w"
if wait_for "the lease of killed-1 to lapse" 30 lease_lapsed killed-1; then
    once killed-1 -- sh -c "echo run >> '$ledger'"
    rec=$(record killed-1)
    if [ "$RC" = 201 ] && [ "$(lines "$ledger")" = 1 ] \
       && [ "$(cut -d'|' -f1,2,5 <<< "$rec")" = 'uncertain|uncertain|lease expired' ]; then
        ok "SIGKILL mid-run: after the lease lapses acquire_v2 answers uncertain (exit 201); the command does not run again"
    else
        not_ok "uncertain after SIGKILL" "exit $RC, runs $(lines "$ledger"), record $rec" "$ERR"
    fi
else
    not_ok "uncertain after SIGKILL: the lease never lapsed" "$(record killed-1)"
fi

once killed-1 -- true
rc_again=$RC
q -v ns="$NS" > /dev/null <<'SQL'
select sentinel.reconcile_v1(:'ns', 'killed-1', 'release', 'test.sh', 'no effect found')
SQL
once killed-1 -- echo second attempt
if [ "$rc_again" = 201 ] && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = "second attempt" ] \
   && [ "$(record killed-1 | cut -d'|' -f4)" = 2 ]; then
    ok "uncertain until reconciled; after reconcile_v1 release the next call runs (attempt 2)"
else
    not_ok "reconcile release" "exit before $rc_again, after $RC" "$ERR"
fi

# --- 5. interrupted: SIGTERM to once.sh, or the command killed ---------------

ledger="$work/ledger-term"
start_worker term-1 term -t 30000 -- sh -c "echo run >> '$ledger'; exec sleep 600"
w=$WORKER
wait_for "the command of term-1 to start" 30 test -s "$ledger" || true
kill -TERM "$w"
join_worker "$w"
rec=$(record term-1)
if [ "$WRC" = 143 ] && [ "$(cut -d'|' -f1,2,5 <<< "$rec")" = 'uncertain|uncertain|once.sh interrupted by SIGTERM' ]; then
    ok "SIGTERM to once.sh stops the command and marks the key uncertain at once (no wait for the 30 s lease)"
else
    not_ok "SIGTERM" "worker exit $WRC, record $rec" "$(cat "$work/term.err")"
fi

ledger="$work/ledger-cmdkill"
start_worker cmdkill-1 cmdkill -t 30000 -- sh -c "echo \$\$ >> '$ledger'; exec sleep 600"
w=$WORKER
wait_for "the command of cmdkill-1 to start" 30 test -s "$ledger" || true
kill -KILL "$(head -1 "$ledger")"
join_worker "$w"
rec=$(record cmdkill-1)
if [ "$WRC" = 137 ] && [ "$(cut -d'|' -f1,2,5 <<< "$rec")" = 'uncertain|uncertain|command killed by signal 9' ]; then
    ok "a command killed by a signal: exit 137, the key is marked uncertain at once"
else
    not_ok "command killed" "worker exit $WRC, record $rec" "$(cat "$work/cmdkill.err")"
fi

# --- 6. fencing: a reconcile while the command runs; a late completion --------

go="$work/go-fenced"
start_worker fenced-1 fenced -t 600 -H 60000 -- sh -c \
    "while [ ! -e \"\$SENTINEL_LEASE_LOST_FILE\" ]; do sleep 0.02; done; echo late result"
w=$WORKER
wait_for "fenced-1 to be claimed" 30 state_is fenced-1 'executing|executing' || true
q -v ns="$NS" > /dev/null <<'SQL'
select sentinel.reconcile_v1(:'ns', 'fenced-1', 'completed', 'test.sh', 'done by hand',
                             response => '{"by": "operator"}', force => true)
SQL
join_worker "$w"   # the heartbeat sees the new fence, the command sees the lost file and ends
once fenced-1 -- false
if [ "$WRC" = 204 ] && grep -q 'late result' "$work/fenced.err" && [ ! -s "$work/fenced.out" ] \
   && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = '{"by": "operator"}' ]; then
    ok "fenced out: the late completion after a reconcile is refused (exit 204), the operator's response is replayed"
else
    not_ok "fenced out" "worker exit $WRC; replay exit $RC '$(cat "$OUT")'" "$(cat "$work/fenced.err")"
fi

go="$work/go-late"
start_worker late-1 late -t 400 -H 400 -- sh -c \
    "while [ ! -e \"\$SENTINEL_LEASE_LOST_FILE\" ] || [ ! -e '$go' ]; do sleep 0.02; done; echo late but known"
w=$WORKER
if wait_for "late-1 to pass its hard deadline and be marked uncertain" 15 state_is late-1 'uncertain|uncertain'; then
    once late-1 -- false
    rc_between=$RC
else
    rc_between=timeout
fi
: > "$go"
join_worker "$w"
once late-1 -- false
if [ "$rc_between" = 201 ] && [ "$WRC" = 0 ] && [ "$(cat "$work/late.out")" = "late but known" ] \
   && grep -q 'LEASE LOST' "$work/late.err" && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = "late but known" ]; then
    ok "hard deadline: the lease is lost (uncertain meanwhile), the owner's late completion under its current fence is recorded"
else
    not_ok "late completion" "between $rc_between, worker $WRC, replay $RC '$(cat "$OUT")'" "$(cat "$work/late.err")"
fi

# --- 7. replayed failure, mismatch, bad input, no database -------------------

once perm-1 -t 30000 -- sh -c 'kill -KILL $$'
q -v ns="$NS" > /dev/null <<'SQL'
select sentinel.reconcile_v1(:'ns', 'perm-1', 'failed', 'test.sh', 'card stolen', error => '{"code": "stolen"}')
SQL
once perm-1 -- true
if [ "$RC" = 202 ] && grep -q '"stolen"' <<< "$ERR"; then
    ok "a permanent failure is replayed: exit 202 with the error document"
else
    not_ok "permanent failure" "exit $RC" "$ERR"
fi

once fp-1 -f charge:9900 -- echo a
once fp-1 -f charge:1 -- echo b
if [ "$RC" = 203 ] && [ ! -s "$OUT" ]; then
    ok "another fingerprint for the same key: exit 203, nothing revealed"
else
    not_ok "mismatch" "exit $RC" "$ERR"
fi

ledger="$work/ledger-bad"
bad=()
RC=0; "$ONCE" ${DSN:+-d "$DSN"} -n "Bad Namespace" k -- sh -c "echo run >> '$ledger'" 2> "$work/err" || RC=$?
bad+=("namespace:$RC")
grep -q 'SN002' "$work/err" || bad+=("no SN002 in: $(cat "$work/err")")
RC=0; "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" -t 2000 -H 1000 k -- sh -c "echo run >> '$ledger'" 2> "$work/err" || RC=$?
bad+=("hard<ttl:$RC")
RC=0; "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" -t 1s k -- true 2> /dev/null || RC=$?
bad+=("ttl:$RC")
RC=0; "$ONCE" ${DSN:+-d "$DSN"} -n "$NS" "" -- true 2> /dev/null || RC=$?
bad+=("empty key:$RC")
RC=0; "$ONCE" -n "$NS" k 2> /dev/null || RC=$?
bad+=("usage:$RC")
if [ "${bad[*]}" = "namespace:208 hard<ttl:208 ttl:208 empty key:208 usage:208" ] && [ "$(lines "$ledger")" = 0 ]; then
    ok "bad namespace, TTLs, key or usage: exit 208 with the server's SQLSTATE, nothing runs"
else
    not_ok "bad input" "${bad[*]}; runs $(lines "$ledger")"
fi

RC=0
PGCONNECT_TIMEOUT=2 "$ONCE" -d "postgresql:///nowhere?host=$work/no-such-socket-dir" -n "$NS" k \
    -- sh -c "echo run >> '$ledger'" 2> "$work/err" || RC=$?
if [ "$RC" = 207 ] && [ "$(lines "$ledger")" = 0 ]; then
    ok "database unreachable: exit 207, nothing runs"
else
    not_ok "unreachable" "exit $RC, runs $(lines "$ledger")" "$(cat "$work/err")"
fi

printf 'bad byte \377\n' > "$work/latin"
once bytes-2 -- cat "$work/latin"
cp "$OUT" "$work/latin-fresh"
once bytes-2 -- cat /dev/null
rec=$(record bytes-2 | head -1)
if [ "$RC" = 0 ] && cmp -s "$work/latin" "$work/latin-fresh" && cmp -s "$work/latin" "$OUT" \
   && [ "$(cut -d'|' -f1 <<< "$rec")" = completed ]; then
    ok "output that is not UTF-8 (Latin-1): stored, and replayed byte for byte"
else
    not_ok "Latin-1 output" "exit $RC, record $rec" "$ERR"
fi

# --- a role without the grant: exit 209, naming the grant -------------------

login_role
RC=0; "$ONCE" -d "$ROLE_DSN" -n "$NS" nogrant-1 -- echo ran > "$work/out" 2> "$work/err" < /dev/null || RC=$?
if [ "$RC" = 209 ] && grep -qF "sentinel grant <role> --namespace $NS" "$work/err" \
   && grep -qF "select sentinel.grant_v2('<role>', '$NS')" "$work/err" && [ ! -s "$work/out" ]; then
    ok "a role without the grant: exit 209, naming grant_v2 (sentinel grant <role> --namespace NS); nothing ran"
else
    not_ok "no grant" "exit $RC, stdout '$(cat "$work/out")'" "$(cat "$work/err")"
fi

# --- a role granted one namespace (grant_v2): the token calls only ------------

login_role
app=$ROLE app_dsn=$ROLE_DSN
q -v role="$app" -v ns="$NS" > /dev/null <<'SQL'
select sentinel.grant_v2(:'role', :'ns');
SQL
legacy=$(q -v role="$app" <<'SQL'
select count(*) from unnest(array[
    'sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)',
    'sentinel.heartbeat_v1(text, text, bigint)',
    'sentinel.complete_v1(text, text, bigint, jsonb)',
    'sentinel.fail_v1(text, text, bigint, jsonb, boolean)',
    'sentinel.abandon_v1(text, text, bigint, text)']) f
 where has_function_privilege(:'role', f, 'execute')
SQL
)
ledger="$work/ledger-grant"
go="$work/go-grant"
start_worker grant-1 grant -d "$app_dsn" -t 600 -H 60000 -- \
    sh -c "echo run >> '$ledger'; while [ ! -e '$go' ]; do sleep 0.02; done; echo granted"
w=$WORKER
# Three TTLs past the claim with the lease still ahead: heartbeat_v2 renewed it.
renewed=yes
wait_for "grant-1 to be renewed past 3 TTLs" 15 renewed_past grant-1 1800 || renewed=no
: > "$go"
join_worker "$w"
once grant-1 -d "$app_dsn" -- sh -c "echo run >> '$ledger'"
if [ "$legacy" = 0 ] && [ "$renewed" = yes ] && [ "$WRC" = 0 ] && [ "$(cat "$work/grant.out")" = granted ] \
   && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = granted ] && [ "$(lines "$ledger")" = 1 ]; then
    ok "a grant_v2 role (no tokenless call granted) claims, heartbeats, completes and replays in its namespace"
else
    not_ok "grant_v2 role" "tokenless calls granted: $legacy, renewed: $renewed, worker exit $WRC, replay exit $RC" \
        "$(cat "$work/grant.err")" "$ERR"
fi

once grant-fail -d "$app_dsn" -- sh -c 'echo partial; exit 3'
rc_fail=$RC
once grant-kill -d "$app_dsn" -t 30000 -- sh -c 'kill -KILL $$'
if [ "$rc_fail" = 3 ] && [ "$(record grant-fail | cut -d'|' -f1)" = failed ] \
   && [ "$RC" = 137 ] && [ "$(record grant-kill | cut -d'|' -f1,2,5)" = 'uncertain|uncertain|command killed by signal 9' ]; then
    ok "a grant_v2 role records a failure (fail_v3) and marks a killed command uncertain (abandon_v2)"
else
    not_ok "grant_v2 role: fail and abandon" "fail exit $rc_fail, $(record grant-fail); kill exit $RC, $(record grant-kill)" "$ERR"
fi

other="$NS-other"
ledger="$work/ledger-deny"
once deny-1 -d "$app_dsn" -n "$other" -- sh -c "echo run >> '$ledger'"
if [ "$RC" = 209 ] && [ "$(lines "$ledger")" = 0 ] && [ ! -s "$OUT" ] \
   && grep -qF "role $app may not claim keys in namespace '$other'" <<< "$ERR" \
   && grep -qF "sentinel grant $app --namespace $other" <<< "$ERR" \
   && grep -qF "select sentinel.grant_v2('<role>', '$other')" <<< "$ERR" \
   && [ -z "$(q -v ns="$other" <<< "select state from sentinel.inspect_v1(:'ns', 'deny-1')")" ]; then
    ok "the grant_v2 role in another namespace: exit 209 naming the role, the namespace and the grant; nothing ran"
else
    not_ok "grant_v2 role in another namespace" "exit $RC, runs $(lines "$ledger")" "$ERR"
fi

# --- conflict: a legacy role completes the running key without the token ------

login_role
forger_dsn=$ROLE_DSN
q -v role="$ROLE" > /dev/null <<'SQL'
select sentinel.grant_v1(:'role');
SQL
start_worker conflict-1 conflict -d "$app_dsn" -t 600 -H 60000 -- sh -c \
    "while [ ! -e \"\$SENTINEL_LEASE_LOST_FILE\" ]; do sleep 0.02; done; echo real result"
w=$WORKER
forged=none
if wait_for "conflict-1 to be executing" 30 state_is conflict-1 'executing|executing'; then
    fence=$(record conflict-1 | cut -d'|' -f3)
    forged=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$forger_dsn" -v ns="$NS" -v fence="$fence" 2>&1 <<'SQL'
select outcome from sentinel.complete_v1(:'ns', 'conflict-1', :'fence', '{"stdout": "forged\n"}')
SQL
    ) || true
fi
join_worker "$w"   # the heartbeat finds the key completed, the command sees the lost file and ends
once conflict-1 -d "$app_dsn" -- false
if [ "$forged" = recorded ] && [ "$WRC" = 210 ] && grep -q 'CONFLICT' "$work/conflict.err" \
   && grep -q 'real result' "$work/conflict.err" && [ ! -s "$work/conflict.out" ] \
   && [ "$RC" = 0 ] && [ "$(cat "$OUT")" = forged ]; then
    ok "conflict: a response forged by a legacy role (complete_v1) stands; once.sh reports it (exit 210), the output is not recorded"
else
    not_ok "conflict" "forged: $forged; worker exit $WRC; replay exit $RC '$(cat "$OUT")'" "$(cat "$work/conflict.err")"
fi

# --- the demo runs -----------------------------------------------------------

RC=0; "$ONCE" ${DSN:+-d "$DSN"} demo > "$work/demo" 2>&1 || RC=$?
if [ "$RC" = 0 ] && grep -q '(exit 201)' "$work/demo" && grep -q 'charged after release' "$work/demo"; then
    ok "once.sh demo runs to the end"
else
    not_ok "demo" "exit $RC" "$(tail -5 "$work/demo")"
fi

echo "1..$((passed + failed))"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

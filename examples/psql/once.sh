#!/usr/bin/env bash
# once.sh: run a shell command at most once per key, coordinated by Sentinel,
# with nothing but bash and psql. It speaks protocol version 3 of the SQL
# protocol directly (docs/protocol.md): acquire_v2 with a random token drawn
# for the call (the proof of its claim), heartbeat_v2 from a second psql in
# the background, then complete_v3, fail_v3 or abandon_v2, each presenting the
# token. A role granted one namespace (`sentinel grant ROLE --namespace NS`)
# may execute exactly these calls. The database decides every outcome; once.sh
# runs the command, renews the lease and reports what the database answered.
#
#   once.sh [-d DSN] [-n NAMESPACE] [-t TTL_MS] [-H HARD_TTL_MS] [-f FINGERPRINT] [-w WAIT_MS] [-q] KEY -- COMMAND [ARG...]
#   once.sh [-d DSN] demo
#
# The connection is DSN (a libpq URL or key=value string), else $SENTINEL_DSN,
# else libpq's PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...).
# Defaults: NAMESPACE "default", TTL_MS 3000, HARD_TTL_MS = TTL_MS (the
# longest the command may take, counted from the claim), WAIT_MS 0: with -w,
# a key another worker is executing is asked again every 200 ms for up to
# WAIT_MS, so the caller gets that worker's output instead of exit 200.
#
# The response of a key is the command's standard output, stored exactly as
# {"stdout": "..."} (as {"stdout_base64": "..."} when it holds NUL bytes or is
# not UTF-8); a fresh run and every replay print the same bytes. The
# command's standard error passes through and is not stored. The command sees
# SENTINEL_NAMESPACE, SENTINEL_KEY, SENTINEL_FENCE, SENTINEL_ATTEMPT (pass the
# fence to downstream systems) and SENTINEL_LEASE_LOST_FILE, a path that
# exists once a heartbeat found the execution no longer ours.
#
# Exit status:
#     0    completed: the response was printed (fresh run or replay)
#     1-128  the command failed with this status; recorded as failed, so the
#          next call runs it again (attempt 2, a new fence)
#   129-199  the command was killed by a signal (or once.sh was interrupted):
#          the key is marked uncertain at once, since it may have had effects
#   200  another worker is executing the key right now (ask again later)
#   201  uncertain: an execution started and its outcome is unknown; an
#          operator must reconcile the key (sentinel.reconcile_v1)
#   202  a permanent failure is replayed; its error document is printed on stderr
#   203  the key was used with another fingerprint (-f)
#   204  fenced out: the command ran, but the key was reconciled meanwhile; its
#          output went to stderr and was not recorded
#   205  the command ran and succeeded, but the database stayed unreachable
#          until the hard deadline: the output was printed, not recorded
#   206  the command ran, but its output could not be stored (for example
#          invalid UTF-8): the key is marked uncertain, never re-run
#   207  the database could not be reached, or the schema is missing or older
#          than protocol version 3 (upgrade it with `sentinel migrate`): nothing ran
#   208  bad usage or a bad argument (namespace, key, TTL): nothing ran
#   209  this role may not claim keys in the namespace (the schema owner grants
#          it: `sentinel grant <role> --namespace <ns>`, or
#          `select sentinel.grant_v2('<role>', '<ns>')`): nothing ran
#   210  conflict: the command ran, but the key's record under its fence already
#          holds another response, written without the claim's token by a role
#          with the legacy complete_v1/complete_v2; that response stands. The
#          command's output went to stderr and was not recorded
set -euo pipefail

prog=${0##*/}
PSQL=${PSQL:-psql}
export PGAPPNAME=${PGAPPNAME:-sentinel-once.sh}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

DSN=${SENTINEL_DSN:-}
NS=default
TTL=3000
HARD=
FP=
WAIT=0
QUIET=

say() { [ -n "$QUIET" ] || printf '%s: %s\n' "$prog" "$*" >&2; }
now_ms() { date +%s%3N; }
die() { printf '%s: %s\n' "$prog" "$2" >&2; exit "$1"; }
usage() {
    cat >&2 <<EOF
usage: $prog [-d DSN] [-n NAMESPACE] [-t TTL_MS] [-H HARD_TTL_MS] [-f FINGERPRINT] [-w WAIT_MS] [-q] KEY -- COMMAND [ARG...]
       $prog [-d DSN] demo
EOF
    exit 208
}

# One psql call: the SQL script comes on stdin, variables as -v name=value and
# are used in the script as :'name' (psql quotes them, so no value can inject
# SQL). Output: every field terminated by a NUL byte (the fields may hold
# newlines and tabs). psql exits 2 when the connection failed or broke, 3 when
# the script raised an error.
db() { "$PSQL" -X -q -At -z -0 -v ON_ERROR_STOP=1 -v VERBOSITY=verbose ${DSN:+-d "$DSN"} "$@"; }

# The same, for output meant for people: fields separated by " | ", one row a line.
show() { "$PSQL" -X -q -At -F ' | ' -v ON_ERROR_STOP=1 ${DSN:+-d "$DSN"} "$@"; }

# Reads the NUL-terminated fields of FILE into the array F.
read_fields() {
    F=()
    local f
    while IFS= read -r -d '' f; do F+=("$f"); done < "$1"
}

# Runs `db` with stdin and arguments, leaving the fields in F. Returns psql's
# exit status; its error message stays in $work/err.
query() {
    local rc=0
    db "$@" > "$work/out" 2> "$work/err" || rc=$?
    read_fields "$work/out"
    return "$rc"
}

# Prints the text of a response document: its "stdout" when it has one (what
# once.sh stores), else the JSON itself (an operator's reconcile may store any
# document).
RESPONSE_TEXT="case when jsonb_typeof(response -> 'stdout') = 'string' then response ->> 'stdout'
                    when jsonb_typeof(response -> 'stdout_base64') = 'string' then response ->> 'stdout_base64'
                    else response::text || chr(10) end"
# Whether that text is base64 (output that PostgreSQL text cannot hold).
RESPONSE_ENCODING="case when jsonb_typeof(response -> 'stdout') = 'string' then 'text'
                         when jsonb_typeof(response -> 'stdout_base64') = 'string' then 'base64' else 'text' end"

# The command's output as a response document's field: {"stdout": text} when
# it is UTF-8 without NUL bytes, else {"stdout_base64": ...} (a psql variable
# is a C string, and PostgreSQL text holds neither NUL nor invalid UTF-8), so
# every replay prints the same bytes. Leaves the field's name in OUT_FIELD and
# the file to store in OUT_FILE.
encode_output() {
    local file=$1
    if [ "$(tr -d '\000' < "$file" | wc -c)" -eq "$(wc -c < "$file")" ] \
       && iconv -f UTF-8 -t UTF-8 "$file" > /dev/null 2>&1; then
        OUT_FIELD=stdout OUT_FILE=$file
    else
        base64 -w0 "$file" > "$file.b64"
        OUT_FIELD=stdout_base64 OUT_FILE=$file.b64
    fi
}

# The proof of this call's claim: 32 hex digits from the kernel's random
# source (od is in coreutils), else from `openssl rand`. It is a secret: the
# psql scripts get it in their text on stdin (`\set token ...`), never as a
# command-line argument, which other local users could read in ps.
new_token() {
    local t
    t=$(od -An -N16 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n') || t=
    case $t in
        ????????????????????????????????) ;;
        *) t=$(openssl rand -hex 16 2>/dev/null) || t= ;;
    esac
    case $t in
        *[!0-9a-f]*|'') die 207 "cannot draw a random token: neither /dev/urandom nor \`openssl rand\` works here; nothing ran" ;;
    esac
    [ "${#t}" -eq 32 ] || die 207 "cannot draw a random token (got ${#t} hex digits); nothing ran"
    TOKEN=$t
}

# ---------------------------------------------------------------------------

once() {
    local key=$1; shift
    local owner
    owner="$(uname -n 2>/dev/null || echo host):$$:$RANDOM$RANDOM"
    new_token

    # 1. acquire: claim the key and start executing, or learn its state. One
    #    round trip, after the check that the schema provides protocol version
    #    3 (in the same psql call); a replay writes nothing. hard_ms_left is
    #    measured with the database clock (hard_expires_at - now), never this
    #    machine's.
    local rc wait_until=$(( $(now_ms) + WAIT ))
    while :; do
    rc=0
    query -v ns="$NS" -v key="$key" -v owner="$owner" -v ttl="$TTL" -v hard="$HARD" -v fp="$FP" <<SQL || rc=$?
\\set token $TOKEN
select 3 = any (sentinel.api_versions()) as v3, sentinel.api_versions()::text as versions \\gset
\\if :v3
select outcome, fence, state, attempt,
       coalesce($RESPONSE_TEXT, ''),
       coalesce(error::text, ''),
       greatest(ceil(extract(epoch from hard_expires_at - now) * 1000), 0)::bigint,
       $RESPONSE_ENCODING
  from sentinel.acquire_v2(namespace   => :'ns',
                           key         => :'key',
                           owner       => :'owner',
                           ttl_ms      => :'ttl',
                           hard_ttl_ms => nullif(:'hard', '')::bigint,
                           start       => true,
                           fingerprint => nullif(:'fp', ''),
                           token       => :'token')
\\else
select 'old schema', :'versions'
\\endif
SQL
    if [ "$rc" -ne 0 ]; then
        # With VERBOSITY=verbose psql prints "ERROR:  SQLSTATE: message".
        if grep -q 'ERROR: *SN0' "$work/err"; then
            grep 'ERROR:' "$work/err" >&2
            exit 208          # the server refused an argument (SN001..SN004): nothing ran
        fi
        if grep -q 'ERROR: *42501' "$work/err"; then
            # The database names the role, the namespace and the grant (ERROR and HINT).
            grep '^\(psql:.*\)\?\(ERROR\|HINT\):' "$work/err" >&2
            die 209 "this role may not claim keys in namespace $NS: the schema owner grants it with \`sentinel grant <role> --namespace $NS\` (or \`select sentinel.grant_v2('<role>', '$NS')\`); nothing ran"
        fi
        grep -v '^\(CONTEXT\|LOCATION\|SQL statement\|PL/pgSQL\)' "$work/err" >&2 || true
        die 207 "cannot acquire $NS/$key: database unavailable or schema missing; nothing ran"
    fi
    if [ "${F[0]:-}" = 'old schema' ]; then
        die 207 "the database provides protocol versions ${F[1]:-?}, not 3: upgrade its schema with \`sentinel migrate\`; nothing ran"
    fi
    [ "${F[0]}" = alive ] && [ "$(now_ms)" -lt "$wait_until" ] || break
    [ -n "${waiting:-}" ] || say "$NS/$key: being executed by another worker; waiting up to ${WAIT} ms"
    waiting=1
    sleep 0.2   # poll again: the other worker's outcome, or the key once its lease lapsed
    done
    local outcome=${F[0]} fence=${F[1]} state=${F[2]} attempt=${F[3]}
    local response=${F[4]} error=${F[5]} hard_ms_left=${F[6]} encoding=${F[7]:-text}

    case $outcome in
        completed) say "$NS/$key: completed under fence $fence; replaying its response"
                   if [ "$encoding" = base64 ]; then printf '%s' "$response" | base64 -d
                   else printf '%s' "$response"; fi
                   exit 0 ;;
        alive)     say "$NS/$key: being executed by another worker (fence $fence, state $state)"; exit 200 ;;
        uncertain) say "$NS/$key: UNCERTAIN (fence $fence): an execution started and its outcome is unknown; reconcile it"
                   exit 201 ;;
        failed)    say "$NS/$key: failed permanently (fence $fence): $error"; exit 202 ;;
        mismatch)  say "$NS/$key: was used with another fingerprint"; exit 203 ;;
        acquired)  ;;
        *)         die 207 "unexpected outcome '$outcome' from acquire_v2" ;;
    esac
    say "$NS/$key: acquired fence $fence (attempt $attempt); running: $*"

    # 2. Run the command while a second psql renews the lease every ttl/3.
    local deadline=$(( SECONDS + hard_ms_left / 1000 ))
    local lost="$work/lease-lost"
    export SENTINEL_NAMESPACE="$NS" SENTINEL_KEY="$key" SENTINEL_FENCE="$fence" \
           SENTINEL_ATTEMPT="$attempt" SENTINEL_LEASE_LOST_FILE="$lost"
    heartbeat "$key" "$fence" "$lost" &
    hb_pid=$!
    "$@" <&0 > "$work/stdout" &
    cmd_pid=$!
    local status=0
    wait "$cmd_pid" || status=$?
    cmd_pid=
    stop_heartbeat

    # 3. Record the outcome under our fence, presenting our token.
    if [ "$status" -gt 128 ]; then
        # Killed by a signal: it may have had effects. Mark it uncertain now
        # rather than letting others wait for the lease to lapse.
        abandon "$key" "$fence" "command killed by signal $(( status - 128 ))"
        exit "$status"
    fi
    encode_output "$work/stdout"
    if [ "$status" -ne 0 ]; then
        record "$key" "$fence" "$deadline" fail_v3 \
            "sentinel.fail_v3(:'ns', :'key', :'fence', :'token', jsonb_build_object('exit', $status, '$OUT_FIELD', left(:'out', -1)), false, null)"
        case ${F[0]:-} in
            recorded|already_recorded) say "$NS/$key: failed with exit status $status (recorded; the next call retries)" ;;
            stale) say "$NS/$key: failed with exit status $status, but fence $fence is no longer current (state ${F[1]:-gone}): not recorded" ;;
            uncertain) say "$NS/$key: failed with exit status $status after its lease was lost: the key stays uncertain (the output is kept for the reconciler)" ;;
            conflict) say "$NS/$key: CONFLICT: failed with exit status $status, but fence $fence already holds another error, written without the claim's token; it stands and this failure was not recorded" ;;
            *) say "$NS/$key: failed with exit status $status; the failure could not be recorded" ;;
        esac
        exit "$status"
    fi
    record "$key" "$fence" "$deadline" complete_v3 \
        "sentinel.complete_v3(:'ns', :'key', :'fence', :'token', jsonb_build_object('$OUT_FIELD', left(:'out', -1)), null)"
    case ${F[0]:-} in
        recorded|already_recorded)
            say "$NS/$key: completed under fence $fence (${F[0]})"
            cat "$work/stdout"; exit 0 ;;
        stale)
            say "$NS/$key: FENCED OUT: the command ran under fence $fence, but the key is now ${F[1]:-gone} under fence ${F[2]:-none}; its output (below) was not recorded"
            cat "$work/stdout" >&2; exit 204 ;;
        conflict)
            say "$NS/$key: CONFLICT: the command ran under fence $fence, but the record under that fence already holds another response, written without the claim's token (a role with the legacy complete_v1/complete_v2); that response stands and every replay serves it. The output (below) was not recorded: see the key's events (sentinel events) and reconcile it"
            cat "$work/stdout" >&2; exit 210 ;;
        unreachable)
            say "$NS/$key: the command ran, but its response could not be recorded before the hard deadline; others will see the key uncertain"
            cat "$work/stdout"; exit 205 ;;
        refused)
            cat "$work/err" >&2
            abandon "$key" "$fence" "output not storable: $(tr '\n' ' ' < "$work/err" | head -c 800)"
            say "$NS/$key: the command ran, but its output could not be stored (psql or the server refused it); the key is marked uncertain"
            exit 206 ;;
    esac
    die 207 "unexpected outcome '${F[0]:-}' from complete_v3"
}

# The heartbeat: a background loop of short psql calls, each on its own
# connection, so a broken connection costs one beat, not the lease. It stops
# when killed or when the database says the execution is no longer ours.
heartbeat() {
    local key=$1 fence=$2 lost=$3 interval alive
    interval=$(( TTL / 3 ))
    [ "$interval" -ge 10 ] || interval=10
    interval=$(printf '%d.%03d' $(( interval / 1000 )) $(( interval % 1000 )))
    trap - INT TERM HUP EXIT
    while sleep "$interval"; do
        if ! alive=$(db -v ns="$NS" -v key="$key" -v fence="$fence" 2> "$work/hb-err" <<SQL | tr '\0' ' '
\\set token $TOKEN
select alive, coalesce(state, 'gone') from sentinel.heartbeat_v2(:'ns', :'key', :'fence', :'token')
SQL
        ); then
            say "$NS/$key: heartbeat failed ($(tr '\n' ' ' < "$work/hb-err")); retrying"
            continue
        fi
        case $alive in
            t\ *) ;;
            f\ *) : > "$lost"
                  say "$NS/$key: LEASE LOST under fence $fence (state now ${alive#f }): the command keeps running; it may check \$SENTINEL_LEASE_LOST_FILE"
                  return 0 ;;
            *)    say "$NS/$key: unexpected heartbeat answer '$alive'" ;;
        esac
    done
}

stop_heartbeat() {
    if [ -n "${hb_pid:-}" ]; then
        # SIGUSR1 has no trap here: the heartbeat dies at once, whether or not
        # it has reset the traps it inherited.
        kill -USR1 "$hb_pid" 2>/dev/null || true
        wait "$hb_pid" 2>/dev/null || true
        hb_pid=
    fi
}

# Records complete_v3 or fail_v3 (CALL is the SQL expression), retrying while
# the connection fails (psql exit 2), or a lock timeout or serialization
# failure aborted the call (nothing written), until the hard deadline. A call
# that committed but whose answer was lost is asked again with the same token
# and comes back as 'already_recorded'. Leaves the result in F: outcome,
# state, fence; or F=(unreachable) / F=(refused).
record() {
    local key=$1 fence=$2 deadline=$3 name=$4 call=$5 rc tries=0
    local delays=(0.1 0.2 0.5 1 2)
    while :; do
        rc=0
        # psql reads the output file itself (no argv size limit); the x keeps
        # trailing newlines, which a backquote substitution would drop.
        query -v ns="$NS" -v key="$key" -v fence="$fence" -v file="$OUT_FILE" <<SQL || rc=$?
\\set token $TOKEN
\\set out \`cat :'file'; printf x\`
select outcome, coalesce(state, ''), coalesce(fence::text, '') from $call
SQL
        [ "$rc" -eq 0 ] && return 0
        if [ "$rc" -ne 2 ] && ! grep -q 'ERROR: *\(55P03\|40001\|40P01\):' "$work/err"; then
            F=(refused); return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then F=(unreachable); return 0; fi
        say "$NS/$key: $name failed ($(tr '\n' ' ' < "$work/err")); retrying"
        sleep "${delays[tries]}"
        [ "$tries" -ge 4 ] || tries=$(( tries + 1 ))
    done
}

# Marks our execution uncertain (abandon_v2): one try; if it fails, the lease
# lapses and others see the key uncertain anyway.
abandon() {
    local key=$1 fence=$2 reason=$3
    if query -v ns="$NS" -v key="$key" -v fence="$fence" -v reason="$reason" <<SQL
\\set token $TOKEN
select outcome from sentinel.abandon_v2(:'ns', :'key', :'fence', :'token', left(:'reason', 1000))
SQL
    then
        say "$NS/$key: marked ${F[0]} under fence $fence: $reason"
    else
        say "$NS/$key: could not mark it uncertain ($(tr '\n' ' ' < "$work/err")); it will read uncertain once its lease lapses"
    fi
}

# Interrupted (Ctrl-C, kill): stop the command, mark the key uncertain.
on_signal() {
    local sig=$1 code=$2
    # A background subshell (the heartbeat) inherits these traps until it
    # resets them: there, just die.
    if [ "$BASHPID" != "$main_pid" ]; then trap - EXIT; exit "$code"; fi
    trap - INT TERM HUP
    if [ -n "${cmd_pid:-}" ]; then
        kill -TERM "$cmd_pid" 2>/dev/null || true
        wait "$cmd_pid" 2>/dev/null || true
        stop_heartbeat
        abandon "$CUR_KEY" "$SENTINEL_FENCE" "once.sh interrupted by SIG$sig"
    fi
    exit "$code"
}

# ---------------------------------------------------------------------------
# demo: a walkthrough in a fresh namespace, calling this script as a client.

demo() {
    local me=$0 ns rc
    ns="demo-$(date +%s)-$RANDOM"
    local args=(-n "$ns"); [ -z "$DSN" ] || args+=(-d "$DSN")
    step() { printf '\n$ %s\n' "$*"; }
    lookup() {  # lookup KEY: the record as inspect_v1 shows it
        show -v ns="$ns" -v key="$1" <<'SQL'
select state, fence, attempt, coalesce(uncertain_reason, '-'), coalesce(response::text, error::text, '-')
  from sentinel.inspect_v1(:'ns', :'key')
SQL
    }

    echo "# namespace $ns"
    step "once.sh order-1 -- sh -c 'echo charged 9900 at \$(date +%T.%N)'    # fresh run"
    "$me" "${args[@]}" order-1 -- sh -c 'echo charged 9900 at $(date +%T.%N)'
    step "once.sh order-1 -- sh -c 'echo charged 9900 at \$(date +%T.%N)'    # replay: same bytes, the command does not run"
    "$me" "${args[@]}" order-1 -- sh -c 'echo charged 9900 at $(date +%T.%N)'

    step "once.sh order-2 -- sh -c 'echo card declined >&2; exit 3'    # a failure is recorded"
    rc=0; "$me" "${args[@]}" order-2 -- sh -c 'echo card declined >&2; exit 3' || rc=$?
    echo "(exit $rc)"
    step "once.sh order-2 -- echo charged on retry    # the next call retries: attempt 2, new fence"
    "$me" "${args[@]}" order-2 -- echo charged on retry

    local marker
    marker="$work/started"
    step "once.sh -t 1000 order-3 -- sh -c 'touch \$marker; exec sleep 600' &    # then kill -KILL the whole worker"
    set -m                       # the worker gets a process group of its own
    "$me" "${args[@]}" -t 1000 order-3 -- sh -c "touch '$marker'; exec sleep 600" &
    local worker=$!
    set +m
    wait_for "the command to start" 30 test -e "$marker"
    kill -KILL -- "-$worker"
    wait "$worker" 2>/dev/null || true
    echo "(worker $worker killed mid-run; its lease lapses within 1 s)"
    wait_for "the lease of order-3 to lapse (database clock)" 30 lapsed "$ns" order-3
    step "once.sh order-3 -- echo charged    # acquire_v2 answers uncertain: the command does not run again"
    rc=0; "$me" "${args[@]}" order-3 -- echo charged || rc=$?
    echo "(exit $rc)"
    step "inspect_v1 order-3: state | fence | attempt | reason | document"
    lookup order-3
    step "reconcile_v1(order-3, action => 'release', ...)    # an operator found no charge: release the key"
    show -v ns="$ns" <<'SQL'
select previous_state, state, previous_fence, fence
  from sentinel.reconcile_v1(:'ns', 'order-3', 'release', 'alice@ops', 'no charge at the provider')
SQL
    step "once.sh order-3 -- echo charged after release    # runs again under a new fence"
    "$me" "${args[@]}" order-3 -- echo charged after release
}

# wait_for WHAT SECONDS COMMAND...: poll until COMMAND succeeds, or fail.
wait_for() {
    local what=$1 limit=$2 start=$SECONDS; shift 2
    until "$@"; do
        if [ $(( SECONDS - start )) -ge "$limit" ]; then die 1 "timed out after ${limit}s waiting for $what"; fi
        sleep 0.05
    done
}

# lapsed NS KEY: true when the database clock says the key's lease has lapsed.
lapsed() {
    local r
    r=$(db -v ns="$1" -v key="$2" <<'SQL' | tr -d '\0'
select lease_expires_at <= now from sentinel.inspect_v1(:'ns', :'key')
SQL
    )
    [ "$r" = t ]
}

# ---------------------------------------------------------------------------

while getopts 'd:n:t:H:f:w:qh' opt; do
    case $opt in
        d) DSN=$OPTARG ;;
        n) NS=$OPTARG ;;
        t) TTL=$OPTARG ;;
        H) HARD=$OPTARG ;;
        f) FP=$OPTARG ;;
        w) WAIT=$OPTARG ;;
        q) QUIET=1 ;;
        *) usage ;;
    esac
done
shift $(( OPTIND - 1 ))
[ $# -ge 1 ] || usage

case $TTL in ''|*[!0-9]*) die 208 "TTL_MS must be a number of milliseconds, got '$TTL'" ;; esac
case $HARD in *[!0-9]*) die 208 "HARD_TTL_MS must be a number of milliseconds, got '$HARD'" ;; esac
case $WAIT in ''|*[!0-9]*) die 208 "WAIT_MS must be a number of milliseconds, got '$WAIT'" ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-once.XXXXXX")
hb_pid= cmd_pid=
main_pid=$BASHPID
cleanup() {
    # Subshells may inherit this trap: only the main process cleans up.
    [ "$BASHPID" = "$main_pid" ] || return 0
    stop_heartbeat
    rm -rf "$work"
}
trap cleanup EXIT

if [ "$1" = demo ] && [ $# -eq 1 ]; then
    demo
    exit 0
fi
[ $# -ge 3 ] && [ "$2" = -- ] || usage
CUR_KEY=$1
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
key=$1; shift 2
once "$key" "$@"

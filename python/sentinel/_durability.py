"""What the server's replication and commit settings mean for Sentinel's guarantees, and the fence sequence.

A claim, a completion and a fence are commits on the primary. A failover
keeps them only if the promoted standby has them: with an asynchronous
standby, or with ``synchronous_commit`` at ``local`` or ``off``, the last
commits may be missing after a promotion, so a key can run twice and a
fence can be handed out again. ``sentinel check`` reports what it finds
here as warnings (a development server has no standby, and that is fine);
``docs/operations.md`` explains the settings that close the window.

A restore from a backup (or a logical replica, whose sequences are not
replicated) may leave ``sentinel.fence_seq`` behind fences already handed
out; :func:`fence_gap` finds that and :func:`resync_fences` moves the
sequence past every fence recorded, plus a margin for fences handed out
after the restore point that only downstream systems saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import psycopg

from ._conn import wrap_exceptions
from .errors import InvalidArgument

__all__ = ["Durability", "durability", "fence_gap", "resync_fences", "DEFAULT_FENCE_MARGIN"]

#: How far past the highest recorded fence resync_fences moves the sequence by default.
DEFAULT_FENCE_MARGIN = 1_000_000

_SETTINGS_SQL = """
select pg_is_in_recovery(),
       current_setting('synchronous_commit'),
       (select source from pg_settings where name = 'synchronous_commit'),
       current_setting('synchronous_standby_names'),
       (select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum')),
       (select count(*) from pg_stat_replication),
       pg_has_role('pg_read_all_stats', 'usage')
"""


@dataclass(frozen=True)
class Durability:
    """The settings that decide whether a committed claim survives a crash or a failover."""

    in_recovery: bool
    synchronous_commit: str
    #: where synchronous_commit comes from (pg_settings.source: default, configuration file, database, user, ...)
    synchronous_commit_source: str
    synchronous_standby_names: str
    #: connected synchronous standbys, or None when this role may not see them (pg_read_all_stats)
    sync_standbys: Optional[int]
    standbys: Optional[int]
    warnings: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        """The settings and the warnings, for ``--json``."""
        return {
            "in_recovery": self.in_recovery, "synchronous_commit": self.synchronous_commit,
            "synchronous_commit_source": self.synchronous_commit_source,
            "synchronous_standby_names": self.synchronous_standby_names,
            "sync_standbys": self.sync_standbys, "standbys": self.standbys, "warnings": list(self.warnings),
        }


def _where(source: str) -> str:
    if source in ("user", "database", "database user"):
        target = {"user": "ROLE <role>", "database": "DATABASE <db>", "database user": "ROLE <role> IN DATABASE <db>"}
        return f"ALTER {target[source]} RESET synchronous_commit"
    if source == "client":
        return "remove synchronous_commit from the connection's options"
    return "set synchronous_commit = on (or remote_apply) in postgresql.conf"


def judge(in_recovery: bool, commit: str, source: str, standby_names: str, sync_standbys: Optional[int],
          ) -> List[str]:
    """The warnings for these settings (empty when claims and completions survive a failover)."""
    if in_recovery:
        return ["this server is a standby (in recovery): claims can only be made on the primary; connect "
                "with target_session_attrs=read-write and list every host (host=a,b) so a client follows a failover"]
    out: List[str] = []
    if commit == "off":
        out.append(f"synchronous_commit is off here (from {source}): a crash of the primary can lose the last "
                   "claims and completions even without a failover, and their work then runs again; "
                   f"{_where(source)}")
    if not standby_names.strip():
        out.append("no synchronous standby (synchronous_standby_names is empty): a failover to an asynchronous "
                   "standby can lose the last claims and completions, so a key may run twice and a fence be handed "
                   "out again; on the primary set synchronous_standby_names (and synchronous_commit = on or "
                   "remote_apply) before relying on a failover")
        return out
    if commit in ("local", "off"):
        out.append(f"synchronous_commit = {commit} (from {source}): commits do not wait for the synchronous "
                   "standby, so a failover can lose the last claims and completions; " + _where(source))
    if sync_standbys == 0:
        out.append(f"synchronous_standby_names is {standby_names!r} but no synchronous standby is connected: "
                   "every commit (every claim) waits until one is")
    return out


def durability(conn: psycopg.Connection[Any]) -> Durability:
    """Read the settings of ``conn``'s session and server, and judge them."""
    with wrap_exceptions():
        row = conn.execute(_SETTINGS_SQL).fetchone()
    assert row is not None
    in_recovery, commit, source, names, sync_count, count, sees_all = row
    sync_standbys = int(sync_count) if sees_all else None
    return Durability(
        in_recovery=bool(in_recovery), synchronous_commit=str(commit), synchronous_commit_source=str(source),
        synchronous_standby_names=str(names), sync_standbys=sync_standbys,
        standbys=int(count) if sees_all else None,
        warnings=judge(bool(in_recovery), str(commit), str(source), str(names), sync_standbys),
    )


def fence_gap(conn: psycopg.Connection[Any]) -> Optional[Tuple[int, int]]:
    """``(next fence, highest recorded fence)`` when the sequence would hand out a fence already used, else None.

    None too when this role may not read the sequence (only the schema owner
    and the operator grant can); ``sentinel check`` as the owner sees it.
    """
    with wrap_exceptions():
        row = conn.execute(
            "select has_sequence_privilege('sentinel.fence_seq', 'select')"
            " and has_table_privilege('sentinel.executions', 'select')").fetchone()
        if not row or not row[0]:
            return None
        next_fence, highest = _fences(conn)
    if highest is None or next_fence > highest:
        return None
    return next_fence, highest


def _fences(conn: psycopg.Connection[Any]) -> Tuple[int, Optional[int]]:
    """The fence the sequence hands out next, and the highest fence recorded (executions and, once it
    exists, the event log, which keeps the fences of purged records)."""
    row = conn.execute("select to_regclass('sentinel.events') is not null"
                       " and has_table_privilege('sentinel.events', 'select')").fetchone()
    events = " (select max(fence) from sentinel.events)," if row and row[0] else ""
    row = conn.execute(
        "select case when s.is_called then s.last_value + 1 else s.last_value end,"
        f" greatest({events} (select max(fence) from sentinel.executions))"
        " from sentinel.fence_seq s").fetchone()
    assert row is not None
    return int(row[0]), None if row[1] is None else int(row[1])


def resync_fences(conn: psycopg.Connection[Any], margin: int = DEFAULT_FENCE_MARGIN) -> Tuple[int, int]:
    """Move ``sentinel.fence_seq`` past every recorded fence plus ``margin``; ``(next fence before, after)``.

    Never moves it back. Run it as the schema owner after a restore or a
    switch to a logical replica, before clients connect; the margin covers
    fences handed out after the restore point, which only downstream systems
    may have seen.
    """
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise InvalidArgument(f"--margin must be a whole number >= 0, got {margin!r}")
    with wrap_exceptions(), conn.transaction():
        conn.execute("lock table sentinel.executions in share row exclusive mode")
        before, found = _fences(conn)
        highest = found or 0
        target = max(before, highest + 1 + margin)
        if target != before:
            conn.execute("select setval('sentinel.fence_seq', %s, false)", (target,))
    return before, target

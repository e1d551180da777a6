# ruff: noqa: S608 (identifiers are quoted by the dialect, values are bind parameters)
"""The SQL of each table layout the Postgres family reads and writes.

Every statement is a SQLAlchemy ``text()`` clause with named bind parameters (values are never
part of the SQL text); identifiers are quoted by the dialect and always schema-qualified.

Locking, the one rule of the row layouts (``native``, ``google``): every writer of a
conversation takes the conversation's lock FIRST (``lock``: the native layout's conversation
row, or a per-key advisory lock on Google's table), then touches message rows. Appends take it
inside their one statement, before any message row exists. One order everywhere means no
deadlocks.

A writer that reads message rows to decide what to change must also read them as the lock left
them. Under READ COMMITTED every part of one statement reads one snapshot, taken when the
statement starts: a lock the statement then waits for returns the newest version of the locked
row, but message rows a writer committed during the wait stay invisible to that statement. So:

* Removals (a position, the first ``n``, all) start with a ``lk`` CTE that takes the lock and
  says whether the statement's snapshot is ``fresh``; everything they change is gated on it.
  Native layout: fresh when the conversation row the lock returned is the version the snapshot
  holds (``ctid``): every writer changes that row in the transaction that changes messages, so
  an unchanged row means unchanged messages. A stale run changes nothing and yields one
  ``(NULL, NULL)`` row; the caller runs it again after ``lock`` in a transaction, where its
  snapshot is taken after the lock (``removal == "single"``). Google's table has no such row
  (the messages a writer added meanwhile cannot be seen from the snapshot at all), so a removal
  runs twice in one transaction and one round trip: first ``held`` false, which only takes the
  advisory lock (and yields the stale row), then ``held`` true, whose snapshot is taken after
  it (``removal == "pipelined"``).
* Insert at an index and replace are a transaction of two statements: ``lock``
  (``lock_for_replace`` for these writers, which create the conversation), then the change.

Three layouts: ``native`` (ours: one row per message in ``<table>`` plus one row per
conversation in ``<table>_conversations`` with count, expiry and catalog (``created_at``,
``updated_at``, ``metadata``: every writer of the row stamps them, see ``_stamped``), so
counts, ``get_keys``, the catalog and sliding expiry never scan messages); ``google``
(Google's ``llama-index-alloydb-pg`` / ``llama-index-cloud-sql-pg`` table: one row per
message, nothing else; Google's writers share it); ``llama_index`` (LlamaIndex's
``PostgresChatStore`` table: one row per conversation, an array of JSON messages: each
operation is one statement on it, and the row lock orders them).

Exactly once: every change records its operation id (``:op``) in ``<table>_ops`` in the same
statement, in every layout (a ``rec`` CTE; removals record the rows they return, as ``reply``),
so a retry whose first attempt's reply was lost finds it there (``recorded``) instead of
applying the change again. A removal records only from a run that acts (its ``lk`` says
``fresh``), an append of the native layout only when it appended.

Every read returns ``(position-or-id, message_text)`` rows; ``message_text`` is the stored JSON
as text (``json`` keeps the bytes written; LlamaIndex's ``jsonb`` is already normalised by the
server). Every removal returns ``(position, message_text)`` in every layout, the position
counted from the start of the conversation as it was before the removal, so an unreadable
removed message is named where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import TextClause, text

from llama_index.storage.chat_store.postgres._ops import (
    ops_statements,
    record,
    record_removed,
)
from llama_index.storage.chat_store.postgres._schema import (
    EXPIRES,
    LayoutName,
    conversations_table,
    ops_table,
    qualified,
)

__all__ = ["LayoutName", "RemovalRun", "Statements", "statements_for"]

RemovalRun = Literal["single", "pipelined", "locked"]
"""How a removal statement runs: ``single`` alone (once more after ``lock`` if it reports
a stale snapshot), ``pipelined`` twice in one transaction (``held`` false, then true),
``locked`` after ``lock`` in a transaction."""


def _stamped(c: str = "") -> str:
    """``SET`` items stamping the catalog of a conversation row a writer adds to.

    ``c``: the row's alias and a dot, if any. Its old values decide: an emptied or expired
    conversation begins again (now, without metadata). ``clock_timestamp()``, not ``now()``:
    taken once the row is locked, so times follow the order of the changes.
    """
    new = f"({c}message_count <= 0 OR {c}expires_at <= now())"
    return (
        f"created_at = CASE WHEN {new} THEN clock_timestamp() ELSE {c}created_at END, "
        f"metadata = CASE WHEN {new} THEN NULL ELSE {c}metadata END, "
        "updated_at = clock_timestamp()"
    )


@dataclass(frozen=True)
class Statements:
    """The statements of one layout over one table.

    Reads yield ``(id_or_position, message_text)``. ``positions`` says whether the
    first column is already the 0-based position (array layout) or a row id. Removals
    always yield the 0-based position the message had.
    """

    layout: LayoutName
    positions: bool
    get_head: TextClause  # key, offset, limit, ttl (refresh_on_read)
    get_tail: TextClause  # key, tail, limit, ttl (refresh_on_read)
    count: TextClause  # key, ttl (refresh_on_read) -> (n,)
    append: TextClause  # key, lock, messages (text[]), n, ttl
    append_one: TextClause  # key, lock, message, ttl -> a row if done (else run ``append``)
    insert_at: TextClause  # key, idx, messages (one), ttl  [row layouts: after ``lock``]
    replace: TextClause  # key, messages, n, ttl  [row layouts: after ``lock_for_replace``]
    # Removals yield ``(position, message_text)`` whatever ``positions`` says, plus one
    # ``(NULL, NULL)`` row from a stale run (row layouts, see ``removal``). Each binds key,
    # lock, ttl and held (Google's layout: the advisory lock is already held).
    delete_all: TextClause  # key
    delete_from_start: TextClause  # key, offset (message at that position)
    delete_from_end: TextClause  # key, offset (0 = the last message)
    delete_oldest: TextClause  # key, n
    removal: RemovalRun
    keys_page: TextClause  # after, page -> (key,)
    clear: TextClause  # [row layouts: after ``lock_all``]
    recorded: TextClause  # op -> (reply,) when operation ``op`` was applied, else no row
    prune: TextClause  # keep: forget operations recorded more than ``keep`` seconds ago
    position_of: TextClause | None = None  # key, id -> (n,)  (row layouts)
    # key, lock -> native: (live count,), or no row: no conversation, nothing is locked and
    # the change must not run (it would act on a conversation created meanwhile, unlocked)
    lock: TextClause | None = None  # (row layouts)
    lock_for_replace: TextClause | None = None  # key, lock: ``lock``, creating the native row
    lock_all: TextClause | None = None  # locks every conversation of the table (row layouts)
    row_lock: TextClause | None = None  # key: LlamaIndex's layout, its conversation's row
    sweep: TextClause | None = None  # -> (conversations removed,)  (native)


def statements_for(
    layout: LayoutName,
    schema: str,
    table: str,
    element_type: str = "json",
    *,
    refresh_on_read: bool = False,
    row_versions: bool = True,
) -> Statements:
    """Build the statements of ``layout`` for ``schema.table``.

    Args:
        layout: Which table layout.
        schema: Schema name (any text).
        table: Table name (any text; for ``llama_index`` the real table, ``data_`` included).
        element_type: ``json`` or ``jsonb``: the array element type of the ``llama_index`` layout.
        refresh_on_read: Native layout: windows and counts also set a live conversation's
            expiry to now + ``:ttl`` (in the same statement).
        row_versions: Native layout: the server has ``ctid`` (PostgreSQL), so a removal
            can check its snapshot and run as one statement; else it runs after ``lock``.
    """
    ops = qualified(schema, ops_table(table))
    if layout == "native":
        conversations = qualified(schema, conversations_table(table))
        return _native(qualified(schema, table), conversations, ops, refresh_on_read, row_versions)
    if layout == "google":
        return _google(qualified(schema, table), ops)
    return _llama_index(qualified(schema, table), ops, element_type)


def _rows_common(m: str, live: str, refresh: str = "") -> dict[str, TextClause]:
    """Row-per-message reads shared by the native and Google layouts.

    ``refresh`` is a ``WITH`` clause put before the windows (see ``_refresh``).
    """
    return {
        "get_head": text(
            f"{refresh}SELECT id, message::text FROM {m} WHERE key = CAST(:key AS text){live} "
            "ORDER BY id LIMIT CAST(:limit AS bigint) OFFSET CAST(:offset AS bigint)"
        ),
        "get_tail": text(
            f"{refresh}SELECT id, message FROM (SELECT id, message::text AS message FROM {m} "
            f"WHERE key = CAST(:key AS text){live} ORDER BY id DESC "
            "LIMIT CAST(:tail AS bigint)) AS t ORDER BY id LIMIT CAST(:limit AS bigint)"
        ),
        "position_of": text(
            f"SELECT count(*) FROM {m} WHERE key = CAST(:key AS text) AND id < CAST(:id AS bigint)"
        ),
    }


def _pick(m: str, direction: str) -> str:
    """The id of the message ``:offset`` rows from the start (ASC) or the end (DESC).

    Gated on ``lk`` (see ``_GATE``), so it runs under the conversation's lock and no writer
    of ours holds these rows. ``FOR UPDATE`` (never ``SKIP LOCKED``, which would pick
    another message than the one at the position) waits for a foreign writer holding a
    row (Google's own store on a shared table) and then skips the row if that writer
    deleted it: the position counts only messages that still exist.
    """
    return (
        f"SELECT id FROM {m} WHERE key = CAST(:key AS text) AND {_GATE} ORDER BY id "
        f"{direction} OFFSET CAST(:offset AS bigint) LIMIT 1 FOR UPDATE"
    )


def _first_ids(m: str) -> str:
    """The ids of the first ``:n`` messages, as an array computed once per statement.

    Never ``id IN (SELECT ... LIMIT n FOR UPDATE)``: as the inner side of a nested-loop
    semi-join that subquery is run again for every candidate row, and each run skips the
    rows this statement already deleted and locks the next ``n``, so the DELETE removed
    the whole conversation (whenever the planner picked that plan).
    """
    return (
        f"ARRAY(SELECT id FROM {m} WHERE key = CAST(:key AS text) AND {_GATE} ORDER BY id "
        "LIMIT CAST(:n AS bigint) FOR UPDATE)"
    )


# A removal's first CTE, ``lk``, takes the conversation's lock and yields one row: ``fresh`` (the
# snapshot shows the conversation as the lock left it) and ``live`` (not expired). The native
# lock yields no row when there is no conversation row: then nothing is removed. Every change
# is gated on it (an uncorrelated sub-select, evaluated once, before the gated rows are locked
# or removed: no message row is locked before the conversation's lock).
_GATE = "(SELECT fresh AND live FROM lk)"
_GATE_ALL = "(SELECT fresh FROM lk)"  # delete_all also removes an expired conversation
# A stale run changed nothing: it says so with one (NULL, NULL) row.
_STALE = "UNION ALL SELECT NULL, NULL FROM lk WHERE NOT lk.fresh"


def _native_lock(c: str, row_versions: bool) -> str:
    """``lk`` for the native layout: the conversation row, locked.

    ``FOR UPDATE`` returns the row's newest version even when the statement's snapshot holds
    an older one (it waited for, or came after, a writer's commit); the sub-select reads the
    snapshot's version. Without ``ctid`` (``row_versions`` false) the statement claims a
    fresh snapshot, which holds only when run after ``lock`` in a transaction.
    """
    fresh = (
        f"c.ctid = (SELECT s.ctid FROM {c} AS s WHERE s.key = CAST(:key AS text))"
        if row_versions
        else "TRUE"
    )
    return (
        f"lk AS (SELECT {fresh} AS fresh, (c.expires_at IS NULL OR c.expires_at > now()) AS live, "
        f"c.message_count AS n FROM {c} AS c WHERE c.key = CAST(:key AS text) FOR UPDATE)"
    )


# Google's layout: the advisory lock, taken in the statement; the snapshot is fresh only when
# the caller held the lock before the statement began (``held``: the second run of two).
_KEY_LOCK = "pg_advisory_xact_lock(CAST(:lock AS bigint))"
_GOOGLE_LOCK = (
    f"lk AS (SELECT {_KEY_LOCK} AS locked, CAST(:held AS boolean) AS fresh, TRUE AS live)"
)

# What a removal returns from its ``gone`` CTE (``id, message``): the position each row had.
# The first ``:n`` messages, or all of them, are removed in id order from position 0.
_FROM_FIRST = "SELECT row_number() OVER (ORDER BY id) - 1, message FROM gone"
_AT_OFFSET = "SELECT CAST(:offset AS bigint), message FROM gone"


def _counted_before(m: str) -> str:
    """The removed row's position: the rows before it in the statement's snapshot.

    Every part of one statement sees the snapshot taken before its ``DELETE`` ran, so
    this counts the conversation as it was.
    """
    return (
        f"SELECT (SELECT count(*) FROM {m} AS b WHERE b.key = CAST(:key AS text) "
        "AND b.id < gone.id), message FROM gone"
    )


def _removals(
    m: str, o: str, lk: str, from_end: str, touch: str = "", drop: str = ""
) -> dict[str, TextClause]:
    """The removals over messages table ``m``, each starting with lock CTE ``lk``.

    Each puts what it returns in ``out (p, message)`` and records it with ``:op`` in ops
    table ``o`` when its run acts (``lk.fresh``).

    Args:
        m: The messages table.
        o: The ops table.
        lk: The ``lk`` CTE (``_native_lock`` or ``_GOOGLE_LOCK``).
        from_end: What ``delete_from_end`` returns from ``gone``: the position it had.
        touch: A CTE, put after ``gone``, updating the conversation row by what was removed.
        drop: A CTE ``conv`` deleting the conversation row (``delete_all``), returning its
            ``expires_at``: an expired conversation's messages are removed, not returned.
    """
    key = "key = CAST(:key AS text)"
    returning = "RETURNING id, message::text AS message)"
    after = f", {touch}" if touch else ""
    conv = f"{drop}, " if drop else ""
    kept = " WHERE NOT EXISTS (SELECT 1 FROM conv WHERE expires_at <= now())" if drop else ""
    rec = record_removed(o, " FROM lk WHERE lk.fresh")

    def removal(which: str, positions: str, head: str = "", tail: str = after) -> TextClause:
        return text(
            f"WITH {lk}, {head}gone AS (DELETE FROM {m} WHERE {key} AND {which} {returning}"
            f"{tail}, out (p, message) AS ({positions}), {rec} "
            f"SELECT p, message FROM out {_STALE} ORDER BY 1"
        )

    return {
        "delete_all": removal(_GATE_ALL, f"{_FROM_FIRST}{kept}", head=conv, tail=""),
        "delete_from_start": removal(f"id = ({_pick(m, 'ASC')})", _AT_OFFSET),
        "delete_from_end": removal(f"id = ({_pick(m, 'DESC')})", from_end),
        "delete_oldest": removal(f"id = ANY({_first_ids(m)})", _FROM_FIRST),
    }


_NEW_ROWS = "unnest(CAST(:messages AS text[])) WITH ORDINALITY AS u(message, n) ORDER BY u.n"


def _refresh(c: str) -> str:
    """A ``WITH`` clause setting a live conversation's expiry to now + ``:ttl``.

    A data-modifying CTE runs whether or not the read uses it, and the read sees the
    snapshot from before it: one statement both reads and slides the expiry. The row
    must be live, so a read never revives an expired conversation.
    """
    return (
        f"WITH touched AS (UPDATE {c} SET expires_at = {EXPIRES} "
        "WHERE key = CAST(:key AS text) AND (expires_at IS NULL OR expires_at > now())) "
    )


def _native(m: str, c: str, o: str, refresh_on_read: bool, row_versions: bool) -> Statements:
    refresh = _refresh(c) if refresh_on_read else ""
    expired = f"EXISTS (SELECT 1 FROM {c} WHERE key = CAST(:key AS text) AND expires_at <= now())"
    live = f" AND NOT {expired}"
    gone = "(SELECT count(*) FROM gone)"
    touch = (  # metadata lives as long as the conversation's messages
        f"conv AS (UPDATE {c} SET message_count = message_count - {gone}, "
        f"expires_at = {EXPIRES}, updated_at = clock_timestamp(), metadata = CASE WHEN "
        f"message_count <= {gone} THEN NULL ELSE metadata END WHERE key = CAST(:key AS text) "
        "AND EXISTS (SELECT 1 FROM gone))"
    )
    return Statements(
        layout="native",
        positions=False,
        **_rows_common(m, live, refresh),
        count=text(
            f"{refresh}SELECT message_count FROM {c} WHERE key = CAST(:key AS text) "
            "AND message_count > 0 AND (expires_at IS NULL OR expires_at > now())"
        ),
        **_native_writes(m, c, o, expired),
        **_removals(
            m,
            o,
            _native_lock(c, row_versions),
            # O(1): the conversation's count (the snapshot's, as the lock left it).
            "SELECT (SELECT n FROM lk) - 1 - CAST(:offset AS bigint), message FROM gone",
            touch,
            f"conv AS (DELETE FROM {c} WHERE key = CAST(:key AS text) AND {_GATE_ALL} "
            "RETURNING expires_at)",
        ),
        removal="single" if row_versions else "locked",
        keys_page=text(
            f"SELECT key FROM {c} WHERE message_count > 0 "
            "AND (expires_at IS NULL OR expires_at > now()) AND key > CAST(:after AS text) "
            "ORDER BY key LIMIT CAST(:page AS bigint)"
        ),
        clear=text(f"WITH conv AS (DELETE FROM {c}) DELETE FROM {m}"),
        **_native_locks(m, c),
        **ops_statements(o),
    )


def _native_writes(m: str, c: str, o: str, expired: str) -> dict[str, TextClause]:
    """The native layout's appends, insert and replace (each records ``:op``)."""
    # The message INSERT reads from the conversation upsert, so it runs after the row lock
    # is held: concurrent appends to one key get ids in commit order.
    upsert = (
        f"stale AS (DELETE FROM {m} WHERE key = CAST(:key AS text) AND {expired}), "
        f"conv AS (INSERT INTO {c} AS c (key, message_count, expires_at, created_at, "
        f"updated_at) VALUES (CAST(:key AS text), CAST(:n AS bigint), {EXPIRES}, "
        "clock_timestamp(), clock_timestamp()) ON CONFLICT (key) DO UPDATE SET message_count = "
        "CASE WHEN c.expires_at <= now() THEN excluded.message_count "
        "ELSE c.message_count + excluded.message_count END, "
        f"expires_at = excluded.expires_at, {_stamped('c.')} RETURNING 1)"
    )
    return {
        "append": text(
            f"WITH {upsert}, {record(o)} INSERT INTO {m} (key, message) "
            f"SELECT CAST(:key AS text), CAST(u.message AS json) FROM conv, {_NEW_ROWS}"
        ),
        # The common case, a live conversation: a plain UPDATE of its row is cheaper than the
        # upsert. No row back means "missing or expired": the caller runs ``append``.
        "append_one": text(
            f"WITH conv AS (UPDATE {c} SET message_count = message_count + 1, "
            f"expires_at = {EXPIRES}, {_stamped()} WHERE key = CAST(:key AS text) "
            "AND (expires_at IS NULL OR expires_at > now()) RETURNING 1), "
            f"{record(o, 'conv')} INSERT INTO {m} (key, message) "
            "SELECT CAST(:key AS text), CAST(:message AS json) FROM conv RETURNING id"
        ),
        **_rewrites(m, o, c),
    }


def _rewrites(m: str, o: str, c: str = "") -> dict[str, TextClause]:
    """``insert_at`` (the tail from ``:idx`` moves behind the new message) and ``replace``.

    ``c``: the conversations table (native layout), whose row both update; the message
    INSERT reads from that update, so nothing is written without the conversation's row.
    """
    key = "key = CAST(:key AS text)"

    def conv(count: str) -> str:
        update = (
            f"UPDATE {c} SET message_count = {count}, expires_at = {EXPIRES}, {_stamped()} "
            f"WHERE {key}"
        )
        return f"conv AS ({update} RETURNING 1), " if c else ""

    source = "conv, " if c else ""
    return {
        "insert_at": text(
            f"WITH tail AS (DELETE FROM {m} WHERE {key} AND id >= (SELECT id FROM {m} "
            f"WHERE {key} ORDER BY id OFFSET CAST(:idx AS bigint) LIMIT 1) RETURNING id, "
            f"message), {conv('message_count + 1')}{record(o)} INSERT INTO {m} (key, message) "
            f"SELECT CAST(:key AS text), s.message FROM {source}"
            "(SELECT 0 AS g, CAST(0 AS bigint) AS id, CAST(u.message AS json) AS message "
            "FROM unnest(CAST(:messages AS text[])) AS u(message) "
            "UNION ALL SELECT 1, id, message FROM tail) AS s ORDER BY s.g, s.id"
        ),
        "replace": text(
            f"WITH gone AS (DELETE FROM {m} WHERE {key}), {conv('CAST(:n AS bigint)')}"
            f"{record(o)} INSERT INTO {m} (key, message) "
            f"SELECT CAST(:key AS text), CAST(u.message AS json) FROM {source}{_NEW_ROWS}"
        ),
    }


def _native_locks(m: str, c: str) -> dict[str, TextClause]:
    """The native layout's conversation locks, and its sweep of expired conversations."""
    return {
        "lock": text(
            f"SELECT CASE WHEN expires_at <= now() THEN 0 ELSE message_count END FROM {c} "
            "WHERE key = CAST(:key AS text) FOR UPDATE"
        ),
        # ``lock``, creating the row if missing, so it also waits for a writer creating the
        # conversation (``lock`` finds no row then, and would not wait): the live count after
        # that writer, as ``lock`` returns it.
        "lock_for_replace": text(
            f"INSERT INTO {c} AS c (key, message_count) VALUES (CAST(:key AS text), 0) "
            "ON CONFLICT (key) DO UPDATE SET message_count = c.message_count "
            "RETURNING CASE WHEN c.expires_at <= now() THEN 0 ELSE c.message_count END"
        ),
        # Every writer changes the conversation row first, so this waits for all of them and
        # holds off new ones (plain reads go on). Locking the rows instead left a gap: a
        # conversation created after that lock and appended to while ``clear`` deleted kept
        # the append's rows with no conversation row (the delete's snapshot predates them).
        "lock_all": text(f"LOCK TABLE {c} IN EXCLUSIVE MODE"),
        "sweep": text(
            f"WITH dead AS (DELETE FROM {c} WHERE expires_at <= now() OR message_count <= 0 "
            f"RETURNING key), gone AS (DELETE FROM {m} WHERE key IN (SELECT key FROM dead)) "
            "SELECT count(*) FROM dead"
        ),
    }


def _google(m: str, o: str) -> Statements:
    # Google's table has no row per conversation: a transaction-scoped advisory lock on
    # the key (``:lock``, a hash of schema, table and key) stands in for it. Appends take
    # it in their statement before the rows get their ids, so ids follow commit order.
    lock = f"SELECT {_KEY_LOCK}"
    return Statements(
        layout="google",
        positions=False,
        **_rows_common(m, ""),
        count=text(f"SELECT count(*) FROM {m} WHERE key = CAST(:key AS text)"),
        append=text(
            f"WITH lk AS ({lock}), {record(o)} INSERT INTO {m} (key, message) "
            f"SELECT CAST(:key AS text), CAST(u.message AS json) FROM lk, {_NEW_ROWS}"
        ),
        append_one=text(
            f"WITH lk AS ({lock}), {record(o)} INSERT INTO {m} (key, message) "
            "SELECT CAST(:key AS text), CAST(:message AS json) FROM lk RETURNING id"
        ),
        **_rewrites(m, o),
        **_removals(m, o, _GOOGLE_LOCK, _counted_before(m)),
        removal="pipelined",
        keys_page=text(
            f"SELECT key FROM {m} WHERE key > CAST(:after AS text) GROUP BY key "
            "ORDER BY key LIMIT CAST(:page AS bigint)"
        ),
        clear=text(f"DELETE FROM {m}"),
        lock=text(lock),
        lock_for_replace=text(lock),
        # Waits for every writer's transaction and holds off new ones (plain reads go on).
        lock_all=text(f"LOCK TABLE {m} IN EXCLUSIVE MODE"),
        **ops_statements(o),
    )


def _llama_index(t: str, o: str, element: str) -> Statements:
    size = "COALESCE(cardinality(t.value), 0)"
    start = (
        "CASE WHEN CAST(:offset AS bigint) < 0 "
        f"THEN GREATEST({size} + CAST(:offset AS bigint), 0) ELSE CAST(:offset AS bigint) END"
    )
    unnest = "unnest(t.value) WITH ORDINALITY AS u(message, n)"

    def window(first: str) -> TextClause:  # the messages from 0-based position ``first`` on
        return text(
            f"SELECT u.n - 1, CAST(u.message AS text) FROM {t} AS t, {unnest} WHERE t.key = "
            f"CAST(:key AS text) AND u.n > {first} ORDER BY u.n LIMIT CAST(:limit AS bigint)"
        )

    return Statements(
        layout="llama_index",
        positions=True,
        get_head=window(start),
        get_tail=window(f"{size} - CAST(:tail AS bigint)"),
        count=text(f"SELECT {size} FROM {t} AS t WHERE t.key = CAST(:key AS text)"),
        **_llama_index_writes(t, o, element),
        delete_all=text(
            f"WITH t AS (DELETE FROM {t} WHERE key = CAST(:key AS text) RETURNING value), "
            f"out (p, message) AS (SELECT u.n - 1, CAST(u.message AS text) FROM t, {unnest}), "
            f"{record_removed(o)} SELECT p, message FROM out ORDER BY p"
        ),
        delete_from_start=_llama_index_delete(t, o, "CAST(:offset AS bigint)"),
        delete_from_end=_llama_index_delete(t, o, f"{size} - 1 - CAST(:offset AS bigint)"),
        delete_oldest=text(
            f"WITH t AS (SELECT key, value FROM {t} WHERE key = CAST(:key AS text) FOR UPDATE), "
            # Array subscripts are 32-bit: cut n to the array's length first.
            f"upd AS (UPDATE {t} AS d SET value = "
            "d.value[LEAST(CAST(:n AS bigint), COALESCE(cardinality(d.value), 0)) + 1:] FROM t "
            "WHERE d.key = t.key AND CAST(:n AS bigint) > 0), "
            f"out (p, message) AS (SELECT u.n - 1, CAST(u.message AS text) FROM t, {unnest} "
            f"WHERE u.n <= CAST(:n AS bigint)), {record_removed(o)} "
            "SELECT p, message FROM out ORDER BY p"
        ),
        removal="single",  # one row holds the conversation: its lock is the statement's
        row_lock=text(f"SELECT 1 FROM {t} WHERE key = CAST(:key AS text) FOR UPDATE"),
        keys_page=text(
            f"SELECT key FROM {t} WHERE COALESCE(cardinality(value), 0) > 0 "
            "AND key > CAST(:after AS text) ORDER BY key LIMIT CAST(:page AS bigint)"
        ),
        clear=text(f"DELETE FROM {t}"),
        **ops_statements(o),
    )


def _llama_index_writes(t: str, o: str, element: str) -> dict[str, TextClause]:
    """LlamaIndex's layout: its appends, insert and replace (each records ``:op``)."""
    array = f"{element}[]"
    size = "COALESCE(cardinality(t.value), 0)"
    # list.insert semantics: negative counts from the end, both ends clamp.
    insert_pos = (
        f"CASE WHEN CAST(:idx AS bigint) < 0 THEN GREATEST({size} + CAST(:idx AS bigint), 0) "
        f"ELSE LEAST(CAST(:idx AS bigint), {size}) END"
    )

    def upsert(value: str, values: str = f"CAST(:messages AS {array})") -> TextClause:
        """The row of ``:key`` created holding ``values``, or its ``value`` set to ``value``."""
        return text(
            f"WITH {record(o)} INSERT INTO {t} AS t (key, value) VALUES (CAST(:key AS text), "
            f"{values}) ON CONFLICT (key) DO UPDATE SET value = {value}"
        )

    appended = "COALESCE(t.value, excluded.value[0:0]) || excluded.value"
    return {
        "append": upsert(appended),
        "append_one": upsert(f"{appended} RETURNING 1", f"ARRAY[CAST(:message AS {element})]"),
        "insert_at": upsert(
            f"COALESCE(t.value[1:{insert_pos}], excluded.value[0:0]) || excluded.value "
            f"|| COALESCE(t.value[{insert_pos} + 1:], excluded.value[0:0])"
        ),
        "replace": upsert("excluded.value"),
    }


def _llama_index_delete(t: str, o: str, position: str) -> TextClause:
    """Remove the array element at 0-based ``position`` (an SQL expression over ``t.value``).

    FOR UPDATE returns the newest version of the row, so the position is computed on what
    the UPDATE changes.
    """
    return text(
        f"WITH cur AS (SELECT t.key, t.value, {position} AS p FROM {t} AS t "
        "WHERE t.key = CAST(:key AS text) FOR UPDATE), "
        "hit AS (SELECT key, p, value[p + 1] AS message FROM cur "
        "WHERE p >= 0 AND p < COALESCE(cardinality(value), 0)), "
        f"upd AS (UPDATE {t} AS t SET value = t.value[1:hit.p] || t.value[hit.p + 2:] "
        "FROM hit WHERE t.key = hit.key), "
        f"out (p, message) AS (SELECT p, CAST(message AS text) FROM hit), {record_removed(o)} "
        "SELECT p, message FROM out"
    )

"""How the Postgres store runs a call: parameters, locks, removals, exactly-once changes.

Each is a plan (see the kit, ``core.backend``) of the steps in ``_drivers``, so the sync
and the async driver run the same statements in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import TextClause

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    SerializationError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import Change, Plan, messages_removed
from llama_index.storage.chat_store.core.messages import messages_from_json
from llama_index.storage.chat_store.core.tools import safe_trim_plan
from llama_index.storage.chat_store.postgres._drivers import RefusedError, Row
from llama_index.storage.chat_store.postgres._layouts import Statements
from llama_index.storage.chat_store.postgres._steps import Fetch, FetchMany, Transaction, run
from llama_index.storage.chat_store.postgres._tables import _Tables, lock_id

# Positions beyond any conversation's length that still fit a bigint parameter.
_FAR = 2**62
_DUPLICATE = "23505"  # unique violation: the operation id is recorded already
Body = Callable[[Statements, dict[str, Any]], Plan[list[Row]]]
"""A change's statements: ``body(statements, params)``, ``params`` holding its ``op``."""


class _NeedsPosition(Exception):  # noqa: N818 (internal signal, never escapes)
    """A row failed to parse; its position is looked up before raising CorruptDataError."""

    def __init__(self, row_id: int, data: str) -> None:
        self.row_id = row_id
        self.data = data


def _replayed(found: list[Row]) -> list[Row]:
    """The reply a change recorded with its operation id: the rows a removal returned."""
    reply = found[0][0]
    return [] if reply is None else [(int(p), m) for p, m in json.loads(reply)]


def _acted(rows: list[Row]) -> list[Row]:
    """The removed rows, without a stale run's report (a lock-only run's, when pipelined)."""
    return [row for row in rows if row[0] is not None]


class _Calls(_Tables):
    """Parameters and results shared by sync and async calls, and how changes run."""

    def _ttl(self) -> float | None:
        return float(self.ttl) if self.ttl is not None else None

    def _key_params(self, key: str) -> dict[str, Any]:
        """``key`` and ``ttl``: every change binds them (``_once`` adds ``op`` and ``lock``)."""
        return {"key": key, "ttl": self._ttl()}

    def _key_lock(self, key: str) -> int:
        """The advisory lock id of conversation ``key`` on Google's table (see ``_layouts``)."""
        return lock_id("\x00".join((self.schema_name, self.table_name, key)))

    def _window(
        self, st: Statements, key: str, offset: int, limit: int | None
    ) -> tuple[TextClause, dict[str, Any]]:
        ttl = self._ttl()  # used only by refresh_on_read statements
        if offset < 0:
            return st.get_tail, {"key": key, "tail": -offset, "limit": limit, "ttl": ttl}
        return st.get_head, {"key": key, "offset": offset, "limit": limit, "ttl": ttl}

    def _append_params(self, key: str, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        texts = [message_to_json(m) for m in messages]
        return {**self._key_params(key), "messages": texts, "n": len(texts)}

    @staticmethod
    def _count(rows: list[Row]) -> int:
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    @staticmethod
    def _parse(key: str, rows: list[Row], st: Statements) -> list[ChatMessage]:
        """Parse a read's ``(id_or_position, message_text)`` rows through core's batch decoder.

        Raises:
            _NeedsPosition: A row of a layout that reads row ids is unreadable (its position
                is looked up before the error is raised).
        """
        texts = [data for _, data in rows]
        if st.positions:  # contiguous positions: the first names every other
            return messages_from_json(texts, key=key, start=int(rows[0][0]) if rows else 0)
        try:
            return messages_from_json(texts, key=key)
        except (CorruptDataError, SerializationError) as exc:
            # The error's position is the row's index in this read; its id finds the real one.
            ident, data = rows[exc.position or 0]
            raise _NeedsPosition(ident, data) from exc

    @staticmethod
    def _removed(key: str, rows: list[Row]) -> list[ChatMessage]:
        """Parse what a removal returned: ``(position it had, message_text)`` rows.

        Raises:
            CorruptDataError: A removed message is unreadable (the first one, by position).
                The removal is done (it was atomic, and refusing it would leave corrupt data
                no delete could remove): the error says so and carries the stored data.
            SerializationError: The same, for a message LlamaIndex's model cannot hold.
        """
        pairs = [(int(position), data) for position, data in rows]
        return messages_removed(key, pairs, storage="PostgreSQL")

    def _once(self, change: Change, params: dict[str, Any], body: Body) -> Plan[list[Row]]:
        """Apply ``body(statements, params)`` once, however often the call is retried.

        Every attempt passes ``params`` with the same operation id ``op`` (``change.id``),
        which the change's statements record in the ops table in the transaction that
        applies it. An attempt after one that may have reached the server (``change.check``)
        first looks ``op`` up: found, the change was applied and only its reply was lost, so
        the recorded reply (the removed rows) is returned.
        """
        table = self._resolved or (yield from self._table_plan())  # no generator once known
        st = table.statements
        params = {**params, "op": change.id}
        if st.layout == "google":  # the only layout whose statements take the advisory lock
            params["lock"] = self._key_lock(params["key"])
        if change.check:
            found = yield from run(Fetch(st.recorded, {"op": change.id}))
            if found:
                return _replayed(found)
        elif table.pruning.due():
            yield from run(Fetch(st.prune, {"keep": self._record_seconds()}))
        try:
            return (yield from body(st, params))
        except RefusedError as refused:
            if refused.state != _DUPLICATE:
                raise
            # Another attempt of this call, still running when this one started, won.
            found = yield from run(Fetch(st.recorded, {"op": change.id}))
            if not found:
                raise
            return _replayed(found)

    @staticmethod
    def _locked(
        st: Statements, clause: TextClause, params: dict[str, Any], lock: TextClause | None = None
    ) -> Plan[list[Row]]:
        """Run a change of a conversation: after its lock (row layouts), in one transaction.

        Native layout: when ``lock`` finds no conversation row it locks nothing, so the
        change is not run: the conversation was empty when the lock ran (every message row
        has its conversation row), and a change run later would act on a conversation
        created meanwhile without holding its lock (a concurrent append would not wait, and
        the change would miss it). Writers that create the conversation (replace, insert
        at an index) pass ``lock_for_replace``, which always returns its row.

        Args:
            st: The layout's statements.
            clause: The change; its snapshot is taken once the lock is held.
            params: The change's parameters (``_once``'s, which the lock takes too).
            lock: The lock statement, if not the layout's ``lock``.
        """
        held = lock if lock is not None else st.lock
        if held is None:
            return (yield from run(Fetch(clause, params)))

        def body() -> Plan[list[Row]]:
            if not (yield Fetch(held, params)) and st.layout == "native":
                return []  # no conversation when the lock ran: nothing to change
            rows: list[Row] = yield Fetch(clause, params)
            return rows

        return (yield from run(Transaction(body)))

    def _remover(self, clause_of: Callable[[Statements], TextClause]) -> Body:
        """The body removing by ``clause_of(statements)``, as the layout runs removals.

        ``single``: one statement, and again after the lock in a transaction if its snapshot
        was stale (another writer of the key committed while it waited for the lock).
        ``pipelined``: twice in one transaction and round trip, the first run taking the
        lock. ``locked``: after the lock in a transaction. Returns the removed rows.
        """

        def remove(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
            clause = clause_of(st)
            if st.removal == "pipelined":
                runs = [{**params, "held": False}, {**params, "held": True}]
                return _acted((yield from run(FetchMany(clause, runs))))
            if st.removal == "single":
                rows = yield from run(Fetch(clause, params))
                if not (len(rows) == 1 and rows[0][0] is None):  # not a stale run's report
                    return rows
            return _acted((yield from self._locked(st, clause, params)))

        return remove

    def _safe_trimmer(self, key: str, n: int) -> Body:
        """The body removing the first ``n`` messages and the tool results that would lead.

        One transaction: the conversation's lock first (as every writer takes it; the native
        one returns the count), then the messages after the first ``n`` (core's
        ``safe_trim_plan``), then the layout's ``delete_oldest`` of that many, so nothing
        changes between reading and removing.
        """

        def remove(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
            lock = st.lock if st.lock is not None else st.row_lock

            def stored(lo: int, hi: int) -> Plan[list[str]]:
                rows = yield Fetch(*self._window(st, key, lo, hi - lo))
                return [data for _, data in rows]

            def body() -> Plan[list[Row]]:
                held = [] if lock is None else (yield Fetch(lock, params))
                if lock is not None and not held:
                    return []  # no conversation when the lock ran: nothing to remove
                if st.layout != "native":  # the native lock already returned the live count
                    held = yield Fetch(st.count, self._key_params(key))
                count = self._count(held)
                take = yield from safe_trim_plan(stored, n, count)
                if take <= 0:
                    return []
                rows = yield Fetch(st.delete_oldest, {**params, "n": take, "held": True})
                return _acted(rows)

            return (yield from run(Transaction(body)))

        return remove

    @staticmethod
    def _append(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
        return (yield from run(Fetch(st.append, params)))

    @staticmethod
    def _append_one(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
        rows = yield from run(Fetch(st.append_one, params))
        if rows:
            return rows
        # Native layout: no live conversation row to update; the upsert creates it.
        appended = {**params, "messages": [params["message"]], "n": 1}
        return (yield from run(Fetch(st.append, appended)))

    def _inserter(self, idx: int) -> Body:
        """The body inserting one message at ``idx`` (``list.insert`` rules)."""

        def insert(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
            if st.lock is None:
                return (yield from run(Fetch(st.insert_at, params)))
            # The lock that creates the conversation row: with no row, ``lock`` would not
            # wait for a writer creating the conversation and the message would land at its
            # end.
            lock = st.lock_for_replace
            assert lock is not None

            def body() -> Plan[list[Row]]:
                rows = yield Fetch(lock, params)
                if st.layout == "google":  # the advisory lock counts nothing
                    rows = yield Fetch(st.count, params)
                count = self._count(rows)
                position = max(count + idx, 0) if idx < 0 else min(idx, count)  # list.insert's
                clause = st.insert_at if position < count else st.append  # at the end: append
                done: list[Row] = yield Fetch(clause, {**params, "idx": position})
                return done

            return (yield from run(Transaction(body)))

        return insert

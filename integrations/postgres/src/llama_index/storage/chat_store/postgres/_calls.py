"""How the Postgres store runs a call: parameters, locks, removals, exactly-once changes."""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import TextClause

from llama_index.storage.chat_store.core import (
    ChatMessage,
    ChatStoreError,
    CorruptDataError,
    SerializationError,
    message_from_json,
    message_to_json,
    messages_removed,
)
from llama_index.storage.chat_store.core.messages import messages_from_json
from llama_index.storage.chat_store.core.retries import (
    acall_with_retries,
    call_with_retries,
    new_op_id,
)
from llama_index.storage.chat_store.postgres._drivers import (
    AsyncConnections,
    AsyncRunner,
    Row,
    Runner,
    SyncConnections,
    is_duplicate,
)
from llama_index.storage.chat_store.postgres._layouts import Statements
from llama_index.storage.chat_store.postgres._tables import _Tables

# Positions beyond any conversation's length that still fit a bigint parameter.
_FAR = 2**62
_FROM_END: Callable[[Statements], TextClause] = operator.attrgetter("delete_from_end")
_FROM_START: Callable[[Statements], TextClause] = operator.attrgetter("delete_from_start")


class _NeedsPosition(Exception):  # noqa: N818 (internal signal, never escapes)
    """A row failed to parse; its position is looked up before raising CorruptDataError."""

    def __init__(self, row_id: int, data: str) -> None:
        self.row_id = row_id
        self.data = data


def _replayed(found: list[Row]) -> list[Row]:
    """The reply a change recorded with its operation id: the rows a removal returned."""
    reply = found[0][0]
    return [] if reply is None else [(int(p), m) for p, m in json.loads(reply)]


def _stale(rows: list[Row]) -> bool:
    """Whether a removal reported a stale snapshot (and changed nothing): one NULL row."""
    return len(rows) == 1 and rows[0][0] is None


def _acted(rows: list[Row]) -> list[Row]:
    """The removed rows, without a stale run's report (a lock-only run's, when pipelined)."""
    return [row for row in rows if row[0] is not None]


class _Calls(_Tables):
    """Parameters and results shared by sync and async calls, and how changes run."""

    def _ttl(self) -> float | None:
        return float(self.ttl) if self.ttl is not None else None

    def _key_params(self, key: str) -> dict[str, Any]:
        """``key``, its advisory lock id (Google's layout) and ``ttl``: every change binds them."""
        name = "\x00".join((self.schema_name, self.table_name, key)).encode("utf-8")
        lock = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        return {"key": key, "lock": lock, "ttl": self._ttl()}

    def _window(
        self, st: Statements, key: str, offset: int, limit: int | None
    ) -> tuple[TextClause, dict[str, Any]]:
        ttl = self._ttl()  # used only by refresh_on_read statements
        if offset < 0:
            return st.get_tail, {"key": key, "tail": -offset, "limit": limit, "ttl": ttl}
        return st.get_head, {"key": key, "offset": offset, "limit": limit, "ttl": ttl}

    def _count_params(self, key: str) -> dict[str, Any]:
        return {"key": key, "ttl": self._ttl()}  # ttl: used only by refresh_on_read

    def _delete_at(
        self, key: str, idx: int
    ) -> tuple[Callable[[Statements], TextClause], dict[str, Any]] | None:
        """The statement removing position ``idx``; ``None`` when no conversation has it."""
        if not -_FAR <= idx < _FAR:
            return None
        if idx < 0:
            return _FROM_END, {**self._key_params(key), "offset": -1 - idx}
        return _FROM_START, {**self._key_params(key), "offset": idx}

    def _append_params(self, key: str, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        texts = [message_to_json(m) for m in messages]
        return {**self._key_params(key), "messages": texts, "n": len(texts)}

    def _append_one_params(self, key: str, message: ChatMessage) -> dict[str, Any]:
        return {**self._key_params(key), "message": message_to_json(message)}

    @staticmethod
    def _index(idx: Any) -> int:
        """``idx`` as an int, as ``list.insert`` takes it (TypeError otherwise)."""
        return operator.index(idx)

    @staticmethod
    def _insert(
        st: Statements, params: dict[str, Any], idx: int, count: int
    ) -> tuple[TextClause, dict[str, Any]]:
        """The statement inserting at ``idx`` (``list.insert`` rules) into ``count`` messages."""
        position = max(count + idx, 0) if idx < 0 else min(idx, count)
        if position >= count:
            return st.append, params
        return st.insert_at, {**params, "idx": position}

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

    def _once(
        self,
        params: dict[str, Any],
        change: Callable[[Statements, SyncConnections, dict[str, Any]], list[Row]],
    ) -> list[Row]:
        """Apply ``change(statements, connections, params)`` once, however often it is retried.

        Every attempt passes ``params`` with the same operation id ``op``, which the change's
        statements record in the ops table in the transaction that applies it. An attempt
        after one that may have reached the server first looks ``op`` up: found, the change
        was applied and only its reply was lost, so the recorded reply (the removed rows) is
        returned.

        Raises:
            BackendUnavailableError: Every attempt failed for want of the server (the message
                says whether the change may have been applied).
        """
        op = new_op_id()
        params = {**params, "op": op}
        sent = False

        def attempt() -> list[Row]:
            nonlocal sent
            table = self._table()
            st = table.statements
            connections = self._connections()
            if sent:
                found = connections.fetch(st.recorded, {"op": op})
                if found:
                    return _replayed(found)
            elif table.pruning.due():
                connections.fetch(st.prune, {"keep": self._record_seconds()})
            sent = True
            try:
                return change(st, connections, params)
            except ChatStoreError as exc:
                if not is_duplicate(exc):
                    raise
                # Another attempt of this call, still running when this one started, won.
                found = connections.fetch(st.recorded, {"op": op})
                if not found:
                    raise
                return _replayed(found)

        return call_with_retries(attempt, self._retry_policy, mutates=True)

    def _messages(self, key: str, st: Statements, rows: list[Row]) -> list[ChatMessage]:
        try:
            return self._parse(key, rows, st)
        except _NeedsPosition as bad:
            assert st.position_of is not None
            found = self._connections().fetch(st.position_of, {"key": key, "id": bad.row_id})
            message_from_json(bad.data, key=key, position=int(found[0][0]))
            raise AssertionError("unreachable: the row did not parse") from None

    def _change(
        self, key: str, clause: TextClause, params: dict[str, Any], lock: TextClause | None = None
    ) -> list[Row]:
        """Run a change of conversation ``key``: after its lock (row layouts), in one transaction.

        Native layout: when ``lock`` finds no conversation row it locks nothing, so the
        change is not run: the conversation was empty when the lock ran (every message row
        has its conversation row), and a change run later would act on a conversation
        created meanwhile without holding its lock (a concurrent append would not wait, and
        the change would miss it). Writers that create the conversation (replace, insert
        at an index) pass ``lock_for_replace``, which always returns its row.

        Args:
            key: The conversation.
            clause: The change; its snapshot is taken once the lock is held.
            params: The change's parameters.
            lock: The lock statement, if not the layout's ``lock``.
        """
        st = self._statements()
        lock = lock if lock is not None else st.lock
        if lock is None:
            return self._connections().fetch(clause, params)
        key_params = self._key_params(key)

        def locked(tx: Runner) -> list[Row]:
            if not tx.fetch(lock, key_params) and st.layout == "native":
                return []  # no conversation when the lock ran: nothing to change
            return tx.fetch(clause, params)

        return self._connections().transaction(locked)

    def _remove(self, key: str, clause: TextClause, params: dict[str, Any]) -> list[Row]:
        """Run removal ``clause`` of conversation ``key`` as its layout runs removals.

        ``single``: one statement, and again after the lock in a transaction if its snapshot
        was stale (another writer of the key committed while it waited for the lock).
        ``pipelined``: twice in one transaction and round trip, the first run taking the
        lock. ``locked``: after the lock in a transaction. Returns the removed rows.
        """
        st = self._statements()
        connections = self._connections()
        if st.removal == "pipelined":
            runs = [{**params, "held": False}, {**params, "held": True}]
            return _acted(connections.fetch_many(clause, runs))
        if st.removal == "single":
            rows = connections.fetch(clause, params)
            if not _stale(rows):
                return rows
        return _acted(self._change(key, clause, params))

    def _append_one(
        self, st: Statements, connections: SyncConnections, params: dict[str, Any]
    ) -> list[Row]:
        rows = connections.fetch(st.append_one, params)
        if rows:
            return rows
        # Native layout: no live conversation row to update; the upsert creates it.
        return connections.fetch(st.append, {**params, "messages": [params["message"]], "n": 1})

    def _insert_at(
        self, st: Statements, connections: SyncConnections, params: dict[str, Any], idx: int
    ) -> list[Row]:
        if st.lock is None:
            return connections.fetch(st.insert_at, params)
        # The lock that creates the conversation row: with no row, ``lock`` would not wait
        # for a writer creating the conversation and the message would land at its end.
        lock = st.lock_for_replace
        assert lock is not None

        def insert(tx: Runner) -> list[Row]:
            rows = tx.fetch(lock, params)
            if st.layout == "google":  # the advisory lock counts nothing
                rows = tx.fetch(st.count, params)
            return tx.fetch(*self._insert(st, params, idx, self._count(rows)))

        return connections.transaction(insert)

    async def _aonce(
        self,
        params: dict[str, Any],
        change: Callable[[Statements, AsyncConnections, dict[str, Any]], Awaitable[list[Row]]],
    ) -> list[Row]:
        """Async :meth:`_once`."""
        op = new_op_id()
        params = {**params, "op": op}
        sent = False

        async def attempt() -> list[Row]:
            nonlocal sent
            table = await self._atable()
            st = table.statements
            connections = self._aconnections()
            if sent:
                found = await connections.fetch(st.recorded, {"op": op})
                if found:
                    return _replayed(found)
            elif table.pruning.due():
                await connections.fetch(st.prune, {"keep": self._record_seconds()})
            sent = True
            try:
                return await change(st, connections, params)
            except ChatStoreError as exc:
                if not is_duplicate(exc):
                    raise
                found = await connections.fetch(st.recorded, {"op": op})
                if not found:
                    raise
                return _replayed(found)

        return await acall_with_retries(attempt, self._retry_policy, mutates=True)

    async def _amessages(self, key: str, st: Statements, rows: list[Row]) -> list[ChatMessage]:
        try:
            return self._parse(key, rows, st)
        except _NeedsPosition as bad:
            assert st.position_of is not None
            found = await self._aconnections().fetch(st.position_of, {"key": key, "id": bad.row_id})
            message_from_json(bad.data, key=key, position=int(found[0][0]))
            raise AssertionError("unreachable: the row did not parse") from None

    async def _achange(
        self, key: str, clause: TextClause, params: dict[str, Any], lock: TextClause | None = None
    ) -> list[Row]:
        """Async :meth:`_change`."""
        st = await self._astatements()
        lock = lock if lock is not None else st.lock
        if lock is None:
            return await self._aconnections().fetch(clause, params)
        key_params = self._key_params(key)

        async def locked(tx: AsyncRunner) -> list[Row]:
            if not await tx.fetch(lock, key_params) and st.layout == "native":
                return []  # as in ``_change``
            return await tx.fetch(clause, params)

        return await self._aconnections().transaction(locked)

    async def _aremove(self, key: str, clause: TextClause, params: dict[str, Any]) -> list[Row]:
        """Async :meth:`_remove`."""
        st = await self._astatements()
        connections = self._aconnections()
        if st.removal == "pipelined":
            runs = [{**params, "held": False}, {**params, "held": True}]
            return _acted(await connections.fetch_many(clause, runs))
        if st.removal == "single":
            rows = await connections.fetch(clause, params)
            if not _stale(rows):
                return rows
        return _acted(await self._achange(key, clause, params))

    async def _aappend_one(
        self, st: Statements, connections: AsyncConnections, params: dict[str, Any]
    ) -> list[Row]:
        rows = await connections.fetch(st.append_one, params)
        if rows:
            return rows
        appended = {**params, "messages": [params["message"]], "n": 1}
        return await connections.fetch(st.append, appended)

    async def _ainsert_at(
        self, st: Statements, connections: AsyncConnections, params: dict[str, Any], idx: int
    ) -> list[Row]:
        if st.lock is None:
            return await connections.fetch(st.insert_at, params)
        lock = st.lock_for_replace  # as in add_message: it waits for a creating writer
        assert lock is not None

        async def insert(tx: AsyncRunner) -> list[Row]:
            rows = await tx.fetch(lock, params)
            if st.layout == "google":  # the advisory lock counts nothing
                rows = await tx.fetch(st.count, params)
            return await tx.fetch(*self._insert(st, params, idx, self._count(rows)))

        return await connections.transaction(insert)

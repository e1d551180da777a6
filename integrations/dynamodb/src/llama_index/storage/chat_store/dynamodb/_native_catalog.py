"""The native layout's conversation catalog (``Capability.CATALOG``).

Each meta item is its conversation's catalog entry: ``Created`` and ``Updated`` (epoch ms,
stamped by the commit that makes the change, from this client's clock), ``Metadata`` (a map
of name to compact JSON), and, while the conversation holds messages, ``ChatStoreListed``
(one value for all) and ``ChatStoreOrder`` (the key, cut to 1,024 bytes): the keys of the
sparse index :data:`CATALOG_INDEX`, which holds one entry per conversation in key order. A
listing queries the index from the cursor (O(page), never a scan) and reads the page's meta
items by key in one strongly consistent BatchGetItem; only live conversations are listed
(the index lags the table a little on AWS, and keeps expired conversations until DynamoDB
deletes them). Metadata changes are commits on the meta item like any other change
(conditioned on its version), so they never lose a concurrent append's count, and an
append never loses metadata.

Meta items written by earlier versions have no times and no metadata (``None``, ``{}``):
the next change stamps ``Updated``; ``Created`` stays unknown until the conversation is
emptied and begun again. Tables created by earlier versions have no catalog index:
:meth:`NativeCatalog.backfill` lists their conversations once the index is added
(``DynamoDBChatStore.create_table()`` does both).
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from llama_index.storage.chat_store.core import CorruptDataError
from llama_index.storage.chat_store.core.backend import Plan
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    decode_metadata,
    from_epoch_ms,
)
from llama_index.storage.chat_store.dynamodb._expr import Expr, text
from llama_index.storage.chat_store.dynamodb._native_meta import (
    CATALOG_ATTRIBUTES,
    CATALOG_INDEX,
    KEY_COPY,
    LISTED,
    LISTED_VALUE,
    META_SK,
    ORDER,
    Meta,
    catalog_index_definition,
    order_of,
)
from llama_index.storage.chat_store.dynamodb._native_reads import NativeReads, missing_index

__all__ = ["NativeCatalog", "add_catalog_index"]

# UpdateTable's refusals while another store adds the same index.
_INDEX_BUSY = {"ResourceInUseException", "LimitExceededException", "ValidationException"}


class NativeCatalog(NativeReads):
    """The catalog reads of the native layout (its metadata change is :class:`NativeLayout`'s)."""

    def _entry(self, key: str, meta: Meta, now: float) -> ConversationInfo | None:
        """Return the catalog entry ``meta`` describes (None: no messages at ``now``)."""
        count = meta.count(now)
        if count == 0:
            return None
        try:
            metadata = decode_metadata(dict(meta.metadata))
        except ValueError as exc:
            raise CorruptDataError(
                f"the metadata of key {key!r} in DynamoDB table {self.t.name!r} is not JSON",
                key=key,
            ) from exc
        return ConversationInfo(
            key, count, from_epoch_ms(meta.created), from_epoch_ms(meta.updated), metadata
        )

    def info(self, key: str) -> Plan[ConversationInfo | None]:
        """Read one conversation's catalog entry (None: no messages)."""
        meta = yield from self._read_meta(key)
        return self._entry(key, meta, time.time())

    def catalog_page(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        """Read the page of live conversations after ``after`` whose key starts with ``prefix``.

        Index entries of conversations no longer live are skipped and the page filled up
        from further entries, so a page is short only when it is the last.

        Raises:
            ConfigurationError: The table has no catalog index.
        """
        if not self.catalog_index:
            raise missing_index(
                self.t.name, CATALOG_INDEX,
                "list_conversations() queries (tables created by earlier versions lack it)",
                "call DynamoDBChatStore(...).create_table() once, which adds it to the "
                "existing table and lists the conversations already there",
            )  # fmt: skip
        found: list[ConversationInfo] = []
        while True:
            keys, more = yield from self._listed(prefix, after, limit - len(found))
            now = time.time()
            # The page's meta items by key (one BatchGetItem per 100); absent ones are empty.
            items = yield from self.t.batch_get(
                "list conversations", [self._key(k, META_SK) for k in keys]
            )
            by_key = {item[self.t.pk]["S"]: item for item in items}
            metas = {k: self._parse_meta(k, by_key.get(k)) for k in keys}
            found += [e for k in keys if (e := self._entry(k, metas[k], now)) is not None]
            if not more:
                return ConversationPage(found, None)
            after = keys[-1]
            if len(found) == limit:
                return ConversationPage(found, after)

    def _listed(
        self, prefix: str, after: str | None, want: int
    ) -> Plan[tuple[list[str], bool]]:  # fmt: skip
        """Return the first ``want`` keys in the index after ``after`` starting with ``prefix``.

        Also whether more follow. Keys come in index order, which is key order except
        among keys sharing their first 1,024 bytes (their :data:`ORDER` is the same): such a
        group is read whole and sorted here before a page ends inside it.
        """
        low = order_of(prefix)
        e = Expr()
        condition = f"{e.n(LISTED)} = {e.v(text(LISTED_VALUE))}"
        if after is not None and after >= prefix:
            if not after.startswith(prefix):
                return [], False  # past every key with the prefix
            start = order_of(after)  # a cut key: its group may hold keys after it
            op = ">" if start == after else ">="
            condition += f" AND {e.n(ORDER)} {op} {e.v(text(start))}"
        elif prefix:
            condition += f" AND begins_with({e.n(ORDER)}, {e.v(text(low))})"
        params: dict[str, Any] = {"IndexName": CATALOG_INDEX, "KeyConditionExpression": condition,
                                  "Limit": want + 1, **e.params()}  # fmt: skip
        rows: list[tuple[str, str]] = []  # (order, key), in index order
        while True:
            page = yield self.t.call("list conversations", "query", **params)
            for item in page.get("Items", []):
                order, key = item[ORDER]["S"], item[self.t.pk]["S"]
                if order > low and not order.startswith(low):
                    return _first(rows, want, done=True)
                if key.startswith(prefix) and (after is None or key > after):
                    rows.append((order, key))
            if "LastEvaluatedKey" not in page:
                return _first(rows, want, done=True)
            if len(rows) > want and rows[-1][0] != rows[want - 1][0]:
                return _first(rows, want, done=False)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def backfill(self) -> Plan[int]:
        """List every live conversation whose meta item predates the catalog index in it.

        Idempotent and safe beside running stores: each update only adds the index keys to a
        meta item that still holds messages (never reviving a removed conversation) and
        leaves its version alone (no writer has to retry). Returns how many were updated.
        """
        updated, start = 0, None
        while True:
            keys, start = yield from self.keys_page(start)
            for key in keys:
                e = Expr()
                updated += yield from self.t.update_if(  # lost: removed, or already listed
                    "list a conversation in the catalog", self._key(key, META_SK), e,
                    f"SET {e.n(LISTED)} = {e.v(text(LISTED_VALUE))}, "
                    f"{e.n(ORDER)} = {e.v(text(order_of(key)))}",
                    f"attribute_exists({e.n(KEY_COPY)}) AND attribute_not_exists({e.n(ORDER)})",
                )  # fmt: skip
            if start is None:
                return updated


def _first(rows: list[tuple[str, str]], want: int, *, done: bool) -> tuple[list[str], bool]:
    """Return the first ``want`` keys of ``rows`` in key order, and whether more follow.

    ``rows`` holds every key up to its last :data:`ORDER` group (``done``: every key there is).
    """
    keys = sorted(key for _, key in rows)
    return keys[:want], len(keys) > want or not done


def add_catalog_index(client: Any, table: str, described: dict[str, Any]) -> bool:
    """Add the catalog index to a recommended table without it; wait until it is built.

    ``described`` is the table's DescribeTable. Returns whether the index was missing
    (another store may be adding it at the same time: then this waits for it as well).

    Raises:
        ClientError: DynamoDB refused to add it.
    """
    indexes = [i.get("IndexName") for i in described.get("GlobalSecondaryIndexes") or []]
    ranged = any(k["KeyType"] == "RANGE" for k in described["KeySchema"])
    if not ranged or CATALOG_INDEX in indexes:
        return False
    index = catalog_index_definition()
    if described.get("BillingModeSummary", {}).get("BillingMode") != "PAY_PER_REQUEST":
        capacity = described.get("ProvisionedThroughput", {})
        index["ProvisionedThroughput"] = {
            name: max(1, int(capacity.get(name) or 1))
            for name in ("ReadCapacityUnits", "WriteCapacityUnits")
        }
    refused: ClientError | None = None
    try:
        client.update_table(
            TableName=table, AttributeDefinitions=CATALOG_ATTRIBUTES,
            GlobalSecondaryIndexUpdates=[{"Create": index}],
        )  # fmt: skip
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in _INDEX_BUSY:
            raise
        refused = exc
    while True:
        found = client.describe_table(TableName=table)["Table"]
        status = {
            i["IndexName"]: i.get("IndexStatus") for i in found.get("GlobalSecondaryIndexes") or []
        }
        if status.get(CATALOG_INDEX) == "ACTIVE":
            return True
        if CATALOG_INDEX not in status and refused is not None:
            raise refused  # not another store's index being built: a real refusal
        time.sleep(2)

"""The Tablestore emulator serves the real SDK as the service documents it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import tablestore as ts

from llama_index.storage.chat_store.tablestore.testing import (
    TablestoreConnection,
    TablestoreEmulator,
    start_tablestore,
)

PK = [("session_id", "STRING"), ("seq", "INTEGER")]


@pytest.fixture(scope="module")
def emulator() -> Iterator[TablestoreEmulator]:
    server = start_tablestore()
    yield server
    server.cleanup()


@pytest.fixture
def client(emulator: TablestoreEmulator) -> Any:
    c = ts.OTSClient(emulator.endpoint, emulator.access_key_id, emulator.access_key_secret,
                     emulator.instance_name, retry_policy=ts.NoRetryPolicy())  # fmt: skip
    for table in c.list_table():
        c.delete_table(table)
    c.create_table(
        ts.TableMeta("t", PK), ts.TableOptions(), ts.ReservedThroughput(ts.CapacityUnit(0, 0))
    )
    return c


def _pk(key: str, seq: Any) -> list[tuple[str, Any]]:
    return [("session_id", key), ("seq", seq)]


def _code(call: Any) -> str:
    with pytest.raises(ts.OTSServiceError) as info:
        call()
    return str(info.value.get_error_code())


def test_tables_create_list_describe_delete(client: Any) -> None:
    assert client.list_table() == ("t",)
    described = client.describe_table("t")
    assert described.table_meta.schema_of_primary_key == PK
    assert _code(lambda: client.create_table(
        ts.TableMeta("t", PK), ts.TableOptions(), ts.ReservedThroughput(ts.CapacityUnit(0, 0))
    )) == "OTSObjectAlreadyExist"  # fmt: skip
    client.delete_table("t")
    assert client.list_table() == ()
    assert _code(lambda: client.describe_table("t")) == "OTSObjectNotExist"


def test_missing_table_is_object_not_exist(client: Any) -> None:
    assert _code(lambda: client.get_row("nope", _pk("k", 1))) == "OTSObjectNotExist"
    assert _code(lambda: client.put_row("nope", ts.Row(_pk("k", 1), [("a", 1)]))) == (
        "OTSObjectNotExist"
    )


def test_bad_signature_is_auth_failed(emulator: TablestoreEmulator) -> None:
    wrong = ts.OTSClient(emulator.endpoint, emulator.access_key_id, "wrong-secret",
                         emulator.instance_name)  # fmt: skip
    with pytest.raises(ts.OTSServiceError) as info:
        wrong.list_table()
    assert info.value.get_error_code() == "OTSAuthFailed"
    assert info.value.get_http_status() == 403
    unknown = ts.OTSClient(emulator.endpoint, "nobody", emulator.access_key_secret,
                           emulator.instance_name)  # fmt: skip
    assert _code(unknown.list_table) == "OTSAuthFailed"


def test_put_get_update_delete_with_conditions(client: Any) -> None:
    absent = ts.Condition(ts.RowExistenceExpectation.EXPECT_NOT_EXIST)
    client.put_row("t", ts.Row(_pk("k", 1), [("text", "héllo"), ("n", 1), ("f", 0.5), ("b", True),
                                             ("raw", bytearray(b"\x00\xff"))]), absent)  # fmt: skip
    assert _code(lambda: client.put_row("t", ts.Row(_pk("k", 1), [("n", 2)]), absent)) == (
        "OTSConditionCheckFail"
    )
    _, row, _ = client.get_row("t", _pk("k", 1))
    assert row.primary_key == _pk("k", 1)
    assert {c[0]: c[1] for c in row.attribute_columns} == {
        "text": "héllo", "n": 1, "f": 0.5, "b": True, "raw": bytearray(b"\x00\xff")}  # fmt: skip
    _, only, _ = client.get_row("t", _pk("k", 1), columns_to_get=["n"])
    assert [c[0] for c in only.attribute_columns] == ["n"]
    assert client.get_row("t", _pk("k", 2))[1] is None

    if_n_is_1 = ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST,
                             ts.SingleColumnCondition("n", 1, ts.ComparatorType.EQUAL))  # fmt: skip
    changes = {"put": [("n", 2)], "delete_all": ["text"], "increment": [("count", 5)]}
    client.update_row("t", ts.Row(_pk("k", 1), changes), if_n_is_1)
    values = {c[0]: c[1] for c in client.get_row("t", _pk("k", 1))[1].attribute_columns}
    assert values["n"] == 2
    assert values["count"] == 5
    assert "text" not in values
    assert _code(lambda: client.update_row("t", ts.Row(_pk("k", 1), {"put": [("n", 3)]}),
                                           if_n_is_1)) == "OTSConditionCheckFail"  # fmt: skip
    either = ts.CompositeColumnCondition(ts.LogicalOperator.OR)
    either.add_sub_condition(ts.SingleColumnCondition("n", 9, ts.ComparatorType.EQUAL))
    either.add_sub_condition(ts.SingleColumnCondition("n", 1, ts.ComparatorType.GREATER_THAN))
    client.delete_row("t", ts.Row(_pk("k", 1)),
                      ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST, either))  # fmt: skip
    assert client.get_row("t", _pk("k", 1))[1] is None
    exist = ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST)
    assert _code(lambda: client.delete_row("t", ts.Row(_pk("k", 1)), exist)) == (
        "OTSConditionCheckFail"
    )


def test_get_range_both_directions_with_limits_and_next_key(client: Any) -> None:
    for seq in range(10):
        client.put_row("t", ts.Row(_pk("k", seq), [("n", seq)]))
    client.put_row("t", ts.Row(_pk("other", 0), [("n", 0)]))
    low, high = _pk("k", ts.INF_MIN), _pk("k", ts.INF_MAX)
    _, next_key, rows, _ = client.get_range("t", ts.Direction.FORWARD, low, high, limit=4)
    assert [r.primary_key[1][1] for r in rows] == [0, 1, 2, 3]
    assert next_key == _pk("k", 4)
    _, next_key, rows, _ = client.get_range("t", ts.Direction.FORWARD, next_key, high)
    assert [r.primary_key[1][1] for r in rows] == list(range(4, 10))
    assert next_key is None
    _, next_key, rows, _ = client.get_range("t", ts.Direction.BACKWARD, _pk("k", 7), _pk("k", 2),
                                            limit=3)  # fmt: skip
    assert [r.primary_key[1][1] for r in rows] == [7, 6, 5]
    assert next_key == _pk("k", 4)
    assert _code(lambda: client.get_range("t", ts.Direction.FORWARD, high, low)) == (
        "OTSParameterInvalid"
    )


def test_get_range_pages_at_5000_rows(client: Any) -> None:
    request_rows = [ts.PutRowItem(ts.Row(_pk("k", i), [("n", i)]), ts.Condition("IGNORE"))
                    for i in range(5200)]  # fmt: skip
    for start in range(0, 5200, 200):
        request = ts.BatchWriteRowRequest()
        request.add(ts.TableInBatchWriteRowItem("t", request_rows[start : start + 200]))
        assert client.batch_write_row(request).is_all_succeed()
    _, next_key, rows, _ = client.get_range("t", "FORWARD", _pk("k", ts.INF_MIN),
                                            _pk("k", ts.INF_MAX))  # fmt: skip
    assert len(rows) == 5000
    assert next_key == _pk("k", 5000)


def test_batch_write_reports_each_row_and_enforces_200(client: Any) -> None:
    client.put_row("t", ts.Row(_pk("k", 0), [("n", 0)]))
    absent = ts.Condition(ts.RowExistenceExpectation.EXPECT_NOT_EXIST)
    request = ts.BatchWriteRowRequest()
    request.add(ts.TableInBatchWriteRowItem("t", [
        ts.PutRowItem(ts.Row(_pk("k", 0), [("n", 9)]), absent),
        ts.PutRowItem(ts.Row(_pk("k", 1), [("n", 1)]), absent),
        ts.DeleteRowItem(ts.Row(_pk("k", 5)), ts.Condition("IGNORE")),
    ]))  # fmt: skip
    response = client.batch_write_row(request)
    succeeded, failed = response.get_put()
    assert [r.index for r in succeeded] == [1]
    assert [(r.index, r.error_code) for r in failed] == [(0, "OTSConditionCheckFail")]
    too_many = ts.BatchWriteRowRequest()
    too_many.add(ts.TableInBatchWriteRowItem("t", [
        ts.PutRowItem(ts.Row(_pk("x", i), [("n", i)]), ts.Condition("IGNORE")) for i in range(201)
    ]))  # fmt: skip
    assert _code(lambda: client.batch_write_row(too_many)) == "OTSParameterInvalid"


def test_batch_get_reads_rows_of_several_tables_and_enforces_100(client: Any) -> None:
    client.create_table(
        ts.TableMeta("u", [("id", "STRING")]), ts.TableOptions(),
        ts.ReservedThroughput(ts.CapacityUnit(0, 0)),
    )  # fmt: skip
    client.put_row("t", ts.Row(_pk("k", 0), [("n", 0), ("text", "a")]))
    client.put_row("u", ts.Row([("id", "x")], [("n", 7)]))
    request = ts.BatchGetRowRequest()
    request.add(ts.TableInBatchGetRowItem("t", [_pk("k", 0), _pk("k", 1)], ["n"], max_version=1))
    request.add(ts.TableInBatchGetRowItem("u", [[("id", "x")]], max_version=1))
    response = client.batch_get_row(request)
    found, missing = response.get_result_by_table("t")
    assert found.is_ok
    assert found.row.primary_key == _pk("k", 0)
    assert found.row.attribute_columns[0][:2] == ("n", 0)
    assert len(found.row.attribute_columns) == 1
    assert missing.is_ok
    assert missing.row is None
    assert response.get_result_by_table("u")[0].row.attribute_columns[0][:2] == ("n", 7)
    absent_table = ts.BatchGetRowRequest()
    absent_table.add(ts.TableInBatchGetRowItem("nope", [[("id", "x")]]))
    assert _code(lambda: client.batch_get_row(absent_table)) == "OTSObjectNotExist"
    too_many = ts.BatchGetRowRequest()
    too_many.add(ts.TableInBatchGetRowItem("t", [_pk("k", i) for i in range(101)]))
    assert _code(lambda: client.batch_get_row(too_many)) == "OTSParameterInvalid"


def test_limits_on_values_and_keys(client: Any) -> None:
    big = "x" * (2 * 1024 * 1024 + 1)
    assert _code(lambda: client.put_row("t", ts.Row(_pk("k", 0), [("v", big)]))) == (
        "OTSParameterInvalid"
    )
    client.put_row("t", ts.Row(_pk("k", 0), [("v", big[:-1])]))
    long_key = "k" * 1025
    assert _code(lambda: client.put_row("t", ts.Row(_pk(long_key, 0), [("v", 1)]))) == (
        "OTSParameterInvalid"
    )
    assert _code(lambda: client.put_row("t", ts.Row([("session_id", "k")], [("v", 1)]))) == (
        "OTSInvalidPK"
    )


def test_async_client_runs_against_it(emulator: TablestoreEmulator, client: Any) -> None:
    async def run() -> Any:
        e = emulator
        aio = ts.AsyncOTSClient(e.endpoint, e.access_key_id, e.access_key_secret, e.instance_name)
        async with aio as aclient:
            await aclient.put_row("t", ts.Row(_pk("k", 1), [("n", 1)]))
            return (await aclient.get_row("t", _pk("k", 1)))[1]

    row = asyncio.run(run())
    assert row.attribute_columns[0][:2] == ("n", 1)


def test_stopped_emulator_refuses_then_recovers_with_its_data(
    client: Any, emulator: TablestoreEmulator
) -> None:
    client.put_row("t", ts.Row(_pk("k", 1), [("n", 1)]))
    emulator.stop()
    with pytest.raises(Exception) as info:  # noqa: PT011 (urllib3's error, wrapped by pools)
        client.list_table()
    assert not isinstance(info.value, ts.OTSServiceError)
    emulator.start()
    assert client.get_row("t", _pk("k", 1))[1] is not None


def test_connection_url_round_trips(emulator: TablestoreEmulator) -> None:
    parsed = TablestoreConnection.from_url(emulator.url)
    assert parsed.endpoint == emulator.endpoint
    assert parsed.access_key_secret == emulator.access_key_secret


def test_session_fixture_serves(tablestore_connection: TablestoreConnection) -> None:
    c = tablestore_connection
    client = ts.OTSClient(c.endpoint, c.access_key_id, c.access_key_secret, c.instance_name)
    assert isinstance(client.list_table(), tuple)

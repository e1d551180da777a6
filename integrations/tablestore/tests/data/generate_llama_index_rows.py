"""Regenerate llama_index_rows.json: rows written by LlamaIndex's TablestoreChatStore 0.4.0.

Run from the repository root with the workspace interpreter (it starts the emulator and
drives LlamaIndex in the cached reference environment):

    .venv/bin/python integrations/tablestore/tests/data/generate_llama_index_rows.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_tablestore_llama_index_compat as compat  # noqa: E402

from llama_index.storage.chat_store.tablestore._sdk import ts  # noqa: E402
from llama_index.storage.chat_store.tablestore.testing import start_tablestore  # noqa: E402
from llama_index.storage.chat_store.testing.services import reference_python  # noqa: E402


def main() -> None:
    emulator = start_tablestore()
    connection = compat.TablestoreConnection.from_url(emulator.url)
    expected = compat._as_json(compat._conversations())
    reference = reference_python(compat.REFERENCE)
    messages = json.loads(
        reference.run(compat.WRITE, *compat._args(connection, "llama_index_chat_store_v1"),
                      json.dumps(expected))
    )  # fmt: skip
    client = ts.OTSClient(emulator.endpoint, emulator.access_key_id, emulator.access_key_secret,
                          emulator.instance_name)  # fmt: skip
    rows = {}
    for key in messages:
        _, row, _ = client.get_row("llama_index_chat_store_v1", [("session_id", key)])
        rows[key] = dict((c[0], c[1]) for c in row.attribute_columns)["history"]
    out = Path(__file__).with_name("llama_index_rows.json")
    out.write_text(json.dumps({"rows": rows, "messages": messages}, ensure_ascii=False, indent=1) + "\n",
                   encoding="utf-8")  # fmt: skip
    emulator.cleanup()


if __name__ == "__main__":
    main()

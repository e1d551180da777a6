"""Serve the emulator until killed (``start_tablestore_process``): PORT INSTANCE KEY_ID SECRET."""

import sys
import threading

from llama_index.storage.chat_store.tablestore.testing import TablestoreEmulator

_port, _instance, _key_id, _secret = sys.argv[1:5]
TablestoreEmulator(
    _instance, port=int(_port), access_key_id=_key_id, access_key_secret=_secret
).start()
threading.Event().wait()

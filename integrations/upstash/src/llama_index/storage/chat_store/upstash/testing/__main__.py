"""Serve the bridge until killed (``start_upstash_bridge_process``): PORT REDIS_URL TOKEN."""

import sys
import threading

from llama_index.storage.chat_store.upstash.testing import UpstashBridge

_port, _redis_url, _token = sys.argv[1:4]
UpstashBridge(_redis_url, _token, int(_port)).start()
threading.Event().wait()

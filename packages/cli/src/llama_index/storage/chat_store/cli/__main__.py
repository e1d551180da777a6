"""``python -m llama_index.storage.chat_store.cli``: the ``chat-store`` command."""

import sys

from llama_index.storage.chat_store.cli import main

sys.exit(main())

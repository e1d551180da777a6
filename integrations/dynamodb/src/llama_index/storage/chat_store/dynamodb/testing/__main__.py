"""Serve moto on a port until killed (``start_moto`` runs this in a child process): PORT."""

import sys

from llama_index.storage.chat_store.dynamodb.testing import serve_moto

serve_moto(int(sys.argv[1]))

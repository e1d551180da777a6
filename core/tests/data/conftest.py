"""Keep pytest out of the sample packages here: they run in their own environments."""

collect_ignore_glob = ["acme_chat_store/*"]

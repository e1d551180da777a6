"""LruCache: the bounded, thread-safe memory backends keep of recent per-key state."""

from __future__ import annotations

import concurrent.futures

import pytest

from llama_index.storage.chat_store.core.cache import LruCache


def test_keeps_at_most_maxsize_dropping_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)
    cache.put("a", 4)
    assert cache.get("a") == 4


def test_discard_and_clear_forget() -> None:
    cache: LruCache[str, int] = LruCache(4)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.discard("a")
    cache.discard("missing")
    assert (cache.get("a"), cache.get("b")) == (None, 2)
    cache.clear()
    assert len(cache) == 0


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruCache(0)


def test_threads_never_push_it_past_maxsize() -> None:
    cache: LruCache[int, int] = LruCache(50)

    def churn(worker: int) -> None:
        for i in range(2000):
            cache.put(worker * 10_000 + i, i)
            cache.get(worker * 10_000 + i // 2)
            if i % 7 == 0:
                cache.discard(worker * 10_000 + i - 1)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4)))
    assert len(cache) == 50

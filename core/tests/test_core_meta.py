"""The meta record's rules (core.meta): windows, the record of changes, the catalog entry."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    ChatStoreError,
    CorruptDataError,
)
from llama_index.storage.chat_store.core.backend import ConflictError, Plan, Sleep, drive
from llama_index.storage.chat_store.core.meta import (
    Entry,
    Race,
    RetryAtOnceError,
    backoff,
    contention_error,
    now_ms,
    prefix_end,
    recorded,
    span,
    unknown_outcome,
)


def test_span_matches_python_slicing() -> None:
    """span(count, offset, limit) names exactly the positions of list[offset:][:limit]."""
    rng = random.Random(7)
    for _ in range(2000):
        count = rng.randrange(0, 12)
        offset = rng.randrange(-15, 15)
        limit = rng.choice([None, *range(0, 14)])
        items = list(range(count))
        expected = items[offset:] if limit is None else items[offset:][:limit]
        lo, hi = span(count, offset, limit)
        assert items[lo:hi] == expected, (count, offset, limit)


def test_recorded_keeps_the_last_ids_in_order() -> None:
    """recorded() appends the new id and keeps only the last ``keep`` of them."""
    ops: tuple[str, ...] = ()
    for op in "abcdef":
        ops = recorded(ops, op, 4)
    assert ops == ("c", "d", "e", "f")
    assert recorded(["x"], "y", 16) == ("x", "y")


def test_backoff_grows_within_its_cap() -> None:
    """backoff() is a Sleep between 0 and min(cap, first * 2**attempt)."""
    for attempt in range(50):
        pause = backoff(attempt, 0.001, 0.03)
        assert isinstance(pause, Sleep)
        assert 0 <= pause.seconds <= min(0.03, 0.001 * 2**attempt)


def test_race_retries_lost_attempts_then_gives_up() -> None:
    """Race.run starts a lost attempt over after a backoff, and gives up after ``attempts``."""
    seen: list[str] = []

    def attempt(wins_at: int) -> Plan[str]:
        n = len(seen)
        seen.append((yield f"read {n}"))
        if n < wins_at:
            raise ConflictError
        return f"won at {n}"

    race = Race(attempts=4, first=0.0, cap=0.0)
    steps: list[object] = []

    def execute(step: object) -> object:
        steps.append(step)
        return step

    assert drive(race.run("k", "here", lambda: attempt(2)), execute) == "won at 2"
    assert seen == ["read 0", "read 1", "read 2"]
    assert steps == ["read 0", "read 1", "read 2"]  # the driver sleeps between them
    seen.clear()
    with pytest.raises(ChatStoreError, match=r"'k' in here.*gave up after 4 attempts"):
        drive(race.run("k", "here", lambda: attempt(10)), execute)
    assert len(seen) == 4


def test_race_retries_at_once_without_a_pause_but_counts_the_attempt() -> None:
    """An attempt raising RetryAtOnceError starts over with no Sleep, and counts as an attempt.

    If this fails: Race.run backs off after RetryAtOnceError, or does not count it.
    """
    raised = [RetryAtOnceError(), ConflictError(), RetryAtOnceError()]

    def attempt() -> Plan[str]:
        yield "try"
        if raised:
            raise raised.pop(0)
        return "won"

    steps: list[object] = []
    plan = Race(attempts=4, first=1.0, cap=100.0).run("k", "here", attempt)
    step = next(plan)
    while step != "won":
        steps.append(step)
        try:
            step = plan.send(None)
        except StopIteration as done:
            step = done.value
    pauses = [s for s in steps if isinstance(s, Sleep)]
    assert [s for s in steps if not isinstance(s, Sleep)] == ["try"] * 4
    assert len(pauses) == 1
    assert steps.index(pauses[0]) == 2  # after the plain loss only
    raised[:] = [RetryAtOnceError()] * 4
    with pytest.raises(ChatStoreError, match="gave up after 4 attempts"):
        drive(Race(attempts=4).run("k", "here", attempt), lambda step: step)


def test_errors_name_the_key_and_say_what_happened() -> None:
    """contention_error and unknown_outcome name the key; the latter says the outcome is unknown."""
    gave_up = contention_error("k1", "table 't'", 7)
    for part in ("'k1'", "7 attempts", "table 't'"):
        assert part in str(gave_up)
    unknown = unknown_outcome("k2", "the record is too short")
    assert isinstance(unknown, BackendUnavailableError)
    assert "'k2'" in str(unknown)
    assert "outcome is unknown" in str(unknown)


@pytest.mark.parametrize(
    "prefix", ["", "a", "ab", "a\U0010ffff", "\U0010ffff", "\ud7ff", "x\U0010ffff\U0010ffff"]
)
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: str) -> None:
    """Keys with the prefix sort below prefix_end(prefix); other keys above the prefix do not."""
    end = prefix_end(prefix)
    keys = ["", "a", "a\x00", "ab", "ac", "b", "\ud7ff", "\ue000", "\U0010ffff", "zz"]
    keys += [prefix + tail for tail in ("", "a", "\U0010ffff", "\x00")]
    for key in keys:
        if key.startswith(prefix):
            assert end is None or key < end, (prefix, key)
        elif key > prefix:
            assert end is not None, (prefix, key)
            assert key >= end, (prefix, key)
    if end is not None:
        assert not ("\ud800" <= end[-1] <= "\udfff")


def test_entry_follows_the_messages() -> None:
    """Begun: both times, no metadata; changed: updated (never back); emptied: nothing."""
    begun = Entry(metadata='{"old":1}').changed(0, 3, now=1000)
    assert begun == Entry(1000, 1000, None)
    later = Entry(1000, 5000, '{"a":1}').changed(3, 4, now=2000)
    assert later == Entry(1000, 5000, '{"a":1}')  # a clock behind the last writer's
    assert Entry(1000, 1000).changed(3, 4, now=3000).updated == 3000
    assert Entry(1000, 1000, '{"a":1}').changed(3, 0, now=3000) == Entry()
    assert abs(Entry().changed(0, 1).updated - now_ms()) < 60_000  # type: ignore[operator]


def test_entry_metadata_round_trips_and_reads_as_the_catalog() -> None:
    """with_metadata() writes one JSON object; encoded() and info() read it back."""
    entry = Entry(1000, 1000).with_metadata({"title": '"Hi"', "n": "[1,2]"}, now=2000)
    assert entry.updated == 2000
    assert json.loads(entry.metadata or "") == {"title": "Hi", "n": [1, 2]}
    assert entry.encoded("table 't'", "k") == {"title": '"Hi"', "n": "[1,2]"}
    info = entry.info("table 't'", "k", 5)
    assert (info.key, info.message_count, info.metadata) == ("k", 5, {"title": "Hi", "n": [1, 2]})
    assert info.created_at == datetime.fromtimestamp(1, tz=timezone.utc)
    assert entry.with_metadata({}).metadata is None
    assert entry.with_metadata({}, now=1500).updated == 2000  # never back
    assert Entry().info("t", "k", 1).metadata == {}


@pytest.mark.parametrize(
    ("created", "updated", "metadata"),
    [("yesterday", None, None), (None, True, None), (None, None, 5), (None, None, b"{}")],
)
def test_entry_read_refuses_what_no_writer_stores(
    created: object, updated: object, metadata: object
) -> None:
    """Entry.read() raises CorruptDataError naming the key for mistyped stored values."""
    with pytest.raises(CorruptDataError, match="'k9'") as raised:
        Entry.read("table 't'", "k9", created, updated, metadata)
    assert raised.value.key == "k9"


@pytest.mark.parametrize("text", ["[1]", "not json", '"s"'])
def test_metadata_that_is_no_object_is_corrupt(text: str) -> None:
    """Metadata text that is not a JSON object raises CorruptDataError naming the key."""
    entry = Entry.read("table 't'", "k", 1, 2, text)
    with pytest.raises(CorruptDataError, match="'k'"):
        entry.info("table 't'", "k", 1)

"""Concurrent histories of every store operation, checked for linearizability: the checker.

A history is a list of :class:`Call` records (each with its start and end on a clock every
client shares, its arguments and its result). The checker looks for a sequential order of
the calls, consistent with real time (a call that ended before another started comes first),
in which a plain Python list explains every result. Such an order exists for every correct
store; a lost update, a pop that returns the wrong message or a count that disagrees with the
rows has none.

The search is depth-first over (set of calls placed, list state), memoized, so histories of
a few clients with a few calls each check in milliseconds. A failing history is shrunk in
ways that keep it a counterexample: it is cut at the earliest point where it already fails
(calls still running at the cut keep their effect but lose their result), and reads that are
not needed to fail are dropped.

:func:`check_history`, :func:`linearize` and :func:`shrink` work on any recorded history;
:mod:`.history_runs` makes histories on a store (what the conformance suite calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "Call",
    "State",
    "apply",
    "check_history",
    "format_history",
    "linearize",
    "shrink",
]

State = tuple[str, ...]

_READS = frozenset({"get", "count"})


@dataclass(frozen=True)
class Call:
    """One recorded call on the conversation.

    Attributes:
        client: Which client made it (``-1`` for the quiescent reads after a round).
        name: The operation (a key of the model, see :func:`apply`).
        args: Its arguments, message texts standing for messages.
        start: ``time.monotonic_ns()`` just before the call.
        end: ``time.monotonic_ns()`` just after it returned or raised; ``None`` when it is
            still running (its effect may or may not have happened, its result is unknown).
        result: What it returned, texts for messages, tuples for lists.
        error: ``"Type: message"`` when it raised (its effect may or may not have happened).
        api: ``"sync"``, or ``"async"`` when it went through the ``a*`` twin.
    """

    client: int
    name: str
    args: tuple[Any, ...]
    start: int
    end: int | None
    result: Any = None
    error: str | None = None
    api: str = "sync"

    @property
    def checked(self) -> bool:
        """Whether its result must be explained (it returned normally)."""
        return self.end is not None and self.error is None


# -- the model ---------------------------------------------------------------------------


def apply(state: State, name: str, args: tuple[Any, ...]) -> tuple[State, Any]:
    """Run one operation on a plain list; return the new state and the call's result."""
    items = list(state)
    result: Any = None
    if name == "append":
        items.append(args[0])
    elif name == "append_many":
        items.extend(args[0])
    elif name == "set":
        items = list(args[0])
    elif name == "insert":
        items.insert(args[0], args[1])
    elif name == "delete_at":
        result = items.pop(args[0]) if -len(items) <= args[0] < len(items) else None
    elif name == "pop":
        result = items.pop() if items else None
    elif name == "delete_oldest":
        result, items = tuple(items[: args[0]]), items[args[0] :]
    elif name == "delete_all":
        result, items = (tuple(items) or None), []
    elif name == "get":
        window = items[args[0] :]
        result = tuple(window if args[1] is None else window[: args[1]])
    elif name == "count":
        result = len(items)
    else:
        raise ValueError(f"unknown operation {name!r}")
    return tuple(items), result


# -- the checker -------------------------------------------------------------------------


def linearize(initial: Sequence[str], calls: Sequence[Call]) -> list[Call] | None:
    """Return an order of ``calls`` explaining every checked result, or ``None``.

    The order respects real time: a call that ended before another started comes first.
    Calls still running or that raised may be placed anywhere after their start (and before
    their end, if any) or left out; their results are not checked.
    """
    never = max((c.end or c.start for c in calls), default=0) + 1
    ends = [c.end if c.end is not None else never for c in calls]
    starts = [c.start for c in calls]
    needed = sum(1 << i for i, c in enumerate(calls) if c.checked)
    optional = [i for i, c in enumerate(calls) if not c.checked]
    seen: set[tuple[int, State]] = set()

    def search(done: int, state: State) -> list[int] | None:
        if done & needed == needed:
            return []
        if (done, state) in seen:
            return None
        seen.add((done, state))
        horizon = min(ends[i] for i in range(len(calls)) if needed >> i & 1 and not done >> i & 1)
        for i, call in enumerate(calls):
            if done >> i & 1 or starts[i] > horizon:
                continue
            after, result = apply(state, call.name, call.args)
            if call.checked and result != call.result:
                continue
            # An optional call that ended before this one started can no longer happen.
            expired = sum(1 << j for j in optional if not done >> j & 1 and ends[j] < starts[i])
            rest = search(done | 1 << i | expired, after)
            if rest is not None:
                return [i, *rest]
        return None

    order = search(0, tuple(initial))
    return None if order is None else [calls[i] for i in order]


def check_history(
    initial: Sequence[str], calls: Sequence[Call], *, tolerated: Sequence[str] = ()
) -> list[str]:
    """Return the problems of one round's history (empty when it is correct).

    Cheap invariants first, so the message says what went wrong in plain words, then
    linearizability. The quiescent reads (client ``-1``) end the history. A call that raised
    is a problem unless its error's type is named in ``tolerated``; either way its effect may
    or may not have happened.
    """
    problems = [
        f"{_show_call(c)} raised {c.error}"
        for c in calls
        if c.error is not None and c.error.partition(":")[0] not in tolerated
    ]
    problems += _invariant_problems(initial, calls)
    if linearize(initial, calls) is None:
        problems.append(
            "no sequential order of these calls consistent with real time explains every result"
        )
    return problems


def _invariant_problems(initial: Sequence[str], calls: Sequence[Call]) -> list[str]:
    problems: list[str] = []
    final = [c for c in calls if c.client == -1]
    got = next((c for c in final if c.name == "get" and c.checked), None)
    count = next((c for c in final if c.name == "count" and c.checked), None)
    if got is None:
        return problems
    present = list(got.result)
    if count is not None and count.result != len(present):
        problems.append(
            f"count_messages() == {count.result} but get_messages() holds {len(present)} "
            "messages with no call running"
        )
    written = set(initial)
    overwrites: list[Call] = []
    for call in calls:
        if call.name in ("append", "insert"):
            written.add(call.args[-1])
        elif call.name in ("append_many", "set"):
            written.update(call.args[0])
        if call.name == "set" or call.error is not None:
            overwrites.append(call)
    removed = [text for c in calls if c.checked for text in _removed_texts(c)]
    seen = present + removed
    for text in sorted({t for t in seen if seen.count(t) > 1}):
        problems.append(f"message {text!r} is held or returned {seen.count(text)} times")
    for text in sorted(set(seen) - written):
        problems.append(f"message {text!r} was never written")
    for text in sorted(written - set(seen)):
        origin = _writer(initial, calls, text)
        unacknowledged = origin is not None and not origin.checked
        if unacknowledged or any(c is not origin and _may_follow(c, origin) for c in overwrites):
            continue  # a later replace or a call that raised may have taken it
        problems.append(f"acknowledged message {text!r} is lost: neither held nor returned")
    return problems


def _removed_texts(call: Call) -> list[str]:
    if call.name in ("pop", "delete_at"):
        return [] if call.result is None else [call.result]
    if call.name in ("delete_oldest", "delete_all"):
        return list(call.result or ())
    return []


def _writer(initial: Sequence[str], calls: Sequence[Call], text: str) -> Call | None:
    if text in initial:
        return None
    for call in calls:
        texts = call.args[0] if call.name in ("append_many", "set") else call.args[-1:]
        if call.name in ("append", "insert", "append_many", "set") and text in texts:
            return call
    return None


def _may_follow(later: Call, earlier: Call | None) -> bool:
    return earlier is None or later.end is None or later.end > earlier.start


def shrink(initial: Sequence[str], calls: Sequence[Call]) -> list[Call]:
    """Return a smaller history that still has no linearization (``calls`` must have none).

    Both steps keep a counterexample a counterexample: cutting at a point in time (calls
    running at the cut keep their effect but lose their result, later calls go) cannot make a
    correct history incorrect, and neither can dropping a read.
    """
    ordered = sorted(calls, key=lambda c: c.start)
    shrunk = list(ordered)
    for cut in sorted({c.end for c in ordered if c.end is not None}):
        candidate = _cut(ordered, cut)
        if linearize(initial, candidate) is None:
            shrunk = candidate
            break
    for call in [c for c in shrunk if c.name in _READS]:
        candidate = [c for c in shrunk if c is not call]
        if linearize(initial, candidate) is None:
            shrunk = candidate
    return shrunk


def _cut(calls: Sequence[Call], cut: int) -> list[Call]:
    kept = []
    for call in calls:
        if call.start > cut:
            continue
        if call.end is not None and call.end <= cut:
            kept.append(call)
        elif call.name not in _READS:
            kept.append(replace(call, end=None, result=None, error=None))
    return kept


# -- showing a history -------------------------------------------------------------------


def _show_call(call: Call) -> str:
    a = call.args
    if call.name == "get":
        window = (f", offset={a[0]}" if a[0] else "") + (
            f", limit={a[1]}" if a[1] is not None else ""
        )
        text = f"get_messages(k{window})"
    elif call.name == "insert":
        text = f"add_message(k, {a[1]!r}, idx={a[0]})"
    elif call.name in ("append_many", "set"):
        text = f"{_METHODS[call.name]}(k, {list(a[0])!r})"
    else:
        text = f"{_METHODS[call.name]}({', '.join(['k', *map(repr, a)])})"
    if call.api == "async":
        text = f"await a{text}"
    return f"client {call.client}: {text}" if call.client >= 0 else f"after the round: {text}"


_METHODS = {
    "append": "add_message",
    "append_many": "add_messages",
    "delete_at": "delete_message",
    "pop": "delete_last_message",
    "delete_oldest": "delete_oldest_messages",
    "set": "set_messages",
    "delete_all": "delete_messages",
    "count": "count_messages",
}


def _show_result(call: Call) -> str:
    if call.error is not None:
        return f"raised {call.error}"
    if call.end is None:
        return "(still running at the cut: may or may not have taken effect)"
    result = list(call.result) if isinstance(call.result, tuple) else call.result
    return f"-> {result!r}"


def format_history(initial: Sequence[str], calls: Sequence[Call]) -> str:
    """Render a history as a table, times in milliseconds from its first call."""
    if not calls:
        return f"  initial {list(initial)!r}, no calls"
    origin = min(c.start for c in calls)
    lines = [f"  initial conversation: {list(initial)!r}"]
    for call in sorted(calls, key=lambda c: c.start):
        end = "   ..." if call.end is None else f"{(call.end - origin) / 1e6:7.2f}"
        lines.append(
            f"  [{(call.start - origin) / 1e6:7.2f} .. {end} ms] "
            f"{_show_call(call)} {_show_result(call)}"
        )
    return "\n".join(lines)

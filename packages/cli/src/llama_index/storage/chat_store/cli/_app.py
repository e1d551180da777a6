"""The ``chat-store`` command line: argument parsing, the commands, and one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO

from llama_index.storage.chat_store.cli._check import find_corrupt, repair_key
from llama_index.storage.chat_store.cli._progress import Progress
from llama_index.storage.chat_store.cli._transfer import (
    Existing,
    Summary,
    copy_store,
    export_store,
    import_dump,
)
from llama_index.storage.chat_store.core import (
    BaseChatStore,
    CapabilityNotSupportedError,
    ChatMessage,
    ChatStoreError,
    ConversationInfo,
    ConversationPage,
    MessageRole,
    TextBlock,
    chat_store_from_url,
    message_to_json,
)

__all__ = ["main"]

_PROG = "chat-store"
_BATCH = 500
_Command = Callable[[argparse.Namespace], int]


class CommandError(ChatStoreError):
    """A command finished but found something the user must act on."""


@contextmanager
def _open(url: str) -> Iterator[BaseChatStore]:
    store = chat_store_from_url(url)
    try:
        yield store
    finally:
        store.close()


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


def _note(line: str) -> None:
    sys.stderr.write(line + "\n")


# -- commands ----------------------------------------------------------------------------------


def _cmd_keys(args: argparse.Namespace) -> int:
    paged = args.prefix is not None or args.after is not None or args.limit is not None
    with _open(args.url) as store:
        if not (paged or args.long):
            for key in store.iter_keys():
                _print(_key_text(key, args.json))
            return 0
        page = _listing(store, args.prefix, args.after, args.limit)
        for info in page.conversations:
            text = _key_text(info.key, args.json)
            _print(_long(text, info) if args.long else text)
        if page.next_after is not None and args.limit is not None:
            _note(f"more: --after {json.dumps(page.next_after, ensure_ascii=False)}")
    return 0


def _key_text(key: str, as_json: bool) -> str:
    return json.dumps(key, ensure_ascii=False) if as_json else key


def _long(key: str, info: ConversationInfo) -> str:
    """``key, count, created, updated, metadata`` separated by tabs (``-``: not known)."""
    times = [
        t.isoformat(timespec="milliseconds") if t else "-"
        for t in (info.created_at, info.updated_at)
    ]
    metadata = json.dumps(info.metadata, ensure_ascii=False, sort_keys=True)
    return "\t".join([key, str(info.message_count), *times, metadata])


def _listing(
    store: BaseChatStore, prefix: str | None, after: str | None, limit: int | None
) -> ConversationPage:
    """A page from the store's catalog, or, without one, from its keys and counts (sorted here).

    The catalog is asked, not its capability looked up: a store that finds its layout on
    its first call (``layout="auto"``) knows whether it keeps one only then.
    """
    try:
        if limit is not None:
            return store.list_conversations(prefix, after, limit)
        found: list[ConversationInfo] = []
        page = store.list_conversations(prefix, after, _BATCH)
        found += page.conversations
        while page.next_after is not None:
            page = store.list_conversations(prefix, page.next_after, _BATCH)
            found += page.conversations
        return ConversationPage(found, None)
    except CapabilityNotSupportedError:
        pass
    keys = sorted(k for k in store.iter_keys() if k.startswith(prefix or ""))
    keys = [k for k in keys if after is None or k > after]
    shown = keys if limit is None else keys[:limit]
    infos = [ConversationInfo(k, store.count_messages(k), None, None) for k in shown]
    return ConversationPage(infos, shown[-1] if len(shown) < len(keys) else None)


def _describe(message: ChatMessage) -> str:
    parts = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, Mapping):
            parts.append(f"<{block.get('block_type')}>")
        else:
            parts.append(f"<{block.block_type}>")
    calls = message.additional_kwargs.get("tool_calls")
    if calls:
        parts.append(f"<{len(calls)} tool call(s)>")
    return "\n    ".join("\n".join(parts).splitlines()) or "(no content)"


def _cmd_show(args: argparse.Namespace) -> int:
    with _open(args.url) as store:
        if args.last is None:
            first, messages = 0, store.get_messages(args.key)
        else:
            messages = store.get_messages(args.key, offset=-args.last) if args.last else []
            first = store.count_messages(args.key) - len(messages)
        for position, message in enumerate(messages, start=first):
            if args.json:
                _print(message_to_json(message))
            else:
                role = message.role.value if isinstance(message.role, MessageRole) else message.role
                _print(f"[{position}] {role}: {_describe(message)}")
    return 0


def _cmd_count(args: argparse.Namespace) -> int:
    with _open(args.url) as store:
        if args.key is not None:
            _print(str(store.count_messages(args.key)))
            return 0
        keys = messages = 0
        for key in store.iter_keys():
            keys += 1
            messages += store.count_messages(key)
        _print(f"{messages} messages in {keys} conversations")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        store = stack.enter_context(_open(args.url))
        out: IO[bytes] = (
            stack.enter_context(Path(args.output).open("wb")) if args.output else sys.stdout.buffer
        )
        progress = Progress("export", quiet=args.quiet)
        stack.callback(progress.close)
        summary = export_store(store, out, keys=args.keys, page=args.batch, progress=progress)
    _note(f"exported {summary.messages} messages in {summary.keys} conversations")
    return 0


def _existing(args: argparse.Namespace) -> Existing:
    if args.replace:
        return Existing.REPLACE
    return Existing.RESUME if args.resume else Existing.ERROR


def _verified(summary: Summary, done: str) -> int:
    if summary.mismatched:
        shown = ", ".join(json.dumps(k) for k in summary.mismatched[:5])
        more = f" and {len(summary.mismatched) - 5} more" if len(summary.mismatched) > 5 else ""
        raise CommandError(
            f"{done}, but the counts differ for {len(summary.mismatched)} keys ({shown}{more}): "
            "was the store written to meanwhile? Rerun with --resume"
        )
    _note(f"{done}; counts verified")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    source = args.input or "stdin"
    with ExitStack() as stack:
        store = stack.enter_context(_open(args.url))
        lines: IO[bytes] = (
            stack.enter_context(Path(args.input).open("rb")) if args.input else sys.stdin.buffer
        )
        progress = Progress("import", quiet=args.quiet)
        stack.callback(progress.close)
        summary = import_dump(
            store,
            lines,
            source=source,
            existing=_existing(args),
            batch=args.batch,
            progress=progress,
        )
    return _verified(
        summary, f"imported {summary.messages} messages into {summary.keys} conversations"
    )


def _cmd_copy(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        src = stack.enter_context(_open(args.src))
        dst = stack.enter_context(_open(args.dst))
        progress = Progress("copy", quiet=args.quiet)
        stack.callback(progress.close)
        summary = copy_store(
            src,
            dst,
            keys=args.keys,
            existing=_existing(args),
            batch=args.batch,
            progress=progress,
        )
    done = f"copied {summary.messages} messages in {summary.keys} conversations"
    if summary.skipped:
        done += f" ({summary.skipped} were complete already)"
    return _verified(summary, done)


def _cmd_adopt(args: argparse.Namespace) -> int:
    with _open(args.url) as store:
        adopt = getattr(store, "adopt", None)
        if not callable(adopt):
            raise CapabilityNotSupportedError(
                f"{type(store).__name__} has nothing to adopt: adopt registers data written by "
                "LlamaIndex's own store with stores that keep a registry of keys (redis)"
            )
        result = adopt()
    if isinstance(result, int) and not isinstance(result, bool):
        _note(f"adopted {result} keys")
    elif isinstance(result, (list, tuple, set, frozenset)):
        for key in result:
            _print(str(key))
        _note(f"adopted {len(result)} keys")
    else:
        _note("adopted")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    aside = Path(args.aside)
    checked = bad = moved = 0
    with ExitStack() as stack:
        store = stack.enter_context(_open(args.url))
        progress = Progress("check", quiet=args.quiet)
        stack.callback(progress.close)
        keys = args.keys or store.iter_keys()
        for key, entries in find_corrupt(store, keys, page=args.batch, progress=progress):
            checked += 1
            bad += len(entries)
            for entry in entries:
                _print(entry.describe())
            if entries and args.repair:
                moved += repair_key(store, key, entries, aside, args.batch)
    if not bad:
        _note(f"checked {checked} conversations: no corrupt entries")
        return 0
    if args.repair:
        _note(f"moved {moved} corrupt entries of {checked} conversations aside to {aside}")
        return 0
    raise CommandError(
        f"{bad} corrupt entries in {checked} conversations; rerun with --repair to move them aside"
    )


# -- parser ------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: _Command,
    summary: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _url(parser: argparse.ArgumentParser, name: str = "url") -> None:
    parser.add_argument(
        name, metavar=name.upper(), help="store URL, e.g. redis://localhost:6379/0, json:///a.json"
    )


def _bulk(parser: argparse.ArgumentParser, *, keys: bool = True, writes: bool = False) -> None:
    if keys:
        parser.add_argument("--keys", nargs="+", metavar="KEY", help="only these conversations")
    parser.add_argument(
        "--batch", type=_positive, default=_BATCH, help=f"messages per page/batch ({_BATCH})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    if writes:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--resume",
            action="store_true",
            help="continue conversations an interrupted run left partly written",
        )
        group.add_argument(
            "--replace",
            action="store_true",
            help="overwrite destination conversations that already hold messages",
        )


def _parser() -> argparse.ArgumentParser:
    try:
        own_version = version("llama-index-storage-chat-store-cli")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        own_version = "unknown"
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Inspect, export, import, copy and check chat stores by URL. Every "
        "backend installed (llama-index-storage-chat-store-<backend>) adds its URL schemes.",
        epilog="Exit status: 0 on success, 1 on an error (one line on stderr), 2 on bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {own_version}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_reading_commands(commands)
    _add_writing_commands(commands)
    return parser


def _add_reading_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = _add(commands, "keys", _cmd_keys, "List the conversation keys, one per line.")
    _url(keys)
    keys.add_argument("--json", action="store_true", help="print each key as a JSON string")
    keys.add_argument("--prefix", metavar="TEXT", help="only keys starting with TEXT (key order)")
    keys.add_argument("--after", metavar="KEY", help="only keys after KEY (key order)")
    keys.add_argument("--limit", type=_positive, metavar="N", help="at most N keys (key order)")
    keys.add_argument(
        "--long",
        action="store_true",
        help="key, message count, created, updated and metadata, tab-separated",
    )

    show = _add(commands, "show", _cmd_show, "Print the messages of one conversation.")
    _url(show)
    show.add_argument("key", metavar="KEY")
    show.add_argument("--last", type=_non_negative, metavar="N", help="only the last N messages")
    show.add_argument("--json", action="store_true", help="print each message as its JSON")

    count = _add(
        commands, "count", _cmd_count, "Count the messages of one conversation, or of all."
    )
    _url(count)
    count.add_argument("key", metavar="KEY", nargs="?")

    export = _add(
        commands,
        "export",
        _cmd_export,
        "Write conversations as a dump (JSON lines, one message per line) to stdout.",
        epilog="example: chat-store export redis://localhost:6379/0 > dump.jsonl",
    )
    _url(export)
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _bulk(export)


def _add_writing_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = _add(
        commands,
        "import",
        _cmd_import,
        "Read a dump from stdin and append its conversations to a store.",
        epilog="example: chat-store import postgresql://u@host/db < dump.jsonl",
    )
    _url(imp)
    imp.add_argument("-i", "--input", metavar="FILE", help="read FILE instead of stdin")
    _bulk(imp, keys=False, writes=True)

    copy = _add(
        commands,
        "copy",
        _cmd_copy,
        "Copy conversations from one store to another and verify the counts.",
        epilog="Copying again is harmless (complete conversations are skipped); after an\n"
        "interruption rerun with --resume. With a source in LlamaIndex's layout\n"
        "(SRC?layout=llama_index) this migrates to the native layout:\n"
        "  chat-store copy 'redis://h/0?layout=llama_index' 'redis://h/1'",
    )
    _url(copy, "src")
    _url(copy, "dst")
    _bulk(copy, writes=True)

    adopt = _add(
        commands,
        "adopt",
        _cmd_adopt,
        "Register conversations written by LlamaIndex's own store (redis) with this store.",
    )
    _url(adopt)

    check = _add(
        commands,
        "check",
        _cmd_check,
        "Find unreadable entries (key and position); --repair moves them aside.",
    )
    _url(check)
    check.add_argument(
        "--repair",
        action="store_true",
        help="append corrupt entries to --aside, then drop them (stop writers first)",
    )
    check.add_argument(
        "--aside",
        metavar="FILE",
        default="chat-store-corrupt.jsonl",
        help="where --repair keeps what it removes (default: %(default)s)",
    )
    _bulk(check)


# -- entry point ---------------------------------------------------------------------------------


def _error(message: str) -> int:
    _note(f"{_PROG}: error: {' '.join(message.split())}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chat-store`` with ``argv`` (default: the process arguments); return the exit status.

    User errors (bad URLs, unknown schemes, unreachable servers, malformed
    dumps, conflicts) print one line on stderr and return 1; set
    ``CHAT_STORE_TRACEBACK=1`` to see the traceback instead.
    """
    args = _parser().parse_args(argv)
    run: _Command = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        _error("interrupted (copy and import continue with --resume)")
        return 130
    except BrokenPipeError:
        # The reader went away (chat-store export ... | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ChatStoreError, OSError, ValueError) as exc:
        if os.environ.get("CHAT_STORE_TRACEBACK"):
            raise
        return _error(str(exc) or type(exc).__name__)

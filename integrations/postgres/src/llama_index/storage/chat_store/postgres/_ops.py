# ruff: noqa: S608 (identifiers are quoted by the caller, values are bind parameters)
"""The SQL of the ops table, where every change records its operation id (see ``_layouts``).

A change's own statement records ``:op`` (a ``rec`` CTE), so a retry whose first attempt's
reply was lost finds the change applied (``recorded``) instead of applying it again.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

__all__ = ["ops_statements", "record", "record_removed"]


def record(o: str, source: str = "") -> str:
    """The ``rec`` CTE recording ``:op`` (with no reply): always, or once per row of ``source``."""
    if source:
        return f"rec AS (INSERT INTO {o} (op_id) SELECT CAST(:op AS text) FROM {source})"
    return f"rec AS (INSERT INTO {o} (op_id) VALUES (CAST(:op AS text)))"


def record_removed(o: str, fresh: str = "") -> str:
    """The ``rec`` CTE recording ``:op`` with the rows of ``out (p, message)`` as its reply.

    ``fresh``: a ``FROM ... WHERE`` clause limiting it to a run that acts (row layouts).
    """
    reply = "(SELECT CAST(json_agg(json_build_array(p, message) ORDER BY p) AS text) FROM out)"
    return f"rec AS (INSERT INTO {o} (op_id, reply) SELECT CAST(:op AS text), {reply}{fresh})"


def ops_statements(o: str) -> dict[str, TextClause]:
    """Looking an operation up, and forgetting old ones (every layout)."""
    return {
        "recorded": text(f"SELECT reply FROM {o} WHERE op_id = CAST(:op AS text)"),
        "prune": text(
            f"DELETE FROM {o} WHERE created_at < "
            "now() - CAST(:keep AS double precision) * interval '1 second'"
        ),
    }

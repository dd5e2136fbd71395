"""The D1 contract: what every D1 backend must do, as async check functions.

Each check takes a freshly opened, migrated-or-empty :class:`~deepmox.bindings.d1.D1`
and raises ``AssertionError`` when the backend breaks the contract. A test
module parametrizes :data:`CHECKS` over its backends (see
``tests/contract/test_d1_contract.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..bindings.d1 import D1, MAX_PARAMS, Statement
from ..errors import D1QueryError, JobError


async def check_rows_and_columns(d1: D1) -> None:
    await d1.execute("CREATE TABLE c_rows (k TEXT PRIMARY KEY, v INTEGER, f REAL, n TEXT)")
    r = await d1.execute("INSERT INTO c_rows VALUES (?, ?, ?, ?), (?, ?, ?, ?)",
                         "a", 1, 1.5, None, "b", 2, 2.5, "x")
    assert r.changes == 2, r
    r = await d1.execute("SELECT k, v, f, n FROM c_rows ORDER BY k")
    assert r.columns == ["k", "v", "f", "n"], r.columns
    assert r.rows == [["a", 1, 1.5, None], ["b", 2, 2.5, "x"]], r.rows
    assert r.dicts()[1] == {"k": "b", "v": 2, "f": 2.5, "n": "x"}


async def check_batch_is_ordered_and_returns_each(d1: D1) -> None:
    await d1.execute("CREATE TABLE c_batch (k TEXT PRIMARY KEY, v INTEGER)")
    results = await d1.batch([
        Statement("INSERT INTO c_batch VALUES (?, ?)", ("a", 1)),
        Statement("UPDATE c_batch SET v = v + 1 WHERE k = ? RETURNING v", ("a",)),
        Statement("SELECT count(*) FROM c_batch"),
    ])
    assert len(results) == 3
    assert results[0].changes == 1
    assert results[1].rows == [[2]], results[1]
    assert results[2].scalar() == 1


async def check_batch_is_atomic(d1: D1) -> None:
    await d1.execute("CREATE TABLE c_atomic (k TEXT PRIMARY KEY)")
    try:
        await d1.batch([
            Statement("INSERT INTO c_atomic VALUES (?)", ("a",)),
            Statement("INSERT INTO c_atomic VALUES (?)", ("a",)),  # violates the key
        ])
    except D1QueryError as exc:
        assert "UNIQUE" in str(exc), exc
    else:
        raise AssertionError("a failing batch must raise D1QueryError")
    assert (await d1.execute("SELECT count(*) FROM c_atomic")).scalar() == 0


async def check_sql_error_is_permanent(d1: D1) -> None:
    try:
        await d1.execute("SELEC 1")
    except JobError as exc:
        assert isinstance(exc, D1QueryError), type(exc)
        assert exc.error_class == "permanent"
        assert "syntax error" in str(exc), exc
    else:
        raise AssertionError("a syntax error must raise")


async def check_d1_rules_are_enforced(d1: D1) -> None:
    for sql in ("PRAGMA user_version", "BEGIN", "COMMIT"):
        try:
            await d1.execute(sql)
        except D1QueryError:
            pass
        else:
            raise AssertionError(f"{sql} must be refused as D1 refuses it")
    params = tuple(range(MAX_PARAMS + 1))
    try:
        await d1.execute("SELECT " + ", ".join("?" * len(params)), *params)
    except D1QueryError:
        pass
    else:
        raise AssertionError("more than 100 parameters must be refused")
    ok = tuple(range(MAX_PARAMS))
    r = await d1.execute("SELECT " + ", ".join("?" * len(ok)), *ok)
    assert r.rows == [list(ok)]


async def check_json_functions(d1: D1) -> None:
    """The pull cycle passes lists as one JSON parameter."""
    r = await d1.execute(
        "SELECT j.value->>'id', j.value->>'n' FROM json_each(?) AS j ORDER BY 1",
        '[{"id": "b", "n": 2}, {"id": "a", "n": 1.5}]')
    assert r.rows == [["a", 1.5], ["b", 2]], r.rows


async def check_update_returning_and_from(d1: D1) -> None:
    await d1.execute("CREATE TABLE c_upd (k TEXT PRIMARY KEY, tok TEXT, v INTEGER)")
    await d1.execute("INSERT INTO c_upd VALUES ('a', 'x', 0), ('b', 'y', 0)")
    r = await d1.execute(
        "UPDATE c_upd SET v = v + (j.value->>'d') FROM json_each(?) AS j "
        "WHERE c_upd.k = j.value->>'k' AND c_upd.tok = j.value->>'tok' RETURNING c_upd.k",
        '[{"k": "a", "tok": "x", "d": 5}, {"k": "b", "tok": "stale", "d": 5}]')
    assert r.rows == [["a"]], r.rows


CHECKS: list[Callable[[D1], Awaitable[None]]] = [
    check_rows_and_columns,
    check_batch_is_ordered_and_returns_each,
    check_batch_is_atomic,
    check_sql_error_is_permanent,
    check_d1_rules_are_enforced,
    check_json_functions,
    check_update_returning_and_from,
]

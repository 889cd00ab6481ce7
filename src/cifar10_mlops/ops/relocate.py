"""`cifar10-mlops relocate-store`: point the embedded MLflow store's artifact paths at where
the checkout is now.

MLflow resolves a local artifact location to an absolute path when it creates an experiment
(a relative `mlruns/artifacts` becomes `/home/ana/cifar10-mlops/mlruns/artifacts`), and every
run, logged model and model version records paths under it. A checkout moved or copied to
another folder keeps a store whose artifacts point at the old one: the UI shows them broken
and `models:/` URIs do not load. This rewrites those paths, in one transaction, from the
folder the store was made in to the folder that holds mlflow.db now.

cifar10-mlops relocate-store [--store mlruns/mlflow.db] [--dry-run]
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError

DEFAULT_STORE = Path("mlruns/mlflow.db")


def recorded_roots(db: sqlite3.Connection, name: str) -> list[Path]:
    """The folders the store's artifacts were recorded under: the parents of the experiments'
    local artifact locations (`<mlruns>/artifacts`, `<mlruns>/0`) named like the store's own
    folder. An experiment whose artifacts live elsewhere on purpose is left alone."""
    roots = set()
    for (location,) in db.execute("SELECT artifact_location FROM experiments"):
        location = (location or "").removeprefix("file://")
        if location.startswith("/") and Path(location).parent.name == name:
            roots.add(Path(location).parent)
    return sorted(roots)


def text_columns(db: sqlite3.Connection) -> list[tuple[str, str]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return [
        (table, column)
        for table in tables
        for _, column, kind, *_ in db.execute(f"PRAGMA table_info('{table}')").fetchall()
        if "CHAR" in kind.upper() or "TEXT" in kind.upper()
    ]


def relocate(store: Path, *, dry_run: bool = False) -> tuple[list[Path], Path, int]:
    """Rewrite `store`'s paths under the recorded folders to the folder `store` lies in;
    returns (the old folders, the new one, how many values changed). Nothing changes when
    they are the same, or on any error."""
    if not store.is_file():
        raise PipelineError(f"{store}: no MLflow store here (run `make repro` first, or --store)")
    new = store.resolve().parent
    try:
        db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=rw", uri=True)  # never creates
    except sqlite3.Error as exc:
        raise PipelineError(f"{store}: cannot open the MLflow store ({exc})") from None
    try:
        with db:  # one transaction: every path moves, or none
            old = [root for root in recorded_roots(db, new.name) if root != new]
            changed = sum(_rewrite(db, root, new) for root in old)
            if dry_run:
                db.rollback()
            return old, new, changed
    except sqlite3.Error as exc:  # not a store, locked by a writer, read-only, ...
        raise PipelineError(
            f"{store}: cannot rewrite the MLflow store ({exc}); nothing changed"
        ) from None
    finally:
        db.close()


def _rewrite(db: sqlite3.Connection, old: Path, new: Path) -> int:
    """Replace the folder `old` by `new` in every text column: values under it (`old/...`,
    `file://old/...`) and values that are the folder itself, not a longer name."""
    changed = 0
    for table, column in text_columns(db):
        under = db.execute(
            f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) '
            f"WHERE \"{column}\" LIKE ? ESCAPE '\\'",
            (f"{old}/", f"{new}/", f"%{_like(f'{old}/')}%"),
        )
        itself = db.execute(
            f'UPDATE "{table}" SET "{column}" = ? WHERE "{column}" = ?', (str(new), str(old))
        )
        changed += under.rowcount + itself.rowcount
    return changed


def _like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops relocate-store", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="the mlflow.db file")
    parser.add_argument("--dry-run", action="store_true", help="count, change nothing")
    args = parser.parse_args(argv)
    old, new, changed = relocate(args.store, dry_run=args.dry_run)
    if not old:
        print(f"{args.store}: its artifact paths already point at {new}")
    else:
        verb = "would change" if args.dry_run else "changed"
        shown = ", ".join(map(str, old))
        print(f"{args.store}: {verb} {changed} paths from {shown} to {new}")

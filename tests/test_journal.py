"""The run journal: rows survive a closed or abandoned connection; --durable asks for fsyncs."""
from __future__ import annotations

import sqlite3

import pytest

from zemosaic_ooc.store.journal import Journal


@pytest.mark.parametrize("durable,expected", [(False, 0), (True, 2)])
def test_journal_syncs_its_commits_only_when_durable(tmp_path, durable, expected):
    journal = Journal(tmp_path / "journal.sqlite", durable=durable)
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == expected    # OFF 0, FULL 2
    journal.close()


def test_journal_rows_are_readable_by_another_connection_before_close(tmp_path):
    """A run killed before it closes its journal: every committed row is there for resume."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.block_done("pass1", "0:0", "cpu", 0.1)
    journal.block_done("pass1", "0:512", "cupy", 0.2, replay=True)
    with sqlite3.connect(f"file:{tmp_path / 'journal.sqlite'}?mode=ro", uri=True) as other:
        rows = other.execute("SELECT block, backend, replay FROM blocks ORDER BY block").fetchall()
    assert rows == [("0:0", "cpu", 0), ("0:512", "cupy", 1)]
    assert Journal(tmp_path / "journal.sqlite").done_blocks("pass1") == {"0:0", "0:512"}

"""Every failure a user can cause ends as one line on stderr and a non-zero exit; no
traceback unless --debug."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.cli.conftest import VENV_BIN


def _one_line(r) -> str:
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    assert r.err.startswith("error: ")
    return r.err


@pytest.mark.parametrize("command", ["stats", "failed", "monitor", "purge", "requeue"])
def test_missing_journal(cli, tmp_path, command):
    extra = {"purge": ["--state", "dead", "--yes"], "requeue": ["--all"], "monitor": ["--once"]}
    r = cli(command, tmp_path / "nope.db", *extra.get(command, []))
    assert r.code == 1
    assert "no journal at" in _one_line(r) and "nope.db" in r.err
    assert not (tmp_path / "nope.db").exists()  # nothing created


def test_text_file_is_not_a_journal_and_is_left_alone(cli, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes\n" * 100)
    r = cli("stats", path)
    assert r.code == 1
    assert "is not a usageledger journal (not an SQLite database)" in _one_line(r)
    assert path.read_text() == "these are my notes\n" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_other_sqlite_database_is_not_a_journal(cli, tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    r = cli("requeue", path, "--all")
    assert r.code == 1
    assert "an SQLite database but not a usageledger journal" in _one_line(r)
    with sqlite3.connect(path) as conn:
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"users"}


def test_directory(cli, tmp_path):
    r = cli("stats", tmp_path)
    assert r.code == 1 and "is a directory" in _one_line(r)


def test_locked_journal(cli, journal_db):
    # another process holds the write lock (a long write transaction)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE'); c.execute('UPDATE counters SET value = value')\n"
         "print('locked', flush=True); sys.stdin.read()",
         str(journal_db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = cli("requeue", journal_db, "--all", "--lock-timeout", "0.2")
        assert r.code == 1
        assert "database is locked" in _one_line(r) and str(journal_db) in r.err
    finally:
        holder.stdin.close()
        holder.wait(10)
    # once the lock is gone the same command works
    r = cli("requeue", journal_db, "--all")
    assert r.code == 0 and "requeued 2 items" in r.out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["failed", "{db}", "--limit", "0"], "Invalid value for '--limit'"),
        (["failed", "{db}", "--limit", "many"], "Invalid value for '--limit'"),
        (["purge", "{db}", "--state", "lost", "--yes"], "state must be one of"),
        (["purge", "{db}", "--yes"], "Missing option '--state'"),
        (["purge", "{db}", "--state", "dead", "--older-than", "7x", "--yes"], "'7x' is not a duration"),
        (["stats"], "Missing argument"),
        (["stats", "{db}", "--colour"], "No such option: --colour"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["monitor", "{db}", "--interval", "0"], "Invalid value for '--interval'"),
        (["report"], "Missing option '--storage'"),
        (["report", "--storage", "{url}", "--since", "yesterday"], "'yesterday' is not a date"),
        (["report", "--storage", "{url}", "--until", "2026-13-01"], "'2026-13-01' is not a date"),
        (["report", "--storage", "{url}", "--since", "2026-03-02", "--until", "2026-03-01"],
         "is not before --until"),
        (["report", "--storage", "{url}", "--group-by", "day,colour"], "group_by key 'colour'"),
        (["report", "--storage", "{url}", "--format", "xml"], "'xml' is not one of table, csv, json"),
        (["export", "--storage", "{url}", "--format", "xml", "--out", "x"], "'xml' is not one of csv, jsonl"),
        (["export", "--storage", "{url}", "--format", "csv"], "Missing option '--out'"),
        (["import", "x.jsonl", "--storage", "{url}", "--format", "xml"], "'xml' is not one of csv, jsonl"),
    ],
)
def test_bad_arguments(cli, journal_db, store_url, args, needle):
    r = cli(*[a.format(db=journal_db, url=store_url) for a in args])
    assert r.code == 2, r
    line = _one_line(r)
    assert needle in line
    assert "--help)" in line  # points at the help of the command


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://example.com/usage", "unknown storage 'ftp://example.com/usage'"),
        ("sqlite:///{tmp}/missing.db", "no sqlite store at"),
        ("jsonl:///{tmp}/missing.jsonl", "no jsonl store at"),
        ("sqlite:///{tmp}/notes.txt", "not a database"),
    ],
)
@pytest.mark.parametrize("command", ["report", "export"])
def test_bad_storage(cli, tmp_path, url, needle, command):
    (tmp_path / "notes.txt").write_text("not a database at all\n" * 50)
    args = ["--format", "csv", "--out", tmp_path / "out.csv"] if command == "export" else []
    r = cli(command, "--storage", url.format(tmp=tmp_path), *args)
    assert r.code == 1
    assert needle in _one_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created


def test_import_of_a_file_that_is_not_an_export(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "provider": "openai"}\n')
    r = cli("import", bad, "--storage", f"sqlite:///{tmp_path / 'u.db'}")
    assert r.code == 1 and "line 1: not a usage record" in _one_line(r)
    r = cli("import", tmp_path / "absent.csv", "--storage", f"sqlite:///{tmp_path / 'v.db'}")
    assert r.code == 1 and _one_line(r) == f"error: no file {tmp_path / 'absent.csv'} to import\n"
    assert not (tmp_path / "v.db").exists()


def test_debug_shows_the_traceback(cli, tmp_path):
    r = cli("stats", tmp_path / "nope.db", "--debug")
    assert r.code == 1
    assert "Traceback (most recent call last)" in r.err
    assert "JournalError: no journal at" in r.err
    assert r.err.rstrip().endswith(f"error: no journal at {tmp_path / 'nope.db'}: the file does not exist")


def test_console_scripts_print_one_line(tmp_path):
    for script in ("usageledger", "queue-monitor"):
        args = [str(VENV_BIN / script)]
        args += ["stats"] if script == "usageledger" else []
        p = subprocess.run([*args, str(tmp_path / "nope.db")], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr == f"error: no journal at {tmp_path / 'nope.db'}: the file does not exist\n"
        assert p.stdout == ""


def test_no_arguments_prints_help(cli):
    r = cli()
    assert r.code == 0
    for command in ("monitor", "stats", "failed", "requeue", "purge", "report", "export", "serve", "demo"):
        assert command in r.out

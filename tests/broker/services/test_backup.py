"""`broker backup` / `broker restore` (SQLite) and the pg_dump / pg_restore procedure (PostgreSQL).

The SQLite backup is taken while a writer commits jobs as fast as it can: the copy must be one
instant of the database (every job with its event, ids a gap-free prefix) and pass its own
integrity check. Restores are refused while a broker uses the database and for bad backups, and
a restored database serves the old tokens and jobs.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from broker.adapters.fake import FakeExecutor
from broker.app import create_app
from broker.cli import app as cli
from broker.db import make_engine, migrate
from broker.errors import BrokerError
from broker.models import Job, JobEvent
from broker.services import backup as svc
from broker.settings import Settings
from tests.broker import migration_rows as mr
from tests.broker.conftest import PG_URL, _pg_admin, pg_reason


def _filled(data_dir: Path) -> Settings:
    settings = Settings(data_dir=data_dir, seed_demo=False)
    engine = make_engine(settings)
    migrate(settings, engine)
    with engine.begin() as conn:
        mr.insert_at(conn)
    engine.dispose()
    return settings


class Writer(threading.Thread):
    """Commits one job and its 'submitted' event per transaction until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.engine, self.stop, self.n, self.error = make_engine(settings), threading.Event(), 0, None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with Session(self.engine) as s:
                    jid = f"w{self.n:08d}"
                    s.add(Job(id=jid, project_id="ouh-liver", image="localhost/busybox:test", command=["true"]))
                    s.flush()
                    s.add(JobEvent(job_id=jid, kind="submitted", to_status="PENDING"))
                    s.commit()
                self.n += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.engine.dispose()


def _app_serves(settings: Settings, extra_jobs: int = 0) -> None:
    engine = make_engine(settings)
    try:
        with TestClient(create_app(settings, executor=FakeExecutor(), start_background=False, engine=engine),
                        headers={"Authorization": f"Bearer {mr.ADMIN_SECRET}"}) as c:
            for status, jid in mr.job_ids().items():
                r = c.get(f"/api/v1/jobs/{jid}")
                assert r.status_code == 200 and r.json()["status"] == status
        with Session(engine) as s:
            assert len(s.exec(select(Job.id)).all()) == len(mr.job_ids()) + extra_jobs
    finally:
        engine.dispose()


def test_backup_under_a_running_writer_is_one_consistent_instant(tmp_path):
    settings = _filled(tmp_path / "live")
    writer = Writer(settings)
    writer.start()
    try:
        while writer.n < 50 and writer.error is None:
            time.sleep(0.01)
        before = writer.n
        info = svc.backup(settings, tmp_path / "b" / "broker-backup.db")
        during = writer.n - before
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    assert info.revision == svc.known_revisions()[-1] and info.path.stat().st_mode & 0o777 == 0o600
    con = sqlite3.connect(info.path)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM jobs WHERE id LIKE 'w%' ORDER BY id")]
        events = {r[0] for r in con.execute("SELECT job_id FROM job_events WHERE job_id LIKE 'w%'")}
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    assert ids == [f"w{i:08d}" for i in range(len(ids))]  # a prefix: no commit half-copied or skipped
    assert events == set(ids)  # every job with its event: one transaction, both or neither
    assert before <= len(ids) <= writer.n and mode == "delete"
    print(f"backup of {info.bytes} bytes in {info.seconds * 1000:.1f} ms; the writer committed {during} jobs "
          f"meanwhile, {writer.n} in all")
    restored = Settings(data_dir=tmp_path / "restored", seed_demo=False)
    svc.restore(restored, info.path)
    _app_serves(restored, extra_jobs=len(ids))


def test_restore_replaces_the_database_and_drops_its_stale_wal(tmp_path):
    settings = _filled(tmp_path / "live")
    info = svc.backup(settings, tmp_path / "b.db")
    target = svc.sqlite_path(settings)
    engine = make_engine(settings)  # rows written after the backup, some still in the WAL
    with Session(engine) as s:
        s.add(Job(id="afterbackup", project_id="ouh-liver"))
        s.commit()
    engine.dispose()
    target.with_name(target.name + "-wal").write_bytes(b"stale wal of the old database")
    svc.restore(settings, info.path)
    assert not target.with_name(target.name + "-wal").exists()
    assert [p.name for p in target.parent.glob("broker.db.pre-restore-*")]
    _app_serves(settings)


def _refusal(tmp_path, case):
    settings = _filled(tmp_path / "live")
    good = svc.backup(settings, tmp_path / "good.db").path
    if case == "broker running (data dir lock)":
        with svc.data_dir_lock(Path(settings.data_dir)) as held:
            assert held
            svc.restore(settings, good)
    elif case == "database open in another process":
        p = subprocess.Popen([sys.executable, "-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); "
                              "c.execute('select 1 from jobs').fetchall(); print('open', flush=True); time.sleep(30)",
                              str(svc.sqlite_path(settings))], stdout=subprocess.PIPE)
        try:
            assert p.stdout.readline().strip() == b"open"
            svc.restore(settings, good)
        finally:
            p.kill()
            p.wait()
    elif case == "corrupt backup":
        bad = tmp_path / "bad.db"
        data = bytearray(good.read_bytes())
        data[4096 * 3:4096 * 3 + 2000] = b"\x5a" * 2000  # overwrite part of a b-tree page
        bad.write_bytes(bytes(data))
        svc.restore(settings, bad)
    elif case == "not a database":
        (tmp_path / "x.db").write_bytes(b"hello" * 1000)
        svc.restore(settings, tmp_path / "x.db")
    elif case == "not a broker database":
        sqlite3.connect(tmp_path / "other.db").execute("create table t(x)").connection.commit()
        svc.restore(settings, tmp_path / "other.db")
    elif case == "backup from a newer release":
        con = sqlite3.connect(good)
        con.execute("UPDATE alembic_version SET version_num = '9999'")
        con.commit()
        con.close()
        svc.restore(settings, good)
    elif case == "backup over an existing file":
        svc.backup(settings, good)
    elif case == "PostgreSQL":
        svc.backup(Settings(data_dir=tmp_path, database_url=PG_URL), tmp_path / "pg.db")


@pytest.mark.parametrize("case, code", [
    ("broker running (data dir lock)", "BROKER_RUNNING"),
    ("database open in another process", "BROKER_RUNNING"),
    ("corrupt backup", "BACKUP_CORRUPT"),
    ("not a database", "BACKUP_CORRUPT"),
    ("not a broker database", "BACKUP_NOT_BROKER"),
    ("backup from a newer release", "BACKUP_FROM_NEWER"),
    ("backup over an existing file", "BACKUP_EXISTS"),
    ("PostgreSQL", "USE_PG_DUMP"),
])
def test_refusals_leave_the_database_untouched(tmp_path, case, code):
    with pytest.raises(BrokerError) as e:
        _refusal(tmp_path, case)
    assert e.value.code == code and 400 <= e.value.status < 500
    _app_serves(Settings(data_dir=tmp_path / "live", seed_demo=False))


def test_restore_refuses_while_broker_up_holds_its_data_dir_lock(tmp_path):
    from broker.cli.embedded import DataDirBusy, DataDirLock

    settings = _filled(tmp_path / "live")
    good = svc.backup(settings, tmp_path / "good.db").path
    lock = DataDirLock(Path(settings.data_dir))  # what `broker up` holds while it runs
    lock.acquire()
    try:
        with pytest.raises(BrokerError) as e:
            svc.restore(settings, good)
        assert e.value.code == "BROKER_RUNNING"
    finally:
        lock.release()
    with svc.data_dir_lock(Path(settings.data_dir)) as held:  # and no broker starts mid-restore
        assert held
        with pytest.raises(DataDirBusy):
            DataDirLock(Path(settings.data_dir)).acquire()
    svc.restore(settings, good)  # stopped: allowed


def test_cli_backup_and_restore(tmp_path):
    settings = _filled(tmp_path / "live")
    runner = CliRunner()
    r = runner.invoke(cli, ["backup", str(tmp_path / "cli.db"), "--data-dir", str(settings.data_dir)])
    assert r.exit_code == 0, r.output
    assert '"schema_revision"' in r.output and '"api_tokens": 2' in r.output
    again = runner.invoke(cli, ["backup", str(tmp_path / "cli.db"), "--data-dir", str(settings.data_dir)])
    assert again.exit_code == 2 and "BACKUP_EXISTS" in again.output
    r = runner.invoke(cli, ["restore", str(tmp_path / "cli.db"), "--data-dir", str(tmp_path / "new")])
    assert r.exit_code == 0, r.output
    _app_serves(Settings(data_dir=tmp_path / "new", seed_demo=False))


@pytest.mark.postgres
def test_pg_dump_and_pg_restore_into_another_database(tmp_path):
    """The procedure of docs/OPERATIONS.md, for real: dump a private database full of rows in
    the custom format, restore it into a new database, and the app reads it with the old tokens."""
    reason = pg_reason()
    if reason:
        pytest.skip(reason)
    if not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        pytest.skip("pg_dump / pg_restore are not installed")
    src, dst = f"ops_src_{uuid.uuid4().hex[:8]}", f"ops_dst_{uuid.uuid4().hex[:8]}"
    base = PG_URL.replace("+psycopg", "").rsplit("/", 1)[0]
    with _pg_admin() as c:
        c.execute(f'CREATE DATABASE "{src}"')
        c.execute(f'CREATE DATABASE "{dst}"')
    try:
        settings = Settings(data_dir=tmp_path, database_url=f"{base}/{src}", seed_demo=False)
        engine = make_engine(settings)
        migrate(settings, engine)
        with engine.begin() as conn:
            mr.insert_at(conn)
        engine.dispose()
        dump = tmp_path / "broker.dump"
        subprocess.run(["pg_dump", "--format=custom", "--no-owner", f"--file={dump}", f"{base}/{src}"], check=True)
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction",
                        f"--dbname={base}/{dst}", str(dump)], check=True)
        restored = Settings(data_dir=tmp_path, database_url=f"{base}/{dst}", seed_demo=False)
        _app_serves(restored)
        migrate(restored)  # already at head: nothing to do, nothing breaks
    finally:
        with _pg_admin() as c:
            for db in (src, dst):
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

"""Backup and restore of the embedded SQLite database (`broker backup` / `broker restore`).

Backup is online and consistent: SQLite's backup API copies the database inside one read
transaction, and in WAL mode a reader never blocks the broker's writers nor sees half of a
commit, so the copy is the database as of one instant while submits go on. The copy is written
beside the destination, checked (`PRAGMA integrity_check`, schema revision present), fsynced and
then renamed into place: a crash never leaves a half backup under the final name.

Restore replaces the database of a data dir that no broker is using. It refuses when one is
(`<data dir>/broker.lock`, the flock `broker up` holds for its whole life, see
`broker.cli.embedded.DataDirLock`; or any process with the database file open), when
the backup fails its integrity check, or when its schema revision is unknown to this code (a
backup from a newer release). A backup from an older release is restored as is; the next
`broker up` migrates it. The database it replaces is kept beside it (`broker.db.pre-restore-*`),
and stale `-wal`/`-shm` files are removed first: SQLite would otherwise replay the old database's
write-ahead log into the restored one.

Tokens live in the database as hashes, so every API and agent token valid when the backup was
taken is valid after the restore; the admin-token file in the data dir is left alone (a file
that no longer matches is replaced at the next start, see `ensure_admin_token`).

PostgreSQL is backed up with `pg_dump` / `pg_restore` (docs/OPERATIONS.md); these functions
refuse it with a code that says so.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy.engine import make_url

from broker.errors import BrokerError, Conflict, Invalid
from broker.settings import Settings

LOCK_FILE = "broker.lock"


@dataclass(frozen=True, slots=True)
class BackupInfo:
    path: Path
    revision: str
    bytes: int
    seconds: float
    tables: dict[str, int]  # rows per table, as copied


def sqlite_path(settings: Settings) -> Path:
    """The database file of a SQLite deployment; PostgreSQL is refused (use pg_dump)."""
    if not settings.is_sqlite:
        raise Invalid("this broker uses PostgreSQL: back it up with pg_dump and restore with pg_restore "
                      "(docs/OPERATIONS.md)", code="USE_PG_DUMP")
    db = make_url(settings.database_url).database
    if not db or db == ":memory:":
        raise Invalid("an in-memory database cannot be backed up or restored", code="NO_DATABASE_FILE")
    return Path(db).resolve()


def backup(settings: Settings, dest: Path) -> BackupInfo:
    """Copy the live database to `dest` (a file; refused if it exists), consistent as of one instant."""
    src = sqlite_path(settings)
    dest = Path(dest).resolve()
    if not src.exists():
        raise BrokerError(f"no database at {src}", code="NO_DATABASE", status=404)
    if dest.exists():
        raise Conflict(f"{dest} exists: choose a new file name", code="BACKUP_EXISTS")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    t0 = time.monotonic()
    source = sqlite3.connect(src, timeout=30)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # all pages in one step: one read transaction, one snapshot
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            target.close()
    finally:
        source.close()
    try:
        os.chmod(tmp, 0o600)  # it holds token hashes and audit records, like the database
        revision, tables = check(tmp)
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupInfo(dest, revision, dest.stat().st_size, time.monotonic() - t0, tables)


def check(path: Path) -> tuple[str, dict[str, int]]:
    """(schema revision, rows per table) of a backup file; raises unless it is an intact
    broker database."""
    try:
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as e:
        raise Invalid(f"{path}: not a readable SQLite file: {e}", code="BACKUP_UNREADABLE") from e
    try:
        try:
            result = [r[0] for r in con.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            raise Invalid(f"{path}: not a SQLite database: {e}", code="BACKUP_CORRUPT") from e
        if result != ["ok"]:
            raise Invalid(f"{path}: integrity check failed: {'; '.join(result[:5])}", code="BACKUP_CORRUPT")
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        if "alembic_version" not in names:
            raise Invalid(f"{path}: not a broker database (no schema revision)", code="BACKUP_NOT_BROKER")
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        if row is None:
            raise Invalid(f"{path}: its schema revision is empty", code="BACKUP_NOT_BROKER")
        tables = {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        return row[0], tables
    finally:
        con.close()


def known_revisions() -> list[str]:
    """This code's migration revisions, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


def restore(settings: Settings, src: Path) -> BackupInfo:
    """Replace the data dir's database with the backup `src` (the broker must be stopped)."""
    target = sqlite_path(settings)
    src = Path(src).resolve()
    if not src.is_file():
        raise BrokerError(f"no backup at {src}", code="NO_BACKUP", status=404)
    revision, tables = check(src)
    revisions = known_revisions()
    if revision not in revisions:
        raise Invalid(f"{src} has schema revision {revision}, unknown to this release (newest: {revisions[-1]}): "
                      "restore it with the release that wrote it", code="BACKUP_FROM_NEWER")
    t0 = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    with data_dir_lock(Path(settings.data_dir), wait=False) as held:
        if not held:
            raise Conflict(f"a broker is running on {settings.data_dir}: stop it before restoring",
                           code="BROKER_RUNNING")
        users = processes_using(target)
        if users:
            raise Conflict(f"{target} is open in process(es) {', '.join(map(str, users[:10]))}: stop the broker "
                           "before restoring", code="BROKER_RUNNING")
        tmp = target.with_name(f".{target.name}.restoring")
        tmp.write_bytes(src.read_bytes())
        os.chmod(tmp, 0o600)
        _fsync(tmp)
        if target.exists():
            os.replace(target, target.with_name(f"{target.name}.pre-restore-{time.strftime('%Y%m%dT%H%M%S')}"))
        for suffix in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    return BackupInfo(target, revision, target.stat().st_size, time.monotonic() - t0, tables)


@contextmanager
def data_dir_lock(data_dir: Path, *, wait: bool = False) -> Iterator[bool]:
    """An exclusive flock on `<data_dir>/broker.lock`, the lock `broker up` holds for its whole
    life (the same file and kind of lock as `broker.cli.embedded.DataDirLock`, which the CLI
    layer owns): restore takes it so that no broker starts while it replaces the database.
    Yields False when another process holds it and `wait` is False. The kernel drops the lock
    with the process, so a crashed broker never leaves it held."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)


def processes_using(path: Path) -> list[int]:
    """Pids (other than this one) with `path` open, from /proc (Linux; [] where unreadable).
    Catches a broker that predates the data dir lock, and any other tool writing the file."""
    target = str(Path(path).resolve())
    names = {target, target + "-wal", target + "-shm"}
    me, found = os.getpid(), []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in names:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:
        pass

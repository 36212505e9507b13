"""The results store (DESIGN.md contract 4): one row per cell in any SQLAlchemy database.

SQLite beside the sweep output by default; a PostgreSQL URL lets workers on many machines share one sweep. A cell
moves pending -> running -> done | failed. Claims are a conditional UPDATE (`WHERE status = 'pending'`) whose row
count says who won, so each cell runs once however many workers race for it. Running cells carry the worker id,
host, pid and a heartbeat; a claim whose heartbeat went stale or whose process on this host is gone is put back to
pending (crash recovery).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

metadata = MetaData()
cells_table = Table(
    "sweep_cells",
    metadata,
    Column("cell_id", String(64), primary_key=True),
    Column("config_hash", String(32), nullable=False),
    Column("seed", Integer, nullable=False),
    Column("subcommand", String(16), nullable=False),
    Column("argv", Text, nullable=False),  # JSON list: the stisr-train arguments, for the record
    Column("status", String(16), nullable=False, index=True),
    Column("worker", String(255)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("child_pid", Integer),
    Column("heartbeat", Float),
    Column("started", Float),
    Column("finished", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_dir", Text),
    Column("log_path", Text),
    Column("returncode", Integer),
    Column("error", Text),
    Column("results", Text),  # results.json of a done cell
    Column("run_s", Float),  # wall time of the stisr-train subprocess
    Column("overhead_s", Float),  # engine time spent on the cell outside the subprocess
)


@dataclass(frozen=True)
class Worker:
    """Who holds a claim: `host:pid:index`."""

    host: str
    pid: int
    index: int

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.index}"


@dataclass
class CellRecord:
    cell_id: str
    status: str
    seed: int
    results: dict[str, Any] | None
    log_path: str | None
    error: str | None
    run_s: float | None
    overhead_s: float | None
    attempts: int


def default_url(out_dir) -> str:
    return f"sqlite:///{out_dir}/store.db"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 60000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


class CellStore:
    def __init__(self, url: str):
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"timeout": 60} if sqlite else {}, pool_pre_ping=not sqlite)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        for attempt in range(3):  # workers starting together may race on CREATE TABLE
            try:
                metadata.create_all(self.engine)
                break
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def add(self, cells: Iterable[tuple[str, str, int, str, list[str]]]) -> None:
        """Registers (cell_id, config_hash, seed, subcommand, argv) as pending unless already known."""
        with self.engine.begin() as connection:
            known = set(connection.scalars(select(cells_table.c.cell_id)))
        for cell_id, digest, seed, subcommand, argv in cells:
            if cell_id in known:
                continue
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(cells_table).values(
                        cell_id=cell_id, config_hash=digest, seed=seed, subcommand=subcommand,
                        argv=json.dumps(argv), status=PENDING, attempts=0))
            except IntegrityError:  # another worker registered it first
                pass

    def pending(self, cell_ids: Iterable[str]) -> list[str]:
        wanted = list(cell_ids)
        with self.engine.begin() as connection:
            found = set(connection.scalars(select(cells_table.c.cell_id).where(cells_table.c.status == PENDING)))
        return [cell_id for cell_id in wanted if cell_id in found]

    def statuses(self, cell_ids: Iterable[str]) -> dict[str, str]:
        wanted = list(cell_ids)
        if not wanted:
            return {}
        with self.engine.begin() as connection:
            rows = connection.execute(select(cells_table.c.cell_id, cells_table.c.status)
                                      .where(cells_table.c.cell_id.in_(wanted))).all()
        return dict(rows)

    def claim(self, cell_id: str, worker: Worker, run_dir: str, log_path: str) -> bool:
        now = time.time()
        with self.engine.begin() as connection:
            result = connection.execute(
                update(cells_table)
                .where(cells_table.c.cell_id == cell_id, cells_table.c.status == PENDING)
                .values(status=RUNNING, worker=worker.id, host=worker.host, pid=worker.pid, child_pid=None,
                        heartbeat=now, started=now, finished=None, run_dir=run_dir, log_path=log_path,
                        returncode=None, error=None, results=None, attempts=cells_table.c.attempts + 1)
            )
        return result.rowcount == 1

    def _owned(self, cell_id: str, worker: Worker):
        return update(cells_table).where(
            cells_table.c.cell_id == cell_id, cells_table.c.status == RUNNING, cells_table.c.worker == worker.id
        )

    def set_child(self, cell_id: str, worker: Worker, child_pid: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(self._owned(cell_id, worker).values(child_pid=child_pid, heartbeat=time.time()))

    def heartbeat(self, worker_ids: list[str]) -> None:
        if worker_ids:
            with self.engine.begin() as connection:
                connection.execute(update(cells_table)
                                   .where(cells_table.c.status == RUNNING, cells_table.c.worker.in_(worker_ids))
                                   .values(heartbeat=time.time()))

    def finish(self, cell_id: str, worker: Worker, status: str, *, returncode: int | None, error: str | None,
               results: dict[str, Any] | None, run_s: float) -> bool:
        with self.engine.begin() as connection:
            result = connection.execute(self._owned(cell_id, worker).values(
                status=status, returncode=returncode, error=error, finished=time.time(), run_s=run_s,
                results=None if results is None else json.dumps(results)))
        return result.rowcount == 1

    def set_overhead(self, cell_id: str, overhead_s: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(cells_table).where(cells_table.c.cell_id == cell_id).values(overhead_s=overhead_s))

    def release(self, cell_id: str, worker: Worker) -> None:
        """Back to pending (the run was interrupted on purpose, not failed)."""
        with self.engine.begin() as connection:
            connection.execute(self._owned(cell_id, worker).values(status=PENDING, worker=None, child_pid=None))

    def reclaim_stale(self, stale_after_s: float, is_alive: Callable[[int], bool],
                      on_reclaim: Callable[[dict[str, Any]], None] | None = None) -> list[str]:
        """Running claims whose heartbeat is older than `stale_after_s`, or whose worker process on this host is
        gone, go back to pending. `on_reclaim` sees each reclaimed row first (to stop an orphaned child)."""
        host, now = socket.gethostname(), time.time()
        with self.engine.begin() as connection:
            running = connection.execute(select(cells_table).where(cells_table.c.status == RUNNING)).mappings().all()
        reclaimed = []
        for row in running:
            dead = row["host"] == host and row["pid"] is not None and not is_alive(row["pid"])
            if not dead and (row["heartbeat"] or 0) > now - stale_after_s:
                continue
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(cells_table)
                    .where(cells_table.c.cell_id == row["cell_id"], cells_table.c.status == RUNNING,
                           cells_table.c.worker == row["worker"])
                    .values(status=PENDING, worker=None)
                )
            if result.rowcount == 1:
                if on_reclaim:
                    on_reclaim(dict(row))
                reclaimed.append(row["cell_id"])
        return reclaimed

    def reset_failed(self, cell_ids: Iterable[str]) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(update(cells_table)
                                        .where(cells_table.c.status == FAILED, cells_table.c.cell_id.in_(list(cell_ids)))
                                        .values(status=PENDING, worker=None))
        return result.rowcount

    def records(self, cell_ids: Iterable[str] | None = None) -> dict[str, CellRecord]:
        query = select(cells_table)
        if cell_ids is not None:
            query = query.where(cells_table.c.cell_id.in_(list(cell_ids)))
        with self.engine.begin() as connection:
            rows = connection.execute(query).mappings().all()
        return {
            row["cell_id"]: CellRecord(
                cell_id=row["cell_id"], status=row["status"], seed=row["seed"],
                results=json.loads(row["results"]) if row["results"] else None, log_path=row["log_path"],
                error=row["error"], run_s=row["run_s"], overhead_s=row["overhead_s"], attempts=row["attempts"])
            for row in rows
        }

    def dispose(self) -> None:
        self.engine.dispose()

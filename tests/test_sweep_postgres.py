"""Two sweep engines share one PostgreSQL store: every cell runs exactly once and both take a share.

A throwaway server from Debian's `postgresql` package (initdb/pg_ctl under /usr/lib/postgresql/*/bin) listens on
127.0.0.1 and a socket in a temporary folder; as root it runs as the package's `postgres` user (initdb refuses root).
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
FAKE = r"""
import json, pathlib, sys, time
run_dir, cell_id, record = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(record, "a") as handle:
    handle.write(cell_id + "\n")
time.sleep(0.3)
(run_dir / "results.json").write_text(json.dumps({"metrics": {"test/x/psnr": 20.0}}))
"""
DRIVER = r"""
import pathlib, sys
from stisr_lightning.sweeps.expand import Cell
from stisr_lightning.sweeps.run import SweepRunner
from stisr_lightning.sweeps.store import CellStore
url, out, record, count, fake = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
cells = [Cell(f"c{i}-s0", f"c{i}", 0, "fit", pathlib.Path("x.yaml"), {}) for i in range(count)]
command = lambda cell, run_dir: [sys.executable, "-c", fake, str(run_dir), cell.cell_id, record]
summary = SweepRunner(CellStore(url), cells, out, cell_command=command).run()
print("ran", len(summary.ran), "failed", len(summary.failed), flush=True)
"""


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(database: str = "stisr", fsync: bool = False):
    """Yields a SQLAlchemy URL of a fresh database on a private server; stops and deletes it afterwards."""
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="stisr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), root / "data"

    def pg(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start",
           "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync={'on' if fsync else 'off'}")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {database}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


pytestmark = pytest.mark.skipif(postgres_bin() is None,
                                reason="PostgreSQL server binaries not installed (apt-get install postgresql)")


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def test_two_engines_share_a_postgres_store_and_run_each_cell_once(tmp_path, postgres_url):
    from sqlalchemy import func, select

    from stisr_lightning.sweeps.store import DONE, CellStore, cells_table

    count, record = 12, tmp_path / "starts.txt"
    CellStore(postgres_url).dispose()  # tables exist before the race (the engines also survive racing on them)
    engines = [subprocess.Popen([sys.executable, "-c", DRIVER, postgres_url, str(tmp_path), str(record), str(count),
                                 FAKE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}) for _ in range(2)]
    outputs = [engine.communicate(timeout=120)[0] for engine in engines]
    assert all(engine.returncode == 0 for engine in engines), outputs
    starts = Counter(record.read_text().split())
    assert starts == Counter({f"c{i}-s0": 1 for i in range(count)})
    ran = [int(output.split("ran ")[1].split()[0]) for output in outputs]
    assert sum(ran) == count and min(ran) >= 1, outputs
    store = CellStore(postgres_url)
    assert {cell_id: r.status for cell_id, r in store.records().items()} == {f"c{i}-s0": DONE for i in range(count)}
    with store.engine.begin() as connection:
        per_engine = dict(connection.execute(select(cells_table.c.pid, func.count()).group_by(cells_table.c.pid)).all())
    assert sorted(per_engine.values()) == sorted(ran) and set(per_engine) == {engine.pid for engine in engines}
    store.dispose()

import multiprocessing
import os
import socket
import time

from stisr_lightning.sweeps.store import DONE, FAILED, PENDING, RUNNING, CellStore, Worker

CELLS = [(f"c{i:02d}-s0", f"c{i:02d}", 0, "fit", ["fit", "--x", str(i)]) for i in range(40)]


def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


def _claim_all(store_url: str, index: int, queue) -> None:
    store = CellStore(store_url)
    worker = Worker("host", os.getpid(), index)
    won = [cell_id for cell_id, *_ in CELLS if store.claim(cell_id, worker, "dir", "log")]
    queue.put(won)


def test_two_processes_claim_each_cell_exactly_once(tmp_path):
    CellStore(url(tmp_path)).add(CELLS)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_claim_all, args=(url(tmp_path), index, queue)) for index in range(2)]
    for process in workers:
        process.start()
    won = [queue.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(timeout=60)
    claimed = won[0] + won[1]
    assert sorted(claimed) == sorted(cell_id for cell_id, *_ in CELLS)  # every cell once, none twice
    records = CellStore(url(tmp_path)).records()
    assert {record.status for record in records.values()} == {RUNNING}
    assert all(record.attempts == 1 for record in records.values())


def test_lifecycle_finish_release_retry(tmp_path):
    store = CellStore(url(tmp_path))
    store.add(CELLS[:3])
    store.add(CELLS[:3])  # registering twice keeps one row each
    worker, other = Worker("h", 1, 0), Worker("h", 1, 1)
    assert store.pending([c for c, *_ in CELLS[:3]]) == ["c00-s0", "c01-s0", "c02-s0"]
    assert store.claim("c00-s0", worker, "d", "l") and not store.claim("c00-s0", other, "d", "l")
    assert not store.finish("c00-s0", other, DONE, returncode=0, error=None, results={}, run_s=1.0)  # not its claim
    assert store.finish("c00-s0", worker, DONE, returncode=0, error=None, results={"metrics": {"m": 0.5}}, run_s=2.0)
    assert store.claim("c01-s0", worker, "d", "l")
    store.finish("c01-s0", worker, FAILED, returncode=3, error="exit code 3", results=None, run_s=1.0)
    assert store.claim("c02-s0", worker, "d", "l")
    store.release("c02-s0", worker)
    records = store.records()
    assert records["c00-s0"].status == DONE and records["c00-s0"].results == {"metrics": {"m": 0.5}}
    assert records["c01-s0"].status == FAILED and records["c01-s0"].error == "exit code 3"
    assert records["c02-s0"].status == PENDING
    assert store.reset_failed(["c00-s0", "c01-s0"]) == 1  # done cells are never reset
    assert store.records()["c01-s0"].status == PENDING and store.claim("c01-s0", worker, "d", "l")
    assert store.records()["c01-s0"].attempts == 2


def test_stale_and_dead_claims_are_reclaimed(tmp_path):
    store = CellStore(url(tmp_path))
    store.add(CELLS[:3])
    here = socket.gethostname()
    dead = Worker(here, 999_999_999, 0)  # a pid that cannot be alive
    alive = Worker(here, os.getpid(), 0)
    remote = Worker("elsewhere", 1, 0)
    for cell_id, worker in zip(["c00-s0", "c01-s0", "c02-s0"], [dead, alive, remote]):
        assert store.claim(cell_id, worker, "d", "l")

    def is_alive(pid):
        return pid == os.getpid()

    seen = []
    assert store.reclaim_stale(60.0, is_alive, seen.append) == ["c00-s0"]  # dead pid on this host
    assert seen[0]["cell_id"] == "c00-s0" and seen[0]["worker"] == dead.id
    time.sleep(0.05)
    store.heartbeat([alive.id])
    reclaimed = store.reclaim_stale(0.02, is_alive)  # the remote claim's heartbeat is now stale, ours fresh
    assert reclaimed == ["c02-s0"]
    assert {c: r.status for c, r in store.records().items()} == {"c00-s0": PENDING, "c01-s0": RUNNING, "c02-s0": PENDING}

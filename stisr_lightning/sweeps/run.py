"""Workers: claim a pending cell, run it as a stisr-train subprocess (crashes and DDP stay inside it), record it.

A cell that evaluates other cells (stisr-eval on their checkpoint) is claimed only once they are done; when one of
them failed it is recorded as failed with the reason, without running. Workers with only such waiting cells left poll
the store (another worker, or another engine sharing it, is running what they wait for).

`workers` threads each own a device slot (CUDA_VISIBLE_DEVICES, or an OMP thread share on CPU). Children start in
their own session, so a Ctrl-C reaches only the engine: it stops the children it started, puts their cells back to
pending, and returns after recording what finished. After a SIGKILL of the engine, the next start reclaims the dead
claims (and stops their orphaned children) and completes the sweep; done cells are never re-run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stisr_lightning.identity import SWEEP_ROOT_ENV
from stisr_lightning.sweeps.expand import CHECKPOINT, Cell
from stisr_lightning.sweeps.store import DONE, FAILED, PENDING, RUNNING, CellStore, Worker

CellCommand = Callable[[Cell, Path], list[str]]
ALWAYS_COMPUTED = ("psnr", "ssim", "acc", "ned")


def stisr_train_command(cell: Cell, run_dir: Path) -> list[str]:
    """`python -m stisr_lightning.cli.train ...`, or `cli.evaluate` for a cell that evaluates another's checkpoint."""
    return [sys.executable, "-m", cell.module, *cell.argv(run_dir)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_orphan(row: dict) -> None:
    """Kills the process group of a reclaimed cell's child if it still runs here (checked by its command line)."""
    pid = row.get("child_pid")
    if not pid or row.get("host") != socket.gethostname():
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if row["cell_id"] in cmdline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device for device in visible.split(",") if device.strip() not in ("", "-1")]
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except ImportError:
        return []


def worker_env(index: int, workers: int, devices_per_worker: int, gpus: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        start = index * devices_per_worker
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(start + k) % len(gpus)] for k in range(devices_per_worker))
    else:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def nan_metrics(results: dict) -> list[str]:
    """NaN (or null) metrics mark a diverged run, except those results.json lists as `not_available` on this
    machine (LPIPS without its backbone); PSNR, SSIM, accuracy and NED are always computable."""
    metrics, excused = results.get("metrics") or {}, set(results.get("not_available") or [])
    return [key for key, value in metrics.items()
            if (value is None or (isinstance(value, float) and math.isnan(value)))
            and (key not in excused or key.rsplit("/", 1)[-1] in ALWAYS_COMPUTED)]


def _log_tail(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    overhead_s: list[float] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)  # wall time of each cell this engine ran (the ETA's basis)


class SweepRunner:
    def __init__(self, store: CellStore, cells: list[Cell], out_dir: Path, *, cell_command: CellCommand = stisr_train_command,
                 workers: int = 1, devices_per_worker: int = 1, cwd: Path | None = None, heartbeat_s: float = 30.0,
                 stale_after_s: float = 300.0, wait_s: float = 2.0):
        self.store, self.cells = store, {cell.cell_id: cell for cell in cells}
        self.out_dir, self.cell_command, self.cwd = Path(out_dir), cell_command, cwd
        self.workers, self.devices_per_worker = max(1, workers), max(1, devices_per_worker)
        self.heartbeat_s, self.stale_after_s, self.wait_s = heartbeat_s, stale_after_s, wait_s
        self.stop = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self.stopped: set[str] = set()  # cells whose child we terminated (Lightning may then exit 0)
        self.lock = threading.Lock()
        self.summary = RunSummary()

    def run_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / cell.cell_id

    def register(self, retry_failed: bool = False) -> None:
        self.store.add((c.cell_id, c.config_hash, c.seed, c.subcommand, c.argv(self.run_dir(c))) for c in self.cells.values())
        if retry_failed:
            self.store.reset_failed(self.cells)

    def run(self, retry_failed: bool = False) -> RunSummary:
        self.register(retry_failed)
        self.summary.reclaimed += self.store.reclaim_stale(self.stale_after_s, pid_alive, stop_orphan)
        gpus = visible_gpus()
        host, pid = socket.gethostname(), os.getpid()
        workers = [Worker(host, pid, index) for index in range(self.workers)]
        # each run records the identity the store gives its cell, relative to this sweep's folder
        envs = [{**worker_env(w.index, self.workers, self.devices_per_worker, gpus), SWEEP_ROOT_ENV: str(self.out_dir)}
                for w in workers]
        threads = [threading.Thread(target=self._work, args=(w, env), name=f"sweep-worker-{w.index}", daemon=True)
                   for w, env in zip(workers, envs)]
        beat = threading.Thread(target=self._heartbeat, args=([w.id for w in workers],), daemon=True)
        # Ctrl-C, and SIGTERM from a scheduler (SLURM's time limit, `kill`): running cells stop and go back to pending.
        stop_signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        previous = {signum: signal.signal(signum, self._interrupt) for signum in stop_signals}
        try:
            beat.start()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
        finally:
            self.stop.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.summary

    def _interrupt(self, _signum, _frame) -> None:
        if not self.stop.is_set():
            print("\nstisr-sweep: interrupted; stopping running cells (they go back to pending)", file=sys.stderr)
        self.stop.set()
        self.summary.interrupted = True
        with self.lock:
            children = list(self.children.values())
            self.stopped.update(self.children)
        for child in children:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except OSError:
                pass

    def _heartbeat(self, worker_ids: list[str]) -> None:
        while not self.stop.wait(self.heartbeat_s):
            try:
                self.store.heartbeat(worker_ids)
            except Exception as error:  # a flaky database must not kill the sweep; the next beat retries
                print(f"stisr-sweep: heartbeat failed: {error}", file=sys.stderr)

    def _work(self, worker: Worker, env: dict[str, str]) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            pending = self.store.pending(self.cells)
            if not pending:
                self.summary.reclaimed += self.store.reclaim_stale(self.stale_after_s, pid_alive, stop_orphan)
                pending = self.store.pending(self.cells)
                if not pending:
                    return
            statuses = self.store.statuses({needed for cell_id in pending for needed in self.cells[cell_id].needs})
            for cell_id in pending:
                if self.stop.is_set():
                    return
                cell = self.cells[cell_id]
                waiting, reason = self._dependencies(cell, statuses)
                if waiting:
                    continue
                run_dir = self.run_dir(cell)
                log_path = run_dir / "sweep.log"
                if not self.store.claim(cell_id, worker, str(run_dir), str(log_path)):
                    started = time.perf_counter()
                    continue
                if reason:
                    self.store.finish(cell_id, worker, FAILED, returncode=None, error=reason, results=None, run_s=0.0)
                    self.summary.failed.append(cell_id)
                    run_s = 0.0
                else:
                    run_s = self._run_cell(cell, worker, env, run_dir, log_path)
                overhead = time.perf_counter() - started - run_s
                self.store.set_overhead(cell_id, overhead)
                self.summary.overhead_s.append(overhead)
                break  # re-read the pending list: other workers may have taken cells meanwhile
            else:  # nothing claimable: every pending cell waits for cells that run elsewhere
                if self.stop.wait(self.wait_s):
                    return
                self.summary.reclaimed += self.store.reclaim_stale(self.stale_after_s, pid_alive, stop_orphan)

    def _dependencies(self, cell: Cell, statuses: dict[str, str]) -> tuple[bool, str | None]:
        """(wait, reason to fail): wait while a needed cell is pending or running; fail when one failed or left no
        checkpoint (it was trained before anything needed it, without keeping checkpoints, or on another disk)."""
        for needed in cell.needs:
            if needed not in self.cells:
                return False, f"dependency {needed} is not a cell of this sweep"
            status, rows = statuses.get(needed), ", ".join(f"{t}/{r}" for t, r in self.cells[needed].members)
            if status in (PENDING, RUNNING):
                return True, None
            if status != DONE:
                return False, f"dependency {needed} ({rows}) {status or 'is not in the store'}"
            if not (self.run_dir(self.cells[needed]) / CHECKPOINT).is_file():
                return False, f"dependency {needed} ({rows}) is done but its run folder has no {CHECKPOINT}"
        return False, None

    def _run_cell(self, cell: Cell, worker: Worker, env: dict[str, str], run_dir: Path, log_path: Path) -> float:
        """Runs one claimed cell to an end state; returns the subprocess wall time."""
        if run_dir.exists():  # a previous attempt (crashed or failed): start clean
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        command = self.cell_command(cell, run_dir)
        (run_dir / "sweep_cell.json").write_text(json.dumps(
            {"cell_id": cell.cell_id, "members": cell.members, "command": command}, indent=2))
        with open(log_path, "wb") as log:
            begin = time.perf_counter()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
                                     start_new_session=True)
            with self.lock:
                self.children[cell.cell_id] = child
            self.store.set_child(cell.cell_id, worker, child.pid)
            returncode = child.wait()
            run_s = time.perf_counter() - begin
            with self.lock:
                del self.children[cell.cell_id]
        if cell.cell_id in self.stopped:
            self.store.release(cell.cell_id, worker)
            return run_s
        status, error, results = self._outcome(returncode, run_dir, log_path)
        self.store.finish(cell.cell_id, worker, status, returncode=returncode, error=error, results=results, run_s=run_s)
        (self.summary.ran if status == DONE else self.summary.failed).append(cell.cell_id)
        self.summary.run_s.append(run_s)
        print(self.progress_line(cell, status, run_s), flush=True)
        return run_s

    def progress_line(self, cell: Cell, status: str, run_s: float) -> str:
        """One line per finished cell: what it was, the sweep's counts, and an ETA from this engine's cell times."""
        counts = Counter(self.store.statuses(self.cells).values())
        left = counts[PENDING] + counts[RUNNING]
        members = ", ".join(f"{table}/{row}" for table, row in cell.members)
        line = (f"stisr-sweep: {cell.cell_id} ({members}) {status} in {run_s:.1f} s | {counts[DONE]} done, "
                f"{counts[RUNNING]} running, {counts[FAILED]} failed, {counts[PENDING]} pending of {len(self.cells)}")
        if left:
            eta = statistics.mean(self.summary.run_s) * left / self.workers
            line += f" | ETA {eta:.0f} s" if eta < 120 else f" | ETA {eta / 60:.1f} min"
        return line

    @staticmethod
    def _outcome(returncode: int, run_dir: Path, log_path: Path) -> tuple[str, str | None, dict | None]:
        if returncode != 0:
            return FAILED, f"exit code {returncode}: {_log_tail(log_path)}", None
        results_path = run_dir / "results.json"
        try:
            results = json.loads(results_path.read_text())
        except (OSError, ValueError) as error:
            return FAILED, f"no readable results.json ({type(error).__name__})", None
        bad = nan_metrics(results)
        if bad:
            return FAILED, f"NaN metrics: {', '.join(sorted(bad)[:5])}", results
        return DONE, None, results

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stisr_lightning.sweeps.expand import Cell, Expansion
from stisr_lightning.sweeps.run import SweepRunner, worker_env
from stisr_lightning.sweeps.spec import Column, Preset, Reference, Row, SweepSpec, Table
from stisr_lightning.sweeps.store import DONE, FAILED, PENDING, CellRecord, CellStore
from stisr_lightning.sweeps.tables import build_table, format_table, write_tables

os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]
METRIC = "test/synthetic/easy/ppocr/acc"

# Stands in for stisr-train: notes its start, sleeps FAKE_SLEEP, then writes results.json (acc = 0.5 + 0.1 * seed);
# cells named bad* crash, nan* report NaN.
FAKE = r"""
import json, os, pathlib, sys, time
run_dir, cell_id, record = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(record, "a") as handle:
    handle.write(cell_id + "\n")
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
if cell_id.startswith("bad"):
    print("boom: this cell crashes on purpose")
    sys.exit(3)
value = float("nan") if cell_id.startswith("nan") else 0.5 + 0.1 * int(cell_id.rsplit("-s", 1)[1])
(run_dir / "results.json").write_text(json.dumps({"metrics": {"%s": value}}))
""" % METRIC

DRIVER = r"""
import pathlib, sys
from stisr_lightning.sweeps.expand import Cell
from stisr_lightning.sweeps.run import SweepRunner
from stisr_lightning.sweeps.store import CellStore
out, record, count, fake = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
cells = [Cell(f"c{i}-s0", f"c{i}", 0, "fit", pathlib.Path("x.yaml"), {}) for i in range(count)]
command = lambda cell, run_dir: [sys.executable, "-c", fake, str(run_dir), cell.cell_id, record]
summary = SweepRunner(CellStore(f"sqlite:///{out}/store.db"), cells, out, cell_command=command).run()
print("ran", len(summary.ran), "failed", len(summary.failed), "interrupted", summary.interrupted, flush=True)
"""


def fake_cells(names_and_seeds):
    return [Cell(f"{name}-s{seed}", name, seed, "fit", Path("x.yaml"), {}, [("T", name)]) for name, seed in names_and_seeds]


def fake_command(record: Path):
    return lambda cell, run_dir: [sys.executable, "-c", FAKE, str(run_dir), cell.cell_id, str(record)]


def starts(record: Path) -> Counter:
    return Counter(record.read_text().split()) if record.exists() else Counter()


def driver(tmp_path, count, sleep):
    env = {**os.environ, "FAKE_SLEEP": str(sleep), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(tmp_path / "starts.txt"), str(count), FAKE],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_failed_and_nan_cells_are_recorded_and_the_rest_continue(tmp_path):
    cells = fake_cells([("ok", 0), ("bad", 0), ("nan", 0), ("ok", 1)])
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    runner = SweepRunner(store, cells, tmp_path, cell_command=fake_command(tmp_path / "starts.txt"), workers=2)
    summary = runner.run()
    records = store.records()
    assert {c: r.status for c, r in records.items()} == {"ok-s0": DONE, "bad-s0": FAILED, "nan-s0": FAILED, "ok-s1": DONE}
    assert records["ok-s1"].results["metrics"][METRIC] == pytest.approx(0.6)
    assert records["bad-s0"].error == "exit code 3: boom: this cell crashes on purpose"
    assert Path(records["bad-s0"].log_path).read_text().strip() == "boom: this cell crashes on purpose"
    assert records["nan-s0"].error == f"NaN metrics: {METRIC}"
    assert sorted(summary.failed) == ["bad-s0", "nan-s0"] and len(summary.overhead_s) == 4
    assert all(r.overhead_s >= 0 and r.run_s > 0 for r in records.values())
    # a second run is a no-op; --retry-failed runs only the failed cells again
    assert SweepRunner(store, cells, tmp_path, cell_command=fake_command(tmp_path / "starts.txt")).run().ran == []
    SweepRunner(store, cells, tmp_path, cell_command=fake_command(tmp_path / "starts.txt")).run(retry_failed=True)
    assert starts(tmp_path / "starts.txt") == Counter({"ok-s0": 1, "ok-s1": 1, "bad-s0": 2, "nan-s0": 2})


def test_each_finished_cell_prints_the_sweeps_counts_and_an_eta_from_measured_cell_times(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    cells = fake_cells([("ok", 0), ("bad", 0), ("ok", 1)])
    runner = SweepRunner(CellStore(f"sqlite:///{tmp_path}/store.db"), cells, tmp_path,
                         cell_command=fake_command(tmp_path / "starts.txt"))
    runner.run()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["stisr-sweep: ok-s0", "stisr-sweep: bad-s0", "stisr-sweep: ok-s1"]
    assert "(T/bad) failed in" in lines[1] and "| 1 done, 0 running, 1 failed, 1 pending of 3 | ETA" in lines[1]
    first, second = runner.summary.run_s[:2]
    assert lines[1].endswith(f"ETA {(first + second) / 2:.0f} s")  # mean cell time x cells left / workers
    assert lines[2].endswith("| 2 done, 0 running, 1 failed, 0 pending of 3")  # nothing left: no ETA


def test_resume_after_sigkill_reruns_no_finished_cell(tmp_path):
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    engine = driver(tmp_path, count=8, sleep=0.3)

    def done():
        return [c for c, r in store.records().items() if r.status == DONE]

    wait_for(lambda: len(done()) >= 3)
    engine.send_signal(signal.SIGKILL)
    engine.wait(timeout=30)
    finished_before = set(done())
    assert 3 <= len(finished_before) < 8
    second = driver(tmp_path, count=8, sleep=0.0)
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output
    records = store.records()
    assert all(record.status == DONE for record in records.values()) and len(records) == 8
    counts = starts(tmp_path / "starts.txt")
    assert all(counts[cell_id] == 1 for cell_id in finished_before)  # no finished cell ran again
    assert sum(counts.values()) <= 9  # at most the one cell that was running at the kill ran twice


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_stops_and_puts_the_running_cell_back(tmp_path, signum):
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    engine = driver(tmp_path, count=3, sleep=30)
    wait_for(lambda: (tmp_path / "starts.txt").exists())
    engine.send_signal(signum)
    output, _ = engine.communicate(timeout=60)
    assert "ran 0 failed 0 interrupted True" in output
    assert {r.status for r in store.records().values()} == {PENDING}


def test_worker_env_pins_devices_or_shares_cpu_threads():
    assert worker_env(1, 2, 2, ["0", "1", "2", "3"])["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert worker_env(2, 3, 1, ["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4"  # more workers than GPUs: wrap around
    assert worker_env(0, 2, 1, [])["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_tables_have_paper_layout_reference_and_difference(tmp_path):
    rows = [Row("Bicubic", Path("b.yaml"), "test"), Row("TSRN", Path("t.yaml"), "fit")]
    columns = [Column("Easy", METRIC, 100, "ASTER", 1), Column("PSNR", "test/synthetic/easy/psnr", 1.0, "Image", 2)]
    table = Table("T3", "accuracy", rows, columns, reference={("Bicubic", "ASTER/Easy"): Reference(67.4, "p"),
                                                              ("TSRN", "ASTER/Easy"): Reference(75.1, "p")})
    preset = Preset("tiny", {}, None, {})
    spec = SweepSpec(tmp_path / "s.yaml", "demo", "paper", [0, 1], {"tiny": preset}, [table])
    by_row = {("T3", "Bicubic"): ["b-s0", "b-s1"], ("T3", "TSRN"): ["t-s0", "t-s1"]}
    expansion = Expansion({}, by_row, [table], None)

    def record(cell_id, acc, psnr, status=DONE):
        return CellRecord(cell_id, status, 0, {"metrics": {METRIC: acc, "test/synthetic/easy/psnr": psnr}}, None, None,
                          1.0, 0.01, 1)

    records = {"b-s0": record("b-s0", 0.30, 20.0), "b-s1": record("b-s1", 0.0, 0.0, FAILED),
               "t-s0": record("t-s0", 0.5, 21.0), "t-s1": record("t-s1", 0.7, 23.0)}
    frame = build_table(spec, preset, table, expansion, records)
    assert list(frame.index) == ["Bicubic", "TSRN"]
    assert frame[("ASTER", "Easy", "ours")].tolist() == pytest.approx([30.0, 60.0])
    assert frame[("ASTER", "Easy", "std")].iloc[1] == pytest.approx(math.sqrt(200.0))  # std of 50 and 70
    assert math.isnan(frame[("ASTER", "Easy", "std")].iloc[0])  # one seed failed: no spread from one value
    assert frame[("ASTER", "Easy", "diff")].tolist() == pytest.approx([30.0 - 67.4, 60.0 - 75.1])
    assert math.isnan(frame[("Image", "PSNR", "paper")].iloc[0])
    formatted = format_table(table, frame)
    assert formatted[("ASTER", "Easy")].tolist() == ["30.0 / 67.4 (-37.4)", "60.0 ± 14.1 / 75.1 (-15.1)"]
    assert formatted[("Image", "PSNR")].tolist() == ["20.00", "22.00 ± 1.41"]
    written = write_tables(spec, preset, expansion, records, tmp_path)
    assert "| Bicubic  | 30.0 / 67.4 (-37.4)" in (tmp_path / "tables" / "T3.md").read_text()
    assert "ASTER Easy paper" in (tmp_path / "tables" / "T3.csv").read_text().splitlines()[0]
    assert r"60.0 $\pm$ 14.1" in (tmp_path / "tables" / "T3.tex").read_text()
    assert set(written) == {"T3"}
    picture = np.asarray(Image.open(tmp_path / "tables" / "T3.png").convert("RGB"))  # ours vs paper bars
    colours = {tuple(pixel) for pixel in picture.reshape(-1, 3)[::7]}
    assert picture.shape[1] >= 720 and len(colours) > 20
    table.tradeoff = (columns[1], columns[0])  # accuracy against PSNR, as LEMMA's Table 6 is plotted
    write_tables(spec, preset, expansion, records, tmp_path)
    assert Image.open(tmp_path / "tables" / "T3-tradeoff.png").size == (720, 480)


@pytest.mark.slow
def test_end_to_end_real_stisr_train(tmp_path):
    """Two rows of a small sweep through the real stisr-train: bicubic (test only) and SRCNN (a few steps)."""
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "references").symlink_to(REPO / "sweeps" / "references")
    spec = {
        "name": "e2e", "paper": "lemma", "seeds": [0],
        "presets": {"tiny": {"synthetic": {"train": 12, "test": 6, "seed": 0}, "overrides": {
            "trainer.max_steps": 2, "trainer.val_check_interval": 2, "trainer.limit_val_batches": 1,
            "trainer.logger": False, "trainer.enable_progress_bar": False, "data.batch_size": 4,
            "data.eval_batch_size": 6, "data.num_workers": 0, "data.val_fraction": 0.2,
            "model.init_args.recognizers": {"easyocr": {
                "class_path": "stisr_lightning.models.recognizers.easyocr_crnn.EasyOCRCRNN"}}}}},
        "tables": [{"id": "T3", "base": "srcnn.yaml",
                    "rows": [{"name": "Bicubic", "base": "bicubic.yaml", "subcommand": "test"}, {"name": "SRCNN"}],
                    "columns": [{"group": "CRNN", "name": "Easy", "metric": "test/synthetic/easy/easyocr/acc",
                                 "scale": 100}, {"name": "PSNR", "metric": "test/synthetic/average/psnr"}]}],
    }
    (tmp_path / "sweeps" / "e2e.yaml").write_text(json.dumps(spec))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stisr_lightning.sweeps.main", str(tmp_path / "sweeps" / "e2e.yaml"),
               "--out", str(out), "--workers", "2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 cells: 2 done, 0 failed" in first.stdout and "engine overhead" in first.stdout
    table = (out / "tables" / "T3.md").read_text()
    assert "/ 36.40 (" in table  # LEMMA's bicubic CRNN easy number from sweeps/references/lemma.csv beside ours
    psnr = [line.split("|")[3].strip() for line in table.splitlines() if line.startswith(("| Bicubic", "| SRCNN"))]
    assert len(psnr) == 2 and all(float(value) > 5 for value in psnr)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and "0 ran now" in again.stdout


def test_nan_metrics_fail_unless_listed_as_not_available():
    from stisr_lightning.sweeps.run import nan_metrics

    results = {"metrics": {"test/a/psnr": 20.0, "test/a/lpips": None, "test/a/ssim": None, "test/a/fid_text": None,
                           "test/a/x/acc": float("nan")},
               "not_available": ["test/a/lpips", "test/a/ssim"]}
    assert sorted(nan_metrics(results)) == ["test/a/fid_text", "test/a/ssim", "test/a/x/acc"]

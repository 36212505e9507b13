import math

import numpy as np
import pytest
from PIL import Image

from stisr_lightning.data.textzoom import write_textzoom_lmdb
from stisr_lightning.metrics import calibration as C
from tests.fakes import REPO, BrightnessRecognizer

LEMMA_REFERENCES = REPO / "sweeps" / "references" / "lemma.csv"


def _flat(value: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.full((*size, 3), value, dtype=np.uint8))


def _stripes(low: int, high: int) -> Image.Image:
    array = np.full((32, 128, 3), low, dtype=np.uint8)
    array[:, ::2] = high
    return Image.fromarray(array)


# (HR, LR, label). BrightnessRecognizer reads "a" when the mean is above 0.5. Bicubic of a flat LR is the same flat
# image, so every PSNR below is a hand computation: -10 log10(mean((hr - lr)^2)).
SAMPLES = [
    (_flat(204, (32, 128)), _flat(153, (16, 64)), "a"),  # blank HR; HR "a" right, bicubic "a" right
    (_stripes(0, 255), _flat(102, (16, 64)), "b"),  # HR mean 0.5 -> "b" right; bicubic "b" right
    (_flat(51, (32, 128)), _flat(204, (16, 64)), "a"),  # blank HR; HR "b" wrong; bicubic "a" right
    (_stripes(120, 130), _flat(153, (16, 64)), "b"),  # low-contrast HR; HR "b" right; bicubic "a" wrong
]
HAND_PSNR = [
    -10 * math.log10((51 / 255) ** 2),
    -10 * math.log10(((102 / 255) ** 2 + (153 / 255) ** 2) / 2),
    -10 * math.log10((153 / 255) ** 2),
    -10 * math.log10(((33 / 255) ** 2 + (23 / 255) ** 2) / 2),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    for subset in C.SUBSETS:
        write_textzoom_lmdb(root / "test" / subset, SAMPLES)
    return root


def test_subset_numbers_equal_a_hand_computation(data_dir):
    result = C.calibrate_subset(data_dir / "test" / "easy", {"brightness": BrightnessRecognizer()}, "easy",
                                batch_size=3)
    assert (result.count, result.blank_hr, result.low_contrast_hr) == (4, 2, 1)
    assert result.accuracy == {"brightness": {"hr": 75.0, "bicubic": 75.0}}
    assert result.psnr == pytest.approx(sum(HAND_PSNR) / 4, abs=1e-4)
    assert 0 < result.ssim < 1


def test_limit_reads_only_the_first_images(data_dir):
    result = C.calibrate_subset(data_dir / "test" / "hard", {"brightness": BrightnessRecognizer()}, "hard", limit=2)
    assert result.count == 2 and result.accuracy["brightness"] == {"hr": 100.0, "bicubic": 100.0}
    assert result.psnr == pytest.approx(sum(HAND_PSNR[:2]) / 2, abs=1e-4)


def test_paper_rows_are_the_bicubic_and_hr_rows_of_lemma_table_3():
    paper = C.paper_rows(LEMMA_REFERENCES)
    assert paper[("ASTER", "easy", "bicubic")] == 67.4
    assert paper[("MORAN", "medium", "bicubic")] == 37.9
    assert paper[("CRNN", "hard", "bicubic")] == 21.1
    assert paper[("CRNN", "hard", "hr")] == 64.6
    assert len(paper) == 2 * 3 * 4  # two rows, three recognizers, easy / medium / hard / average


def test_bands_need_bicubic_near_the_paper_and_room_above_it():
    def result(subset, hr, bicubic):
        return C.SubsetCalibration(subset, 10, 0, 0, 20.0, 0.7, {"reader": {"hr": hr, "bicubic": bicubic}})

    paper = {("CRNN", "easy", "bicubic"): 36.4, ("CRNN", "medium", "bicubic"): 21.1, ("CRNN", "hard", "bicubic"): 21.1}
    frame = C.calibration_frame(
        [result("easy", 90.0, 44.4), result("medium", 45.0, 21.1), result("hard", 90.0, 29.2)], {"CRNN": "reader"},
        paper)
    assert frame["in bands"].tolist() == ["yes", "no", "no"]  # easy at the edge; medium no room; hard 8.1 off
    assert frame["column"].tolist() == ["CRNN"] * 3
    assert frame["bicubic ±95%"].iloc[1] == pytest.approx(196 * math.sqrt(0.211 * 0.789 / 10))


def test_missing_lmdbs_are_named_in_one_line(tmp_path):
    from stisr_lightning.cli.data import main

    write_textzoom_lmdb(tmp_path / "test" / "easy", SAMPLES[:1])
    with pytest.raises(FileNotFoundError, match="test/medium, .*test/hard$"):
        C.subset_paths(tmp_path)
    with pytest.raises(SystemExit, match="^stisr-data calibrate: .*test/medium"):
        main(["calibrate", str(tmp_path), "--columns", "ASTER=ppocr"])


def test_calibrate_command_prints_both_tables(data_dir, capsys):
    from stisr_lightning.cli.data import main

    main(["calibrate", str(data_dir), "--columns", "ASTER=ppocr", "--limit", "2"])
    out = capsys.readouterr().out
    assert "blank HR" in out and "bicubic PSNR" in out
    assert "ASTER" in out and "ppocr" in out and "67.4" in out  # the paper's bicubic ASTER easy beside ours


def test_calibrate_command_writes_json_once_and_loads_reader_weights(data_dir, tmp_path, capsys):
    import json

    import torch

    from stisr_lightning.cli.data import main
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN

    weights = tmp_path / "english_g2_copy.pth"
    torch.save(EasyOCRCRNN().state_dict(), weights)
    out = tmp_path / "calibration.json"
    main(["calibrate", str(data_dir), "--columns", f"CRNN=easyocr@{weights}", "--limit", "1", "--json", str(out)])
    record = json.loads(out.read_text())
    assert [r["subset"] for r in record["subsets"]] == ["easy", "medium", "hard"]
    assert {(r["column"], r["reader"]) for r in record["readers"]} == {("CRNN", f"easyocr@{weights}")}
    assert record["readers"][0]["paper bicubic"] == 36.4
    with pytest.raises(SystemExit, match="already exists"):
        main(["calibrate", str(data_dir), "--json", str(out)])


@pytest.mark.parametrize("spec, message", [("nope", "unknown reader 'nope'"), ("ppocr@w.pth", "loads no weights")])
def test_reader_specs_fail_with_one_line(spec, message):
    from stisr_lightning.models.recognizers.catalog import check_reader_spec

    with pytest.raises(ValueError, match=message):
        check_reader_spec(spec)


def test_shipped_stand_ins_read_fresh_data_as_recorded(tmp_path):
    """The record beside the shipped weights (scripts/calibrate_readers.sh) holds the accuracies on the first 100
    pairs of each subset of `make-synthetic --test 900 --seed 1`; regenerating those pairs must give them again, up
    to two readings per subset that float rounding may flip."""
    import json

    from stisr_lightning.data.synthetic import make_synthetic
    from stisr_lightning.models.recognizers.catalog import STAND_INS, build_reader
    from stisr_lightning.models.recognizers.easyocr_crnn import CALIBRATED_WEIGHTS

    record = json.loads((CALIBRATED_WEIGHTS / "easyocr_columns.json").read_text())
    make_synthetic(tmp_path, train=0, test=900, seed=1)
    readers = {name: build_reader(name) for name in STAND_INS.values()}
    results = [C.calibrate_subset(path, readers, subset, limit=100) for subset, path in C.subset_paths(tmp_path).items()]
    assert [r["blank HR"] for r in record["subsets"]] == [r.blank_hr for r in results] == [0, 0, 0]
    measured = C.calibration_frame(results, STAND_INS, C.paper_rows(LEMMA_REFERENCES))
    assert len(record["readers"]) == len(measured) == 9
    for recorded, ours in zip(record["readers"], measured.to_dict("records")):
        assert (recorded["column"], recorded["reader"], recorded["subset"]) == (ours["column"], ours["reader"],
                                                                               ours["subset"])
        assert ours["HR"] == pytest.approx(recorded["HR"], abs=2.0)
        assert ours["bicubic"] == pytest.approx(recorded["bicubic"], abs=2.0)

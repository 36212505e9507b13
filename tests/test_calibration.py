import math

import numpy as np
import pytest
from PIL import Image

from stisr_lightning.data.textzoom import write_textzoom_lmdb
from stisr_lightning.metrics import calibration as C
from stisr_lightning.sweeps.spec import PACKAGE_REPO
from tests.fakes import BrightnessRecognizer

LEMMA_REFERENCES = PACKAGE_REPO / "sweeps" / "references" / "lemma.csv"


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
    assert frame["in bands"].tolist() == [True, False, False]  # easy at the edge; medium no room; hard 8.1 off
    assert frame["column"].tolist() == ["CRNN"] * 3


def test_subset_paths_name_the_missing_lmdb(tmp_path):
    write_textzoom_lmdb(tmp_path / "test" / "easy", SAMPLES[:1])
    with pytest.raises(FileNotFoundError, match="test/medium, .*test/hard$"):
        C.subset_paths(tmp_path)


def test_calibrate_command_prints_both_tables(data_dir, capsys):
    from stisr_lightning.cli.data import main

    main(["calibrate", str(data_dir), "--columns", "ASTER=ppocr", "--limit", "2"])
    out = capsys.readouterr().out
    assert "blank HR" in out and "bicubic PSNR" in out
    assert "ASTER" in out and "ppocr" in out and "67.4" in out  # the paper's bicubic ASTER easy beside ours

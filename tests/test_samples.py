"""The run folder's picture of the test: sample PNGs and a sheet whose readings are coloured right / wrong."""

import numpy as np
import torch
from PIL import Image

from stisr_lightning.callbacks.samples import RIGHT, WRONG, sample_sheet, write_samples
from stisr_lightning.metrics.evaluation import KeptSamples


def kept(readings: list[dict[str, str]], labels: list[str]) -> KeptSamples:
    count = len(labels)
    return KeptSamples(lr=[torch.full((3, 16, 64), 0.2)] * count, sr=[torch.full((3, 32, 128), 0.5)] * count,
                       hr=[torch.full((3, 32, 128), 0.8)] * count, label=labels, readings=readings)


def colour_count(image: Image.Image, colour: tuple[int, int, int]) -> int:
    """Pixels of this hue (text is anti-aliased): its strongest channel well above the other two."""
    pixels = np.asarray(image).astype(int)
    strongest = int(np.argmax(colour))
    others = [c for c in range(3) if c != strongest]
    return int(((pixels[..., strongest] - pixels[..., others].max(-1)) > 60).sum())


def test_samples_are_written_as_pngs_per_test_set(tmp_path):
    rows = write_samples({"synthetic/easy": kept([{"r": "a"}], ["a"])}, tmp_path)
    (set_name, label, stem, files, readings), = rows
    assert (set_name, label, stem, readings) == ("synthetic/easy", "a", "samples/synthetic-easy/000", {"r": "a"})
    assert {kind: Image.open(path).size for kind, path in files.items()} == {"lr": (64, 16), "sr": (128, 32),
                                                                           "hr": (128, 32)}
    assert np.asarray(Image.open(files["sr"]))[0, 0].tolist() == [128, 128, 128]


def test_sheet_marks_a_reading_right_under_the_protocol_and_a_wrong_one_red(tmp_path):
    right = write_samples({"s/easy": kept([{"r": "Lockers!"}], ["LOCKERS"])}, tmp_path / "right")
    wrong = write_samples({"s/easy": kept([{"r": "Lockens"}], ["LOCKERS"])}, tmp_path / "wrong")
    right_sheet, wrong_sheet = sample_sheet(right, ["r"]), sample_sheet(wrong, ["r"])
    assert right_sheet.size == wrong_sheet.size == (3 * 132 + 4, 32 + 2 * 12 + 6 + 4)
    assert colour_count(right_sheet, RIGHT) > 0 and colour_count(right_sheet, WRONG) == 0
    assert colour_count(wrong_sheet, WRONG) > 0 and colour_count(wrong_sheet, RIGHT) == 0
    assert np.asarray(right_sheet)[4 + 16, 4 + 132 + 64].tolist() == [128, 128, 128]  # the SR cell

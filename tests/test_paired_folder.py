import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from stisr_lightning.data.datamodule import STISRDataModule
from stisr_lightning.data.paired_folder import PairedTextFolder, open_text_dataset, write_paired_folder
from stisr_lightning.data.textzoom import CorruptRecordError, TextZoomLMDB, image_to_tensor, write_textzoom_lmdb

os.environ.setdefault("WANDB_MODE", "disabled")


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _tensor(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@pytest.fixture
def pairs():
    return [(_image(40, 90, i), _image(12, 50, 100 + i), label) for i, label in enumerate(["Hello!", "a b-c", "X9"])]


def _hand_folder(root, names, label_text=None, label_json=None):
    """HR/ and LR/ with the given file names (HR 32x128, LR 16x64, seeded by position) and a hand-written label file."""
    (root / "HR").mkdir(parents=True)
    (root / "LR").mkdir()
    for i, name in enumerate(names):
        _image(32, 128, i).save(root / "HR" / name)
        _image(16, 64, 50 + i).save(root / "LR" / name)
    if label_text is not None:
        (root / "labels.txt").write_text(label_text, encoding="utf-8")
    if label_json is not None:
        (root / "labels.json").write_text(json.dumps(label_json, ensure_ascii=False), encoding="utf-8")
    return root


def test_round_trip_exact_pixels_after_pil_bicubic_resize(tmp_path, pairs):
    assert write_paired_folder(tmp_path / "pairs", pairs) == 3
    assert sorted(os.listdir(tmp_path / "pairs")) == ["HR", "LR", "labels.txt"]
    dataset = PairedTextFolder(tmp_path / "pairs")
    assert len(dataset) == 3
    item = dataset[1]
    hr, lr, _ = pairs[1]
    assert item["hr"].shape == (3, 32, 128) and item["lr"].shape == (3, 16, 64)
    assert torch.equal(item["hr"], _tensor(hr.resize((128, 32), Image.BICUBIC)))
    assert torch.equal(item["lr"], _tensor(lr.resize((64, 16), Image.BICUBIC)))
    assert item["label"] == "ab-c" and item["index"] == 1  # spaces removed by filter_text(..., 'all')
    native = PairedTextFolder(tmp_path / "pairs", hr_size=(40, 90), lr_size=(12, 50), mask=True)[0]
    assert torch.equal(native["hr"], image_to_tensor(pairs[0][0], mask=True))
    assert torch.equal(native["lr"], image_to_tensor(pairs[0][1], mask=True))


def test_items_equal_the_textzoom_lmdb_of_the_same_pairs(tmp_path, pairs):
    write_paired_folder(tmp_path / "pairs", pairs)
    write_textzoom_lmdb(tmp_path / "db", pairs)
    options = {"hr_size": (64, 256), "lr_size": (16, 64), "mask": True}
    for folder_item, lmdb_item in zip(
        PairedTextFolder(tmp_path / "pairs", **options), TextZoomLMDB(tmp_path / "db", **options)
    ):
        assert folder_item.keys() == lmdb_item.keys()
        assert all(torch.equal(folder_item[k], lmdb_item[k]) for k in ("hr", "lr"))
        assert (folder_item["label"], folder_item["index"]) == (lmdb_item["label"], lmdb_item["index"])


def test_lr_from_hr_resizes_the_hr_image(tmp_path, pairs):
    write_paired_folder(tmp_path / "pairs", pairs)
    item = PairedTextFolder(tmp_path / "pairs", lr_from_hr=True)[2]
    assert torch.equal(item["lr"], _tensor(pairs[2][0].resize((64, 16), Image.BICUBIC)))


def test_labels_tab_and_space_separated_index_in_sorted_name_order(tmp_path):
    names = ["b.PNG", "a.jpg", "c.bmp", "d.webp", "e.JPEG"]
    text = "\ufeffb.PNG\tTab Separated\r\n\nc.bmp space separated\na.jpg\tA\td\ne.JPEG Wide 中\nd.webp\t\n"
    root = _hand_folder(tmp_path / "pairs", names, label_text=text)
    (root / "HR" / "notes.md").write_text("not an image")
    (root / "LR" / "notes.md").write_text("not an image")
    dataset = PairedTextFolder(root, label_filter="unicode")
    assert dataset.names == ["a.jpg", "b.PNG", "c.bmp", "d.webp", "e.JPEG"]
    assert [dataset[i]["label"] for i in range(5)] == ["ad", "tabseparated", "spaceseparated", "", "wide中"]
    assert [dataset[i]["index"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert torch.equal(dataset[1]["lr"], _tensor(_image(16, 64, 50)))  # b.PNG was written first, pixels unchanged


def test_labels_json(tmp_path):
    root = _hand_folder(tmp_path / "pairs", ["x.png", "y.png"], label_json={"y.png": "Yes!", "x.png": "no"})
    dataset = PairedTextFolder(root)
    assert [dataset[i]["label"] for i in range(2)] == ["no", "Yes!"]
    (root / "labels.json").write_text('["x.png", "no"]')
    with pytest.raises(ValueError, match=r"labels\.json: expected one JSON object mapping file name -> label"):
        PairedTextFolder(root)
    (root / "labels.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"labels\.json: not valid JSON"):
        PairedTextFolder(root)


def test_chinese_labels_kept_under_unicode_filter_and_charset(tmp_path, pairs):
    chinese = [(hr, lr, label) for (hr, lr, _), label in zip(pairs, ["中文 文字", "Café", "ＡＢ１２"])]
    write_paired_folder(tmp_path / "pairs", chinese)
    assert PairedTextFolder(tmp_path / "pairs")[0]["label"] == ""  # TextZoom's 'all' filter erases Chinese
    unicode = PairedTextFolder(tmp_path / "pairs", label_filter="unicode")
    assert [unicode[i]["label"] for i in range(3)] == ["中文文字", "café", "ab12"]
    assert unicode.charset() == "12abcfé中字文"
    assert PairedTextFolder(tmp_path / "pairs", label_filter="unicode", max_label_length=3).charset() == ""
    assert PairedTextFolder(tmp_path / "pairs", label_filter="unicode", max_label_length=4).charset() == "12abcfé中字文"
    assert PairedTextFolder(tmp_path / "pairs").charset() == "Caf"
    with pytest.raises(ValueError, match="unknown level 'han'"):
        PairedTextFolder(tmp_path / "pairs", label_filter="han")


def test_layout_errors_name_the_file_or_folder(tmp_path, pairs):
    root = tmp_path / "pairs"
    write_paired_folder(root, pairs)
    with pytest.raises(FileNotFoundError, match=r"elsewhere: paired folder not found"):
        PairedTextFolder(tmp_path / "elsewhere")
    shutil.move(root / "LR", tmp_path / "LR_aside")
    with pytest.raises(FileNotFoundError, match=r"pairs/LR: missing LR/ folder"):
        PairedTextFolder(root)
    shutil.move(tmp_path / "LR_aside", root / "LR")
    (root / "LR" / "000000002.png").unlink()
    with pytest.raises(ValueError, match=r"pairs/HR/000000002\.png: no LR twin .*pairs/LR/000000002\.png$"):
        PairedTextFolder(root)
    (root / "HR" / "000000002.png").unlink()
    pairs[0][0].save(root / "LR" / "extra.jpg")
    with pytest.raises(ValueError, match=r"pairs/LR/extra\.jpg: no HR twin .*pairs/HR/extra\.jpg$"):
        PairedTextFolder(root)
    (root / "LR" / "extra.jpg").unlink()
    with pytest.raises(ValueError, match=r"labels\.txt: labels 000000002\.png, which is not an image in .*pairs/HR$"):
        PairedTextFolder(root)
    (root / "labels.txt").write_text("000000001.png\tHello\n")
    with pytest.raises(ValueError, match=r"pairs/HR/000000003\.png: no label in .*labels\.txt$"):
        PairedTextFolder(root)
    (root / "labels.txt").write_text("000000001.png\tA\n000000003.png\tB\n000000001.png\tC\n")
    with pytest.raises(ValueError, match=r"labels\.txt: line 3 labels 000000001\.png a second time"):
        PairedTextFolder(root)
    (root / "labels.txt").write_text("000000001.png\tA\n000000003.png\n")
    with pytest.raises(
        ValueError, match=r"labels\.txt: line 2 is '000000003\.png', expected '<file name><TAB><label>'"
    ):
        PairedTextFolder(root)
    (root / "labels.json").write_text("{}")
    with pytest.raises(ValueError, match=r"pairs: both labels\.txt and labels\.json; keep one"):
        PairedTextFolder(root)
    (root / "labels.json").unlink()
    (root / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"pairs: no label file \(expected labels\.txt or labels\.json\)"):
        PairedTextFolder(root)
    with pytest.raises(ValueError, match=r"on_corrupt='ignore'"):
        PairedTextFolder(root, on_corrupt="ignore")


def test_empty_folder_is_an_error(tmp_path):
    root = _hand_folder(tmp_path / "pairs", [], label_text="")
    with pytest.raises(ValueError, match=r"pairs: no images in HR/ \(suffixes \.bmp, \.jpeg, \.jpg, \.png, \.webp\)"):
        PairedTextFolder(root)


def test_unreadable_image_is_skipped_with_a_warning_or_raised(tmp_path, pairs):
    root = tmp_path / "pairs"
    write_paired_folder(root, pairs)
    (root / "LR" / "000000002.png").write_bytes(b"not a png")
    dataset = PairedTextFolder(root)
    with pytest.warns(UserWarning, match=r"pairs: skipping LR/000000002\.png \(undecodable image"):
        item = dataset[1]
    assert item["index"] == 2 and item["label"] == "X9"
    assert dataset.skipped_keys == {"LR/000000002.png"}
    with pytest.raises(CorruptRecordError, match=r"pairs: undecodable image .*: key LR/000000002\.png") as caught:
        PairedTextFolder(root, on_corrupt="raise")[1]
    assert caught.value.key == "LR/000000002.png"
    assert PairedTextFolder(root, on_corrupt="raise", lr_from_hr=True)[1]["index"] == 1  # the LR file is never read
    with pytest.raises(CorruptRecordError, match=r"label longer than 2: key label of 000000001\.png"):
        PairedTextFolder(root, on_corrupt="raise", max_label_length=2)[0]
    with pytest.raises(IndexError, match=r"index 3 out of range \[0, 3\)"):
        dataset[3]


def test_pickles_and_loads_in_worker_processes(tmp_path, pairs):
    write_paired_folder(tmp_path / "pairs", pairs)
    dataset = pickle.loads(pickle.dumps(PairedTextFolder(tmp_path / "pairs")))
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=1)))
    assert batch["hr"].shape == (3, 3, 32, 128) and batch["label"] == ["Hello!", "ab-c", "X9"]


def test_open_text_dataset_dispatches_on_the_hr_folder(tmp_path, pairs):
    write_paired_folder(tmp_path / "pairs", pairs)
    write_textzoom_lmdb(tmp_path / "db", pairs)
    assert isinstance(open_text_dataset(tmp_path / "pairs", mask=True), PairedTextFolder)
    assert isinstance(open_text_dataset(str(tmp_path / "db"), mask=True), TextZoomLMDB)
    with pytest.raises(FileNotFoundError, match="nothing: LMDB not found"):
        open_text_dataset(tmp_path / "nothing")


def test_datamodule_reads_paired_folders_as_train_dirs_and_test_sets(tmp_path, pairs):
    write_paired_folder(tmp_path / "train_pairs", pairs)
    write_textzoom_lmdb(tmp_path / "train_db", [(hr, lr, "w" + label) for hr, lr, label in pairs])
    chinese = [(hr, lr, label) for (hr, lr, _), label in zip(pairs, ["中文", "字", "Ab"])]
    write_paired_folder(tmp_path / "test_pairs", chinese)
    module = STISRDataModule(
        train_dirs=[str(tmp_path / "train_pairs"), str(tmp_path / "train_db")],
        test_sets={
            "real/x4": str(tmp_path / "test_pairs"),
            "real/sized": {"path": str(tmp_path / "test_pairs"), "hr_size": [64, 256], "lr_size": [64, 256]},
        },
        val_fraction=0.0,
        batch_size=2,
        eval_batch_size=3,
        num_workers=0,
        text_protocol="unicode",
        drop_last=False,
    )
    module.setup("fit")
    module.setup("test")
    assert [type(d) for d in module.train_set.dataset.datasets] == [PairedTextFolder, TextZoomLMDB]
    train_labels = sorted(label for batch in module.train_dataloader() for label in batch["label"])
    assert train_labels == sorted(["hello!", "ab-c", "x9", "whello!", "wab-c", "wx9"])
    plain, sized = (next(iter(loader)) for loader in module.test_dataloader())
    assert plain["label"] == ["中文", "字", "ab"] and plain["lr"].shape == (3, 3, 16, 64)
    assert sized["hr"].shape == sized["lr"].shape == (3, 3, 64, 256)
    assert torch.equal(sized["lr"][0], _tensor(pairs[0][1].resize((256, 64), Image.BICUBIC)))

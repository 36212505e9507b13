import io
import pickle

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from stisr_lightning.data.textzoom import (
    CorruptRecordError,
    TextZoomLMDB,
    image_to_tensor,
    inspect_lmdb,
    write_str_lmdb,
    write_textzoom_lmdb,
)


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def pairs():
    return [(_image(32, 128, i), _image(16, 64, 100 + i), label) for i, label in enumerate(["Hello!", "a b-c", "X9"])]


def test_round_trip_exact_pixels_and_labels(tmp_path, pairs):
    assert write_textzoom_lmdb(tmp_path / "db", pairs) == 3
    dataset = TextZoomLMDB(tmp_path / "db")
    assert len(dataset) == 3
    item = dataset[1]
    hr, lr, _ = pairs[1]
    assert item["hr"].shape == (3, 32, 128) and item["lr"].shape == (3, 16, 64)
    assert torch.equal(item["hr"], torch.from_numpy(np.asarray(hr)).permute(2, 0, 1).float() / 255)
    assert torch.equal(item["lr"], torch.from_numpy(np.asarray(lr)).permute(2, 0, 1).float() / 255)
    assert item["label"] == "ab-c"  # spaces removed by filter_text(..., 'all')
    assert item["index"] == 1


def test_resize_is_pil_bicubic(tmp_path):
    hr, lr = _image(40, 90, 1), _image(12, 50, 2)
    write_textzoom_lmdb(tmp_path / "db", [(hr, lr, "w")])
    item = TextZoomLMDB(tmp_path / "db")[0]
    expected = np.asarray(hr.resize((128, 32), Image.BICUBIC))
    assert torch.equal(item["hr"], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_mask_channel_matches_hand_computation():
    pixels = np.array([[[0, 0, 0], [255, 255, 255]], [[100, 100, 100], [10, 200, 30]]], dtype=np.uint8)
    tensor = image_to_tensor(Image.fromarray(pixels), mask=True)
    # PIL 'L' values: 0, 255, 100, (10*299 + 200*587 + 30*114)/1000 = 123.8 -> 124; mean = 119.75
    assert tensor.shape == (4, 2, 2)
    assert tensor[3].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    gray = np.asarray(Image.fromarray(pixels).convert("L"))
    assert gray.tolist() == [[0, 255], [100, 124]]


def test_mask_equals_pil_gray_threshold_on_random_images():
    for seed in range(20):
        image = _image(16, 64, seed)
        gray = np.asarray(image.convert("L"))
        assert np.array_equal(image_to_tensor(image, mask=True)[3].numpy(), (gray <= gray.mean()).astype(np.float32))


def test_str_format_fallback_downscales_bicubic(tmp_path):
    image = _image(20, 50, 3)
    write_str_lmdb(tmp_path / "str", [(image, "Cat")])
    item = TextZoomLMDB(tmp_path / "str")[0]
    expected = np.asarray(image.resize((64, 16), Image.BICUBIC))
    assert torch.equal(item["lr"], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert item["label"] == "Cat"


def _corrupt(path, key, value=b"not an image"):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def test_corrupt_record_skipped_and_named(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    _corrupt(tmp_path / "db", b"image_lr-000000002")
    dataset = TextZoomLMDB(tmp_path / "db")
    with pytest.warns(UserWarning, match="image_lr-000000002"):
        item = dataset[1]
    assert item["index"] == 2 and item["label"] == "X9"
    assert dataset.skipped_keys == {"image_lr-000000002"}


def test_corrupt_record_raises_with_path_and_key(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    _corrupt(tmp_path / "db", b"image_hr-000000003")
    dataset = TextZoomLMDB(tmp_path / "db", on_corrupt="raise")
    with pytest.raises(CorruptRecordError, match=r"db.*image_hr-000000003"):
        dataset[2]


def test_missing_num_samples_names_path(tmp_path):
    env = lmdb.open(str(tmp_path / "bad"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"label-000000001", b"x")
    env.close()
    with pytest.raises(ValueError, match=r"bad.*num-samples"):
        TextZoomLMDB(tmp_path / "bad")


def test_max_label_length_skips_long_labels(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    dataset = TextZoomLMDB(tmp_path / "db", max_label_length=4)
    with pytest.warns(UserWarning, match="label-000000001"):
        assert dataset[0]["label"] == "ab-c"


def test_pickle_and_workers(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    dataset = TextZoomLMDB(tmp_path / "db", mask=True)
    dataset[0]  # opens the environment in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[2]["hr"], dataset[2]["hr"])
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=2)))
    assert batch["hr"].shape == (3, 4, 32, 128) and batch["lr"].shape == (3, 4, 16, 64)
    assert batch["label"] == ["Hello!", "ab-c", "X9"] and batch["index"].tolist() == [0, 1, 2]


def test_inspect_reports_sizes_charset_and_unreadable(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    _corrupt(tmp_path / "db", b"image_hr-000000001", b"\x89PNG broken")
    report = inspect_lmdb(tmp_path / "db")
    assert report["num_samples"] == 3 and report["format"] == "textzoom"
    assert report["hr_sizes"] == {"32x128": 2} and report["lr_sizes"] == {"16x64": 3}
    assert report["charset"] == "".join(sorted(set("Hello!a b-cX9")))
    assert report["unreadable"] == ["image_hr-000000001"]


@pytest.mark.parametrize("mode, image_format", [("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
                                                ("RGB", "JPEG")])
def test_fast_decoder_matches_pil_for_every_png_mode_and_jpeg(mode, image_format):
    from stisr_lightning.data.textzoom import decode_image, decode_rgb, encode_image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = encode_image(image, image_format)
    decoded = decode_rgb(buffer)
    assert decoded.dtype == np.uint8 and decoded.shape == (16, 64, 3)
    assert np.array_equal(decoded, np.asarray(decode_image(buffer)))

import io
import json
import pickle

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fakes import write_str_lmdb

from stisr_lightning.data.textzoom import (
    CorruptRecordError,
    TextZoomLMDB,
    encode_image,
    hr_legibility,
    image_to_tensor,
    inspect_lmdb,
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


def test_unicode_label_filter_keeps_chinese_labels(tmp_path, pairs):
    chinese = [(hr, lr, label) for (hr, lr, _), label in zip(pairs, ["中文 文字", "Café", "X9"])]
    write_textzoom_lmdb(tmp_path / "db", chinese)
    assert TextZoomLMDB(tmp_path / "db")[0]["label"] == ""  # TextZoom's 'all' filter
    unicode = TextZoomLMDB(tmp_path / "db", label_filter="unicode")
    assert [unicode[i]["label"] for i in range(3)] == ["中文文字", "café", "x9"]
    with pytest.raises(ValueError, match="unknown level 'han'"):
        TextZoomLMDB(tmp_path / "db", label_filter="han")


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
    assert report["blank_hr"] == 0 and report["low_contrast_hr"] == 0  # random pixels; the unreadable HR not counted


def _text_like(grey_levels, ink=0.2, seed=0):
    """32x128 RGB: background at grey_levels[0], a random `ink` fraction of pixels at grey_levels[1]."""
    pixels = np.full((32, 128, 3), grey_levels[0], dtype=np.uint8)
    pixels[np.random.default_rng(seed).random((32, 128)) < ink] = grey_levels[1]
    return pixels


def test_hr_legibility_flags_blank_and_low_contrast():
    assert hr_legibility(np.full((32, 128, 3), (30, 160, 90), dtype=np.uint8)) == (True, False)
    assert hr_legibility(_text_like((200, 40))) == (False, False)
    assert hr_legibility(_text_like((200, 180))) == (False, True)  # 20 grey levels apart: faint text
    assert hr_legibility(_text_like((200, 40), ink=0.03)) == (False, False)  # thin text still counts
    assert hr_legibility(_text_like((200, 40), ink=0.002)) == (False, True)  # 8 stray dark pixels on a flat HR


def test_inspect_counts_blank_and_low_contrast_hr(tmp_path, capsys):
    from stisr_lightning.cli.data import main

    lr = Image.fromarray(_text_like((200, 40))[::2, ::2])
    hrs = [_text_like((200, 40)), np.full((32, 128, 3), 77, dtype=np.uint8), _text_like((90, 100)),
           _text_like((250, 0), seed=1)]
    write_textzoom_lmdb(tmp_path / "db", [(Image.fromarray(hr), lr, "ab") for hr in hrs])
    report = inspect_lmdb(tmp_path / "db")
    assert report["blank_hr"] == 1 and report["low_contrast_hr"] == 1
    main(["inspect", str(tmp_path / "db")])
    assert "blank HR (grey std < 2/255): 1; low-contrast HR" in capsys.readouterr().out
    main(["inspect", str(tmp_path / "db"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert (printed["blank_hr"], printed["low_contrast_hr"]) == (1, 1)


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


def test_pil_gray_is_exact_for_every_rgb_color():
    from stisr_lightning.data.textzoom import pil_gray

    colors = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([colors >> 16, (colors >> 8) & 255, colors & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    for rows in np.split(rgb, 4):  # bounded memory
        assert np.array_equal(pil_gray(rows), np.asarray(Image.fromarray(rows).convert("L")))


def _official_tensor(buffer, size, mask):
    """TextZoom's resizeNormalize on a PIL image: bicubic resize, ToTensor, and the mask channel from 'L' > mean."""
    image = Image.open(io.BytesIO(buffer)).convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    if not mask:
        return tensor
    gray = image.convert("L")
    threshold = np.array(gray).mean()
    mask_image = gray.point(lambda x: 0 if x > threshold else 255)
    return torch.cat([tensor, torch.from_numpy(np.array(mask_image)).float().div(255)[None]])


def _mask_edge_cases():
    """Images whose gray values sit exactly on their mean (flat, two-tone with an integer mean) or in a gradient."""
    flat = Image.new("RGB", (128, 32), (90, 140, 30))
    two_tone = np.zeros((32, 128, 3), np.uint8)
    two_tone[:, 64:] = 200  # mean gray 100, equal to no pixel; with a third of them at 100 below
    two_tone[:, :20] = 100
    gradient = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (16, 64, 3)).copy()
    return [flat, Image.fromarray(two_tone), Image.fromarray(gradient)]


@pytest.mark.parametrize("mask", [False, True])
def test_items_equal_official_pil_pipeline(tmp_path, mask):
    edge = _mask_edge_cases()
    pairs = [(_image(32, 128, 1), _image(16, 64, 2), "a"),  # stored at the target sizes (no resize)
             (_image(37, 150, 3), _image(20, 70, 4), "b"),  # resized both ways
             (_image(24, 96, 5), _image(9, 40, 6), "c"),
             (edge[0], edge[2], "d"), (edge[1], edge[0], "e"), (edge[2], edge[1], "f")]
    encoded = [(encode_image(hr), encode_image(lr), label) for hr, lr, label in pairs]
    write_textzoom_lmdb(tmp_path / "db", encoded)
    dataset = TextZoomLMDB(tmp_path / "db", mask=mask)
    for index, (hr, lr, _) in enumerate(encoded):
        item = dataset[index]
        for kind, buffer, size in (("hr", hr, (32, 128)), ("lr", lr, (16, 64))):
            expected = _official_tensor(buffer, size, mask)
            assert item[kind].dtype == torch.float32 and torch.equal(item[kind], expected), (index, kind)


def test_rgb_png_with_transparent_color_decodes_like_pil():
    from stisr_lightning.data.textzoom import decode_image, decode_rgb

    pixels = np.random.default_rng(1).integers(0, 4, (16, 64, 3), dtype=np.uint8) * 60
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", transparency=(60, 0, 120))  # a tRNS chunk on an RGB PNG
    assert b"tRNS" in buffer.getvalue()
    assert np.array_equal(decode_rgb(buffer.getvalue()), np.asarray(decode_image(buffer.getvalue())))
    assert np.array_equal(decode_rgb(buffer.getvalue()), pixels)


def test_truncated_rgb_png_is_a_corrupt_record(tmp_path, pairs):
    write_textzoom_lmdb(tmp_path / "db", pairs)
    _corrupt(tmp_path / "db", b"image_hr-000000002", encode_image(pairs[1][0])[:200])
    with pytest.raises(CorruptRecordError, match=r"image_hr-000000002"):
        TextZoomLMDB(tmp_path / "db", on_corrupt="raise")[1]

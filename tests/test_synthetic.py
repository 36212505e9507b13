import hashlib
import random

import numpy as np
import pytest

from stisr_lightning.data import synthetic as S
from stisr_lightning.data.textzoom import TextZoomLMDB, inspect_lmdb


def _digest(path):
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fonts():
    found = S.discover_fonts()
    if not found:
        pytest.skip("no fonts on this machine")
    return found[:6]


def test_font_discovery_is_sorted_and_excludes_symbol_fonts():
    found = S.discover_fonts()
    assert found == sorted(found)
    assert not any("symbol" in f.lower() or "dingbat" in f.lower() for f in found)


def test_random_text_survives_label_filter_and_varies():
    rng = random.Random(0)
    texts = [S.random_text(rng, ["alpha", "beta", "gamma"]) for _ in range(300)]
    assert all(texts) and all(" " not in t for t in texts)
    assert any(t.isupper() for t in texts) and any(t.islower() for t in texts)
    assert any(not t.isalnum() for t in texts) and any(t.isdigit() for t in texts)


def test_render_size_and_seed_determinism(fonts):
    images = [np.asarray(S.render_text("Hello", fonts[0], (32, 128), random.Random(1))) for _ in range(2)]
    assert images[0].shape == (32, 128, 3) and np.array_equal(*images)
    assert np.asarray(S.render_text("Hi", fonts[0], (5, 20), random.Random(1))).shape == (5, 20, 3)


def test_make_synthetic_layout_and_byte_identical(tmp_path, fonts):
    words = ["coffee", "street", "hotel", "exit", "open"]
    kwargs = dict(train=20, test=7, workers=0, fonts=fonts, words=words, str_test=4, chunk_size=8)
    counts = S.make_synthetic(tmp_path / "a", seed=3, **kwargs)
    assert counts == {"train": 20, "test/easy": 3, "test/medium": 2, "test/hard": 2, "str_synth": 4}
    S.make_synthetic(tmp_path / "b", seed=3, **{**kwargs, "workers": 2})
    S.make_synthetic(tmp_path / "c", seed=4, **kwargs)
    for name in counts:
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name), name
        assert _digest(tmp_path / "a" / name) != _digest(tmp_path / "c" / name), name
    report = inspect_lmdb(tmp_path / "a" / "train")
    assert report["hr_sizes"] == {"32x128": 20} and report["lr_sizes"] == {"16x64": 20} and not report["unreadable"]
    str_report = inspect_lmdb(tmp_path / "a" / "str_synth")
    assert str_report["hr_sizes"] == str_report["lr_sizes"]
    assert all(int(h) * int(w) <= 1024 for h, w in (k.split("x") for k in str_report["hr_sizes"]))
    item = TextZoomLMDB(tmp_path / "a" / "test" / "hard")[0]
    assert item["hr"].shape == (3, 32, 128) and item["lr"].shape == (3, 16, 64)


def test_harder_test_split_is_further_from_hr(tmp_path, fonts):
    S.make_synthetic(tmp_path, train=0, test=192, seed=0, workers=0, fonts=fonts)
    errors = []
    for level in ("easy", "hard"):
        dataset = TextZoomLMDB(tmp_path / "test" / level, lr_size=(32, 128))
        errors.append(np.mean([float(((d["lr"] - d["hr"]) ** 2).mean()) for d in (dataset[i] for i in range(64))]))
    assert errors[0] < errors[1]


def test_custom_hr_size(tmp_path, fonts):
    S.make_synthetic(tmp_path, train=3, test=0, seed=0, fonts=fonts, words=["ab"], hr_size=(16, 64), scale=4)
    assert inspect_lmdb(tmp_path / "train")["lr_sizes"] == {"4x16": 3}

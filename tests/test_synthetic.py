import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stisr_lightning.data import synthetic as S
from stisr_lightning.data.textzoom import TextZoomLMDB, hr_legibility, inspect_lmdb


def _digest(path):
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fonts():
    found = S.discover_fonts()
    if not found:
        pytest.skip("no fonts on this machine")
    return found[:6]


@pytest.fixture(scope="module")
def mpl_fonts():
    matplotlib = pytest.importorskip("matplotlib")
    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"


class _ExtremeRandom(random.Random):
    """Every `uniform` draw at one end of its range and every `randint` at its minimum: the strongest tilt and
    corner jitter with the narrowest margins."""

    def __init__(self, end: int) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a, b):
        return (a, b)[self.end]

    def randint(self, a, b):
        return a


def test_font_discovery_is_ordered_by_file_name_and_excludes_symbol_fonts():
    names = [Path(f).name for f in S.discover_fonts()]
    assert names == sorted(set(names))  # one file per name, whatever folder (or venv path) it lives in
    assert not any("symbol" in f.lower() or "dingbat" in f.lower() for f in names)


def test_font_order_does_not_depend_on_the_install_path(tmp_path, mpl_fonts):
    for folder, name in (("a_first", "ZzzCopy.ttf"), ("z_last", "AaaCopy.ttf")):
        (tmp_path / folder).mkdir()
        shutil.copy(mpl_fonts / "DejaVuSans.ttf", tmp_path / folder / name)
    found = S.discover_fonts([str(tmp_path / "a_first"), str(tmp_path / "z_last")])
    copies = [f for f in found if f.startswith(str(tmp_path))]
    assert [Path(f).name for f in copies] == ["AaaCopy.ttf", "ZzzCopy.ttf"]


def test_fonts_without_the_text_glyphs_are_excluded_by_their_cmap(mpl_fonts):
    found = set(S.discover_fonts())
    display = str(mpl_fonts / "DejaVuSansDisplay.ttf")  # no Latin cmap entries: every sample drawn with it was blank
    assert hr_legibility(np.asarray(S.render_text("Hello", display, (32, 128), random.Random(0))[0]))[0]
    for name in ("DejaVuSansDisplay.ttf", "STIXSizOneSymReg.ttf", "cmsy10.ttf"):  # cmsy10 maps 'a' to another glyph
        assert not S.renders_text_chars(str(mpl_fonts / name)) and str(mpl_fonts / name) not in found, name
    assert S.renders_text_chars(str(mpl_fonts / "DejaVuSans.ttf")) and "DejaVuSans.ttf" in {Path(f).name for f in found}
    assert set(S.TEXT_CHARS) >= set("aZ09$#.%!()\"'@?-&:,")


def test_random_text_survives_label_filter_and_varies():
    rng = random.Random(0)
    texts = [S.random_text(rng, ["alpha", "beta", "gamma"]) for _ in range(300)]
    assert all(texts) and all(" " not in t for t in texts)
    assert any(t.isupper() for t in texts) and any(t.islower() for t in texts)
    assert any(not t.isalnum() for t in texts) and any(t.isdigit() for t in texts)


def test_render_size_and_seed_determinism(fonts):
    images = [np.asarray(S.render_text("Hello", fonts[0], (32, 128), random.Random(1))[0]) for _ in range(2)]
    assert images[0].shape == (32, 128, 3) and np.array_equal(*images)
    assert np.asarray(S.render_text("Hi", fonts[0], (5, 20), random.Random(1))[0]).shape == (5, 20, 3)


@pytest.mark.parametrize("text", ["APPOINTEES", "CLOWNISH", "ROMANTICIZE"])
@pytest.mark.parametrize("end", [0, 1])
def test_strongest_tilt_keeps_every_glyph_inside_the_canvas(mpl_fonts, text, end):
    font_path = str(mpl_fonts / "DejaVuSans.ttf")
    canvas = np.asarray(S.glyph_canvas(text, font_path, _ExtremeRandom(end)), dtype=np.float64)
    assert not (canvas[0].any() or canvas[-1].any() or canvas[:, 0].any() or canvas[:, -1].any())
    font = S.load_font(font_path, 36)
    left, top, right, bottom = font.getbbox(text)
    upright = Image.new("L", (right - left + 40, bottom - top + 40))
    ImageDraw.Draw(upright).text((20 - left, 20 - top), text, font=font, fill=255)
    assert canvas.sum() > 0.98 * np.asarray(upright, dtype=np.float64).sum()  # the old right-side tilt kept ~0.77


def test_gate_redraws_from_the_same_stream_and_refuses_clearly(mpl_fonts, monkeypatch):
    display, good = str(mpl_fonts / "DejaVuSansDisplay.ttf"), str(mpl_fonts / "DejaVuSans.ttf")
    problems = []
    check = S.legibility_problem

    def recorded_check(image, canvas):
        problems.append(check(image, canvas))
        return problems[-1]

    monkeypatch.setattr(S, "legibility_problem", recorded_check)
    images = [S.render_legible("Hello", [display, good], (32, 128), S._sample_rng(0, "train", i)) for i in range(12)]
    assert "too little ink" in problems and problems.count(None) == 12
    assert all(hr_legibility(image) == (False, False) for image in images)
    again = [S.render_legible("Hello", [display, good], (32, 128), S._sample_rng(0, "train", i)) for i in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    with pytest.raises(RuntimeError, match=r"'Hello' at 32x128 still illegible after 8 attempts .*too little ink.*"
                                           r"DejaVuSansDisplay\.ttf"):
        S.render_legible("Hello", [display], (32, 128), random.Random(0))
    monkeypatch.setattr(S, "_contrasting_colors", lambda rng: ((90, 90, 90), (90, 90, 90)))
    with pytest.raises(RuntimeError, match=r"'Hello' .* \(last: blank, font .*DejaVuSans\.ttf\)"):
        S.render_legible("Hello", [good], (32, 128), random.Random(0))


def test_hundreds_of_generated_pairs_have_no_blank_or_low_contrast_hr(tmp_path):
    S.make_synthetic(tmp_path, train=300, test=0, seed=0, workers=0, chunk_size=300)  # all discovered fonts
    report = inspect_lmdb(tmp_path / "train")
    assert report["num_samples"] == 300 and report["blank_hr"] == 0 and report["low_contrast_hr"] == 0


def test_make_synthetic_layout_and_byte_identical(tmp_path, fonts, mpl_fonts):
    words = ["coffee", "street", "hotel", "exit", "open"]
    fonts = [*fonts, str(mpl_fonts / "DejaVuSansDisplay.ttf")]  # a blank font: the gate redraws, the digest holds
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
    assert str_report["hr_sizes"] == str_report["lr_sizes"] and str_report["blank_hr"] == 0
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

"""Synthetic TextZoom-like data: rendered words as HR, seeded degradations as LR; the suite's default data.

Every sample is a pure function of (seed, split, index): its text, font, colours and geometry come from a Python
`random.Random` seeded with those, and its degradation from `SampleRNG` with the same id. So the output does not
depend on the number of workers, and the same seed gives byte-identical LMDB files on a machine with the same fonts
and word list.

Every HR is legible by construction: fonts must map each character `random_text` can produce to its own glyph, the
margins absorb the tilt and perspective jitter, and a rendering that still fails the legibility gate (ink on the
canvas edge, too little ink, blank or low contrast) is drawn again from the sample's own stream.
"""

from __future__ import annotations

import importlib.util
import io
import math
import multiprocessing
import os
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from fontTools import agl
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from stisr_lightning.data.degradations import LEVELS, degrade_level
from stisr_lightning.data.str_benchmarks import lemma_degrade_arrays
from stisr_lightning.data.textzoom import hr_legibility, write_textzoom_lmdb

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
_FALLBACK_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out many "
    "then them these so some her would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come made may part over new sound "
    "take only little work know place year live me back give most very after thing our just name good sentence man "
    "think say great where help through much before line right too mean old any same tell boy follow came want show "
    "also around form three small set put end does another well large must big even such because turn here why ask "
    "went men read need land different home us move try kind hand picture again change off play spell air away animal "
    "house point page letter mother answer found study still learn should america world hotel coffee street open exit"
).split()
_NUMBER_PREFIXES = ("", "$", "#", "No.")
_NUMBER_SUFFIXES = ("", "", "%", ".00", "km")
_AFFIXES = (("", "!"), ("", "."), ("(", ")"), ('"', '"'), ("", "'s"), ("", ","), ("@", ""), ("", "?"), ("", "-"),
            ("&", ""), ("", ":"))
TEXT_CHARS = "".join(sorted(set(string.ascii_letters + string.digits + "".join(_NUMBER_PREFIXES + _NUMBER_SUFFIXES)
                                + "".join(prefix + suffix for prefix, suffix in _AFFIXES))))
"""Every character `random_text` can produce (dictionary words are ASCII letters)."""
SPLIT_IDS = {"train": 0, "easy": 1, "medium": 2, "hard": 3, "str_synth": 4}
"""Each split draws its samples from its own id range, so train and test never share a sample."""
RENDER_ATTEMPTS = 8
"""Renderings drawn per sample before `render_legible` gives up. With the fonts `discover_fonts` keeps, 20,000 train
and 20,000 str_synth samples all passed at the first; the retry guards fonts and words passed in by the caller."""
_MIN_INK = 0.03
"""Least mean glyph coverage of the canvas: below it the text is a speck (or the font drew nothing)."""


@lru_cache(maxsize=None)
def renders_text_chars(font_path: str) -> bool:
    """Whether the font's cmap maps every character of TEXT_CHARS, each letter and digit to the glyph named for it.

    Display, size-variant and non-Unicode fonts (matplotlib's DejaVu*Display, STIXSiz*, STIXNonUni*) lack Latin
    entries and would render blank; symbol, dingbat, TeX math and last-resort fonts map ASCII to other glyphs ('a'
    to 'alpha', 'a60', 'turnstileright', a box) and would render the wrong text. A file fontTools cannot read is
    unusable too."""
    try:
        cmap = TTFont(font_path, fontNumber=0, lazy=True).getBestCmap() or {}
    except Exception:  # noqa: BLE001 -- any parse failure (TTLibError, struct.error, ...) means the font is unusable
        return False
    if any(ord(char) not in cmap for char in TEXT_CHARS):
        return False
    return all(agl.toUnicode(cmap[ord(char)]) == char for char in TEXT_CHARS if char.isalnum())


def discover_fonts(extra_dirs: Sequence[str] = ()) -> list[str]:
    """TrueType/OpenType files from the standard font folders and matplotlib that render every character
    `random_text` can produce (`renders_text_chars`): one per file name (the first folder wins, so matplotlib's
    copies of DejaVu give way to the system's), ordered by file name. The order must not depend on where Python or
    the venv is installed, or the same seed would draw other fonts on another machine."""
    folders = [Path(d).expanduser() for d in (*FONT_DIRS, *extra_dirs)]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    fonts: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in (".ttf", ".otf") and path.name not in fonts and renders_text_chars(str(path)):
                fonts[path.name] = str(path)
    return [fonts[name] for name in sorted(fonts)]


def load_words(path: str = "/usr/share/dict/words") -> list[str]:
    """ASCII dictionary words of 2..14 letters (the system word list when present, else a built-in list)."""
    if Path(path).is_file():
        lines = Path(path).read_text(encoding="utf-8", errors="ignore").split()
        words = sorted({w for w in lines if w.isascii() and w.isalpha() and 2 <= len(w) <= 14})
        if words:
            return words
    return list(_FALLBACK_WORDS)


def random_text(rng: random.Random, words: Sequence[str]) -> str:
    """A TextZoom-like token: dictionary word (mixed case), alphanumeric string, number or word with punctuation."""
    kind = rng.random()
    if kind < 0.55:
        word = rng.choice(words)
        case = rng.random()
        return word.lower() if case < 0.45 else word.upper() if case < 0.7 else word.capitalize()
    if kind < 0.7:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(2, 10)))
    if kind < 0.82:
        number = str(rng.randint(0, 10 ** rng.randint(1, 6)))
        return rng.choice(_NUMBER_PREFIXES) + number + rng.choice(_NUMBER_SUFFIXES)
    word = rng.choice(words)
    word = word.capitalize() if rng.random() < 0.5 else word.lower()
    prefix, suffix = rng.choice(_AFFIXES)
    return prefix + word + suffix


@lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A font file at a size, cached: rendering opens the same few fonts thousands of times."""
    return ImageFont.truetype(path, size)


def _contrasting_colors(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(text, background) colours at least 90 luma levels apart; dark text on a light background 75% of the time."""
    if rng.random() < 0.75:
        background = tuple(rng.randint(130, 255) for _ in range(3))
        ceiling = int(0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]) - 90
        return tuple(rng.randint(0, ceiling) for _ in range(3)), background
    background = tuple(rng.randint(0, 125) for _ in range(3))
    floor = int(0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]) + 91
    return tuple(rng.randint(floor, 255) for _ in range(3)), background


def glyph_canvas(text: str, font_path: str, rng: random.Random) -> Image.Image:
    """Glyph coverage ('L', 255 = ink) of `text` at 36 px on its own canvas, after random margins, a slight tilt
    about the centre and perspective jitter of the corners. The margins are drawn on top of the largest shift the
    tilt and jitter can cause, so no glyph is pushed off the canvas."""
    font = load_font(font_path, 36)
    left, top, right, bottom = font.getbbox(text)
    shake = 0.04 * min(right - left, bottom - top)
    angle = math.radians(rng.uniform(-3.0, 3.0))
    margin_x = rng.randint(2, 10) + math.ceil(shake)
    tilt = math.tan(angle) * (right - left + 2 * margin_x)
    margin_y = rng.randint(2, 8) + math.ceil(shake + abs(tilt) / 2)
    canvas = Image.new("L", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), 0)
    ImageDraw.Draw(canvas).text((margin_x - left, margin_y - top), text, font=font, fill=255)
    w, h = canvas.size
    jitter = [rng.uniform(-shake, shake) for _ in range(8)]
    corners = (jitter[0], jitter[1] - tilt / 2,  # source quad: upper-left, lower-left, lower-right, upper-right
               jitter[2], h + jitter[3] - tilt / 2,
               w + jitter[4], h + jitter[5] + tilt / 2,
               w + jitter[6], jitter[7] + tilt / 2)
    return canvas.transform(canvas.size, Image.QUAD, corners, Image.BILINEAR, fillcolor=0)


def render_text(
    text: str, font_path: str, size: tuple[int, int], rng: random.Random
) -> tuple[Image.Image, Image.Image]:
    """(RGB image of `text` resized to (H, W), its glyph canvas before resizing): random margins, colours, slight
    rotation and perspective; the canvas is the text colour's alpha, which the legibility gate reads."""
    height, width = size
    text_color, background = _contrasting_colors(rng)
    canvas = glyph_canvas(text, font_path, rng)
    alpha = canvas.resize((width, height), Image.BICUBIC, reducing_gap=2.0)
    fill = Image.new("RGB", (width, height), text_color)
    return Image.composite(fill, Image.new("RGB", (width, height), background), alpha), canvas


def legibility_problem(image: np.ndarray, canvas: Image.Image) -> str | None:
    """Why a rendering is no usable HR (ink on the canvas edge, i.e. glyphs cut; too little ink; blank or low
    contrast by `hr_legibility`), or None."""
    ink = np.asarray(canvas)
    if ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any():
        return "glyphs cut by the canvas edge"
    if ink.mean() < _MIN_INK * 255:
        return "too little ink"
    is_blank, is_low_contrast = hr_legibility(image)
    return "blank" if is_blank else "low contrast" if is_low_contrast else None


def render_legible(text: str, fonts: Sequence[str], size: tuple[int, int], rng: random.Random) -> np.ndarray:
    """(H, W, 3) uint8 HR of `text` that passes `legibility_problem`. Each attempt draws font, colours and geometry
    from `rng`, so a retry continues the sample's own stream and the result stays a pure function of its seed."""
    for _ in range(RENDER_ATTEMPTS):
        font_path = rng.choice(fonts)
        image, canvas = render_text(text, font_path, size, rng)
        rgb = np.asarray(image)
        problem = legibility_problem(rgb, canvas)
        if problem is None:
            return rgb
    raise RuntimeError(f"render_legible: {text!r} at {size[0]}x{size[1]} still illegible after {RENDER_ATTEMPTS} "
                       f"attempts (last: {problem}, font {font_path})")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Chunk:
    split: str
    start: int
    count: int
    seed: int
    hr_size: tuple[int, int]
    scale: int
    levels: tuple[str, ...]
    """Level names the split mixes (one per sample, chosen by the sample's own random stream)."""


_WORKER_STATE: dict = {}


def _init_worker(fonts: list[str], words: list[str], single_thread: bool = True) -> None:
    if single_thread:
        torch.set_num_threads(1)
    _WORKER_STATE["fonts"], _WORKER_STATE["words"] = fonts, words


def _sample_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{split}/{index}")


def _str_size(rng: random.Random, text: str) -> tuple[int, int]:
    """Small STR-benchmark-like size: area <= 1024, both sides >= 8."""
    height = rng.randint(10, 24)
    width = min(max(8, int(height * rng.uniform(0.45, 0.75) * max(len(text), 2))), 1024 // height)
    return height, width


def _make_chunk(chunk: _Chunk) -> list[tuple[bytes, bytes, str]]:
    """Render, degrade and PNG-encode the samples [start, start+count) of a split."""
    fonts, words = _WORKER_STATE["fonts"], _WORKER_STATE["words"]
    indices = range(chunk.start, chunk.start + chunk.count)
    ids = torch.tensor([SPLIT_IDS[chunk.split] << 32 | i for i in indices], dtype=torch.int64)
    labels, images, levels = [], [], []
    for index in indices:
        rng = _sample_rng(chunk.seed, chunk.split, index)
        text = random_text(rng, words)
        size = _str_size(rng, text) if chunk.split == "str_synth" else chunk.hr_size
        labels.append(text)
        levels.append(rng.randrange(len(chunk.levels)))
        images.append(render_legible(text, fonts, size, rng))
    if chunk.split == "str_synth":
        lrs = lemma_degrade_arrays(images, chunk.seed, ids.tolist())
    else:
        hr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        lr = torch.empty(len(images), 3, hr.shape[2] // chunk.scale, hr.shape[3] // chunk.scale)
        level_index = torch.tensor(levels)
        for position, name in enumerate(chunk.levels):
            rows = (level_index == position).nonzero().squeeze(1)
            if rows.numel():
                lr[rows] = degrade_level(hr[rows], LEVELS[name], chunk.seed, ids[rows], chunk.scale)
        lrs = list(lr.mul(255).round().byte().permute(0, 2, 3, 1).numpy())
    return [(_png(hr), _png(lr), label) for hr, lr, label in zip(images, lrs, labels)]


def _chunks(split: str, total: int, chunk_size: int, **fields) -> list[_Chunk]:
    return [_Chunk(split, start, min(chunk_size, total - start), **fields) for start in range(0, total, chunk_size)]


def _generate(chunks: list[_Chunk], pool, total: int, desc: str) -> Iterator[tuple[bytes, bytes, str]]:
    results = pool.imap(_make_chunk, chunks) if pool is not None else map(_make_chunk, chunks)
    with tqdm(total=total, desc=desc, unit="pair", disable=None) as progress:
        for samples in results:
            progress.update(len(samples))
            yield from samples


def make_synthetic(
    out_dir: str | os.PathLike,
    train: int,
    test: int,
    seed: int = 0,
    workers: int = 0,
    hr_size: tuple[int, int] = (32, 128),
    scale: int = 2,
    str_test: int = 0,
    fonts: Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> dict[str, int]:
    """Write `out/train/` (levels mixed), `out/test/{easy,medium,hard}/` (test split evenly) and, with `str_test`,
    `out/str_synth/` (small images, LEMMA's STR degradation, LR at the HR size). Returns the count per LMDB."""
    fonts = list(fonts) if fonts is not None else discover_fonts()
    if not fonts:
        raise RuntimeError("make_synthetic: no TrueType/OpenType fonts found in " + ", ".join(FONT_DIRS))
    words = list(words) if words is not None else load_words()
    out = Path(out_dir)
    fields = {"seed": seed, "hr_size": tuple(hr_size), "scale": scale}
    jobs = {"train": _chunks("train", train, chunk_size, levels=tuple(LEVELS), **fields)}
    for position, level in enumerate(LEVELS):
        count = test // len(LEVELS) + (1 if position < test % len(LEVELS) else 0)
        jobs[f"test/{level}"] = _chunks(level, count, chunk_size, levels=(level,), **fields)
    if str_test:
        jobs["str_synth"] = _chunks("str_synth", str_test, chunk_size, levels=("easy",), **fields)
    counts = {}
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(fonts, words)) if workers > 0 else None
    if pool is None:
        _init_worker(fonts, words, single_thread=False)
    try:
        for name, chunks in jobs.items():
            total = sum(chunk.count for chunk in chunks)
            if total:
                counts[name] = write_textzoom_lmdb(out / name, _generate(chunks, pool, total, name))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return counts

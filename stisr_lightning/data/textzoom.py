"""TextZoom-format LMDB: reader, writer and inspector.

Layout (TextZoom readme, `lmdbDataset_real`): keys are 1-indexed byte strings, `num-samples` (ASCII int),
`label-%09d` (UTF-8), `image_hr-%09d` / `image_lr-%09d` (encoded images). STR benchmark LMDBs carry `image-%09d`
instead; they are read as HR and the LR is made by bicubic downscaling, as the official fallback dataset does.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pyspng
import torch
from PIL import Image
from torch.utils.data import Dataset

from stisr_lightning.data.charset import filter_text

NUM_SAMPLES_KEY = b"num-samples"
ON_CORRUPT = ("skip", "raise")
_UNIT_SCALE = (np.arange(256) / 255.0).astype(np.float32)  # uint8 -> [0, 1] exactly as `x / 255.0` rounds it
# PIL's 'L' conversion, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, as float32 weights over 2^16: every product and
# partial sum is a multiple of 2^-16 below 2^8, so the affine transform is exact and its floor is PIL's value.
_PIL_LUMA = np.array([[19595, 38470, 7471, 32768]], dtype=np.float32) / 65536
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_RGB8 = b"\x08\x02"  # IHDR bit depth 8, color type 2 (truecolor), at bytes 24-25 of every PNG
cv2.setNumThreads(1)  # one thread per DataLoader worker; OpenCV's own pool would oversubscribe the cores
BLANK_STD = 2.0
"""Grey-level standard deviation (of 255) below which an HR is blank: one flat colour, no glyph."""
LOW_CONTRAST_RANGE = 32.0
"""Grey levels (of 255) between the 2nd and 98th percentile below which a non-blank HR is low-contrast."""


class CorruptRecordError(OSError):
    """A record that cannot be used; `key` names it (e.g. 'image_lr-000000007')."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{reason}: key {key}")
        self.key = key
        self.reason = reason


def _key(kind: str, index: int) -> bytes:
    return b"%s-%09d" % (kind.encode(), index)


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Read-only environment with the official reader flags (no locking, so many workers can share a file)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: LMDB not found")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=126)


def read_num_samples(txn: lmdb.Transaction, path: str | os.PathLike) -> int:
    raw = txn.get(NUM_SAMPLES_KEY)
    if raw is None:
        raise ValueError(f"{path}: LMDB has no 'num-samples' key (not a TextZoom/STR LMDB)")
    try:
        return int(raw.decode("ascii"))
    except ValueError:
        raise ValueError(f"{path}: 'num-samples' is {raw[:32]!r}, expected an ASCII integer") from None


def decode_image(buffer: bytes | None) -> Image.Image:
    """Decode encoded bytes to RGB; raises OSError for missing or undecodable data."""
    if buffer is None:
        raise OSError("record missing")
    try:
        image = Image.open(io.BytesIO(buffer))
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports some broken files as SyntaxError
        raise OSError(f"undecodable image ({error})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(buffer: bytes | None) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 RGB array. 8-bit RGB PNGs (what TextZoom and the synthetic sets hold) take libspng,
    about 2x faster than OpenCV's libpng and 6x faster than PIL on 32x128 crops, and pixel-identical (PNG is lossless);
    anything else (JPEG, palette, gray, 16-bit, alpha) and anything libspng rejects goes through PIL as the official
    loaders do."""
    if buffer is not None and buffer[:8] == _PNG_SIGNATURE and buffer[24:26] == _IHDR_RGB8:
        try:
            return pyspng.load(buffer, "RGB")
        except RuntimeError:
            pass  # PIL decides whether the record is readable and names the problem
    return np.asarray(decode_image(buffer))


def resize_bicubic(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic to (H, W), as the official collate does; a no-op when the size already matches."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))


def pil_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 holding exactly PIL's `convert('L')` of an (H, W, 3) uint8 RGB array (OpenCV's own RGB2GRAY
    rounds differently)."""
    gray = cv2.transform(rgb.astype(np.float32), _PIL_LUMA)
    return np.floor(gray, out=gray)


def hr_legibility(rgb: np.ndarray) -> tuple[bool, bool]:
    """(is_blank, is_low_contrast) of an (H, W, 3) uint8 RGB image on PIL's grey scale (0..255).

    Blank: grey std < BLANK_STD. Low contrast: not blank, and the 2nd..98th percentile grey range (numpy's 'lower'
    percentiles) < LOW_CONTRAST_RANGE; percentiles, so that a few stray pixels neither make nor break it, while text
    covering 2% of the image still counts. The two are exclusive: their counts add up to the unusable images."""
    gray = pil_gray(rgb).ravel()
    if cv2.meanStdDev(gray)[1].item() < BLANK_STD:
        return True, False
    ranks = (int(0.02 * (gray.size - 1)), int(0.98 * (gray.size - 1)))
    low, high = np.partition(gray, ranks)[list(ranks)]
    return False, bool(high - low < LOW_CONTRAST_RANGE)


def image_to_tensor(image: Image.Image | np.ndarray, mask: bool) -> torch.Tensor:
    """(C,H,W) float in [0,1]; with `mask`, a 4th channel: 1 where the gray ('L') value <= the image's mean gray.

    OpenCV's table lookup, affine transform and threshold take half the time of the equivalent numpy expressions on
    32x128 crops (a DataLoader worker's main cost after PNG decoding), with identical values."""
    rgb = np.asarray(image, dtype=np.uint8)
    out = np.empty((4 if mask else 3, *rgb.shape[:2]), dtype=np.float32)
    out[:3] = cv2.LUT(rgb, _UNIT_SCALE).transpose(2, 0, 1)
    if mask:
        gray = pil_gray(rgb)
        # integer gray <= mean  <=>  gray <= floor(mean); the exact float64 mean as the official np.mean computes it
        threshold = math.floor(cv2.sumElems(gray)[0] / gray.size)
        cv2.threshold(gray, threshold, 1.0, cv2.THRESH_BINARY_INV, dst=out[3])
    return torch.from_numpy(out)


_OPEN_ENVS: dict[str, lmdb.Environment] = {}
_OPEN_ENVS_PID: list[int] = [os.getpid()]


def _process_env(path: str) -> lmdb.Environment:
    """One read-only environment per file and process (lmdb refuses to open a file twice in a process)."""
    if _OPEN_ENVS_PID[0] != os.getpid():  # forked: the inherited handles are read-only and lock-free, safe to close
        for env in _OPEN_ENVS.values():
            env.close()
        _OPEN_ENVS.clear()
        _OPEN_ENVS_PID[0] = os.getpid()
    key = os.path.realpath(path)
    if key not in _OPEN_ENVS:
        _OPEN_ENVS[key] = open_lmdb(path)
    return _OPEN_ENVS[key]


class TextPairDataset(Dataset):
    """What every source of (HR, LR, label) text-line pairs shares: its options, the item dict
    `{"hr", "lr", "label", "index"}` (both images resized with PIL bicubic, as the official collate does), and skipping
    an unreadable pair in favour of the next one with a warning naming it (`on_corrupt="skip"`) or raising
    (`"raise"`). Subclasses set `path` and `num_samples` and implement `_load(index) -> (hr, lr, filtered label)`,
    raising CorruptRecordError for a pair that cannot be read."""

    def __init__(
        self,
        path: str | os.PathLike,
        hr_size: tuple[int, int] = (32, 128),
        lr_size: tuple[int, int] = (16, 64),
        mask: bool = False,
        on_corrupt: str = "skip",
        max_label_length: int | None = None,
        lr_from_hr: bool = False,
        label_filter: str = "all",
    ) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={on_corrupt!r}, expected one of {ON_CORRUPT}")
        self.path = str(path)
        self.hr_size = tuple(hr_size)
        self.lr_size = tuple(lr_size)
        self.mask = mask
        self.on_corrupt = on_corrupt
        self.max_label_length = max_label_length
        self.lr_from_hr = lr_from_hr
        self.label_filter = label_filter
        filter_text("", label_filter)  # an unknown filter fails here, naming it, not at the first pair
        self.skipped_keys: set[str] = set()
        self.num_samples = 0

    def __len__(self) -> int:
        return self.num_samples

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        raise NotImplementedError

    def _checked_label(self, raw: str, key: str) -> str:
        label = filter_text(raw, self.label_filter)
        if self.max_label_length is not None and len(label) > self.max_label_length:
            raise CorruptRecordError(key, f"label longer than {self.max_label_length}")
        return label

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"{self.path}: index {index} out of range [0, {self.num_samples})")
        for offset in range(self.num_samples):
            current = (index + offset) % self.num_samples
            try:
                hr, lr, label = self._load(current)
                break
            except CorruptRecordError as error:
                if self.on_corrupt == "raise":
                    raise CorruptRecordError(error.key, f"{self.path}: {error.reason}") from None
                if error.key not in self.skipped_keys:
                    self.skipped_keys.add(error.key)
                    warnings.warn(f"{self.path}: skipping {error.key} ({error.reason})", stacklevel=2)
        else:
            raise RuntimeError(f"{self.path}: no readable pair in {self.num_samples} samples")
        return {
            "hr": image_to_tensor(resize_bicubic(hr, self.hr_size), self.mask),
            "lr": image_to_tensor(resize_bicubic(lr, self.lr_size), self.mask),
            "label": label,
            "index": current,
        }


class TextZoomLMDB(TextPairDataset):
    """One TextZoom (or STR) LMDB as a dataset of `{"hr", "lr", "label", "index"}` dicts.

    The environment is opened lazily in each process (DataLoader worker), so the dataset pickles cleanly. Sizes are
    (H, W); both images are resized with PIL bicubic as the official collate does. A record that cannot be decoded
    (or whose filtered label is longer than `max_label_length`) is skipped in favour of the next valid one, with a
    warning naming its key, unless `on_corrupt="raise"`.

    `lr_from_hr` ignores the LR record and makes LR by resizing the HR image to `lr_size`: the protocol of papers
    that down-sample clean images (TextSR's "4x down-sampled from the original images", its Table 1 input sizes).
    `label_filter` is the `filter_text` level applied to labels at load time ('all' for TextZoom, 'unicode' for data
    in other scripts: see `charset.TEXT_PROTOCOLS`).
    """

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path, **options)
        with _process_env(self.path).begin(write=False) as txn:
            self.num_samples = read_num_samples(txn, self.path)
            self.paired = txn.get(_key("image_hr", 1)) is not None or txn.get(_key("image", 1)) is None
        self._env: lmdb.Environment | None = None
        self._env_pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = None
        state["_env_pid"] = None
        return state

    def _txn(self) -> lmdb.Transaction:
        if self._env is None or self._env_pid != os.getpid():
            self._env = _process_env(self.path)
            self._env_pid = os.getpid()
        return self._env.begin(write=False, buffers=False)

    def _decode(self, txn: lmdb.Transaction, kind: str, number: int) -> np.ndarray:
        key = _key(kind, number)
        try:
            return decode_rgb(txn.get(key))
        except OSError as error:
            raise CorruptRecordError(key.decode(), str(error)) from None

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Decoded (hr, lr, filtered label) of 0-based `index`; raises CorruptRecordError naming the bad key."""
        number = index + 1
        label_key = _key("label", number)
        txn = self._txn()
        try:
            raw_label = txn.get(label_key)
            if raw_label is None:
                raise CorruptRecordError(label_key.decode(), "record missing")
            label = self._checked_label(raw_label.decode("utf-8", errors="replace"), label_key.decode())
            hr = self._decode(txn, "image_hr" if self.paired else "image", number)
            lr = self._decode(txn, "image_lr", number) if self.paired and not self.lr_from_hr else hr
        finally:
            txn.abort()
        return hr, lr, label


def encode_image(image: Image.Image | bytes, image_format: str = "PNG") -> bytes:
    if isinstance(image, bytes):
        return image
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _write_records(path: str | os.PathLike, records: Iterable[dict[str, bytes]], map_size: int, commit_every: int) -> int:
    """Write 1-indexed records (`{kind: bytes}` per sample) and `num-samples`; returns the count."""
    Path(path).mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=map_size, subdir=True)
    count = 0
    try:
        txn = env.begin(write=True)
        for count, record in enumerate(records, start=1):
            for kind, value in record.items():
                txn.put(_key(kind, count), value)
            if count % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(NUM_SAMPLES_KEY, str(count).encode("ascii"))
        txn.commit()
    finally:
        env.close()
    return count


def write_textzoom_lmdb(
    path: str | os.PathLike,
    samples: Iterable[tuple[Image.Image | bytes, Image.Image | bytes, str]],
    map_size: int = 1 << 36,
    commit_every: int = 1000,
    image_format: str = "PNG",
) -> int:
    """Write (HR, LR, label) pairs in TextZoom format (PIL images are PNG-encoded; bytes are stored as given)."""
    records = (
        {
            "label": label.encode("utf-8"),
            "image_hr": encode_image(hr, image_format),
            "image_lr": encode_image(lr, image_format),
        }
        for hr, lr, label in samples
    )
    return _write_records(path, records, map_size, commit_every)


def inspect_lmdb(path: str | os.PathLike) -> dict:
    """Counts, HR/LR size histograms ("HxW" -> count), label charset, unreadable records, and the number of blank and
    of low-contrast HR images (`hr_legibility`) of an LMDB."""
    hr_sizes: Counter[str] = Counter()
    lr_sizes: Counter[str] = Counter()
    blank = low_contrast = 0
    charset: set[str] = set()
    unreadable: list[str] = []
    with _process_env(str(path)).begin(write=False) as txn:
        num_samples = read_num_samples(txn, path)
        paired = txn.get(_key("image_hr", 1)) is not None or txn.get(_key("image", 1)) is None
        kinds = [("image_hr", hr_sizes), ("image_lr", lr_sizes)] if paired else [("image", hr_sizes)]
        for number in range(1, num_samples + 1):
            raw_label = txn.get(_key("label", number))
            if raw_label is None:
                unreadable.append(_key("label", number).decode())
            else:
                charset.update(raw_label.decode("utf-8", errors="replace"))
            for kind, sizes in kinds:
                try:
                    image = decode_rgb(txn.get(_key(kind, number)))
                except OSError:
                    unreadable.append(_key(kind, number).decode())
                    continue
                sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
                if kind != "image_lr":
                    is_blank, is_low_contrast = hr_legibility(image)
                    blank += is_blank
                    low_contrast += is_low_contrast
    return {
        "path": str(path),
        "format": "textzoom" if paired else "str",
        "num_samples": num_samples,
        "hr_sizes": dict(hr_sizes.most_common()),
        "lr_sizes": dict(lr_sizes.most_common()),
        "charset": "".join(sorted(charset)),
        "unreadable": unreadable,
        "blank_hr": blank,
        "low_contrast_hr": low_contrast,
    }

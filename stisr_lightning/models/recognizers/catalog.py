"""Readers that need no user files, by name, and the embedded default's stand-ins for the TextZoom protocol's columns.

The papers read TextZoom with the official ASTER, MORAN and CRNN checkpoints. Offline the suite has none of them, so
each column is read by a reader that ships inside a package or inside the suite, chosen (and, for the suite's own
readers, fine-tuned) so that it reads the synthetic default's bicubic images about as well as the paper's recognizer
reads TextZoom's (`stisr-data calibrate` prints both). Sweeps name the same mapping in their `vars`.

A torch reader also loads other weights of its architecture: `easyocr@runs/easyocr_columns/easyocr_step800.pth`.
"""

from __future__ import annotations

from collections.abc import Callable

from stisr_lightning.models.recognizers.base import Recognizer


def _ppocr(checkpoint: str | None) -> Recognizer:
    from stisr_lightning.models.recognizers.ppocr import PPOCRRecognizer
    return PPOCRRecognizer()


def _ppocr_torch(checkpoint: str | None) -> Recognizer:
    from stisr_lightning.models.recognizers.ppocr import PPOCRTorch
    return PPOCRTorch()


def _easyocr(calibrated_for: str | None = None) -> Callable[[str | None], Recognizer]:
    def build(checkpoint: str | None) -> Recognizer:
        from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN
        return EasyOCRCRNN(checkpoint=checkpoint, calibrated_for=None if checkpoint else calibrated_for)
    return build


def _tesseract(checkpoint: str | None) -> Recognizer:
    from stisr_lightning.models.recognizers.tesseract import TesseractRecognizer
    return TesseractRecognizer()


def _cdistnet(beam_width: int) -> Callable[[str | None], Recognizer]:
    def build(checkpoint: str | None) -> Recognizer:
        from stisr_lightning.models.recognizers.cdistnet import CDistNet
        return CDistNet(beam_width=beam_width)
    return build


READERS: dict[str, Callable[[str | None], Recognizer]] = {
    "ppocr": _ppocr,
    "ppocr-torch": _ppocr_torch,
    "easyocr": _easyocr(),
    "easyocr-moran": _easyocr("MORAN"),
    "easyocr-crnn": _easyocr("CRNN"),
    "tesseract": _tesseract,
    "cdistnet": _cdistnet(1),  # the EDSR + CDistNet pipeline's reader: greedy, and with the official beam
    "cdistnet-beam10": _cdistnet(10),
}
LOADS_WEIGHTS = ("easyocr", "easyocr-moran", "easyocr-crnn")

STAND_INS: dict[str, str] = {"ASTER": "ppocr", "MORAN": "easyocr-moran", "CRNN": "easyocr-crnn"}
"""Paper column -> reader name on the embedded default."""


def check_reader_spec(spec: str) -> str:
    """`NAME` or `NAME@WEIGHTS`; raises ValueError naming the unknown reader or the reader that takes no weights."""
    name, _, checkpoint = spec.partition("@")
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; known readers: {', '.join(READERS)}")
    if checkpoint and name not in LOADS_WEIGHTS:
        raise ValueError(f"reader {name!r} loads no weights file (only {', '.join(LOADS_WEIGHTS)} do)")
    return spec


def build_reader(spec: str) -> Recognizer:
    """A ready, evaluation-mode reader from `NAME` or `NAME@WEIGHTS` (see `check_reader_spec`)."""
    name, _, checkpoint = check_reader_spec(spec).partition("@")
    return READERS[name](checkpoint or None).eval()

"""Readers that need no user files, by name, and the embedded default's stand-ins for the TextZoom protocol's columns.

The papers read TextZoom with the official ASTER, MORAN and CRNN checkpoints. Offline the suite has none of them, so
each column is read by a reader that ships inside a package or inside the suite, chosen (and, for the suite's own
readers, fine-tuned) so that it reads the synthetic default's bicubic images about as well as the paper's recognizer
reads TextZoom's (`stisr-data calibrate` prints both). Sweeps name the same mapping in their `vars`.
"""

from __future__ import annotations

from collections.abc import Callable

from stisr_lightning.models.recognizers.base import Recognizer


def _ppocr() -> Recognizer:
    from stisr_lightning.models.recognizers.ppocr import PPOCRRecognizer
    return PPOCRRecognizer()


def _ppocr_torch() -> Recognizer:
    from stisr_lightning.models.recognizers.ppocr import PPOCRTorch
    return PPOCRTorch()


def _easyocr() -> Recognizer:
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN
    return EasyOCRCRNN()


def _easyocr_calibrated(column: str) -> Callable[[], Recognizer]:
    def build() -> Recognizer:
        from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN
        return EasyOCRCRNN(calibrated_for=column)
    return build


def _tesseract() -> Recognizer:
    from stisr_lightning.models.recognizers.tesseract import TesseractRecognizer
    return TesseractRecognizer()


def _cdistnet(beam_width: int) -> Callable[[], Recognizer]:
    def build() -> Recognizer:
        from stisr_lightning.models.recognizers.cdistnet import CDistNet
        return CDistNet(beam_width=beam_width)
    return build


READERS: dict[str, Callable[[], Recognizer]] = {
    "ppocr": _ppocr,
    "ppocr-torch": _ppocr_torch,
    "easyocr": _easyocr,
    "easyocr-moran": _easyocr_calibrated("MORAN"),
    "easyocr-crnn": _easyocr_calibrated("CRNN"),
    "tesseract": _tesseract,
    "cdistnet": _cdistnet(1),  # the EDSR + CDistNet pipeline's reader: greedy, and with the official beam
    "cdistnet-beam10": _cdistnet(10),
}

STAND_INS: dict[str, str] = {"ASTER": "ppocr", "MORAN": "easyocr-moran", "CRNN": "easyocr-crnn"}
"""Paper column -> reader name on the embedded default."""


def build_reader(name: str) -> Recognizer:
    """A ready, evaluation-mode reader by catalog name; unknown names fail with the list of known ones."""
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; known readers: {', '.join(READERS)}")
    return READERS[name]().eval()

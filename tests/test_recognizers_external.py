"""Package-shipped recognizers: PP-OCR (onnxruntime and torch), EasyOCR english_g2 CRNN, Tesseract."""

import copy
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from stisr_lightning.data.charset import filter_text
from stisr_lightning.models.recognizers.easyocr_crnn import (
    ENGLISH_G2_CHARSET,
    EasyOCRCRNN,
    english_g2_checkpoint,
)
from stisr_lightning.models.recognizers.ppocr import (
    PPOCRRecognizer,
    PPOCRTorch,
    ppocr_model_path,
    ppocr_preprocess,
    ppocr_torch_graph,
)
from stisr_lightning.models.recognizers.tesseract import TesseractRecognizer, tesseract_input

WORDS = ["hello", "WORLD", "2024", "text"]
FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",
]


def render_words(words: list[str], height: int = 32, width: int = 128) -> torch.Tensor:
    """Black DejaVu text on white, cropped with a margin of 0.3 text heights and stretched to height x width."""
    for candidate in FONT_CANDIDATES:
        try:
            font = ImageFont.truetype(candidate, 48)
            break
        except OSError:
            continue
    else:
        pytest.skip("DejaVuSans.ttf not available")
    images = []
    for word in words:
        left, top, right, bottom = font.getbbox(word)
        margin = int(0.3 * (bottom - top))
        canvas = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), "white")
        ImageDraw.Draw(canvas).text((margin - left, margin - top), word, fill="black", font=font)
        canvas = canvas.resize((width, height), Image.BICUBIC)
        images.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def correct_reads(predictions: list[str], words: list[str]) -> int:
    return sum(filter_text(p, "lower") == filter_text(w, "lower") for p, w in zip(predictions, words))


@pytest.fixture(scope="module")
def words() -> torch.Tensor:
    return render_words(WORDS)


@pytest.fixture(scope="module")
def ppocr_torch() -> PPOCRTorch:
    return PPOCRTorch()


@pytest.fixture(scope="module")
def easyocr() -> EasyOCRCRNN:
    return EasyOCRCRNN()


def one_hot_path(path: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.full((1, len(path), num_classes), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    return logits


# --- PP-OCR -------------------------------------------------------------------------------------------------------


def test_ppocr_model_ships_in_rapidocr_package():
    path = ppocr_model_path()
    assert path.is_file() and path.suffix == ".onnx" and "rec" in path.name and "rapidocr" in path.parts


def test_ppocr_preprocess_resizes_to_height_48_bgr_and_pads_with_zeros():
    red = torch.zeros(2, 3, 32, 128)
    red[:, 0] = 1.0
    x = ppocr_preprocess(red)
    assert x.shape == (2, 3, 48, 192)
    assert torch.allclose(x[:, 2], torch.ones(1)) and torch.allclose(x[:, 0], -torch.ones(1))  # BGR, (x-0.5)/0.5
    padded = ppocr_preprocess(red, min_width=320)
    assert padded.shape == (2, 3, 48, 320)
    assert torch.equal(padded[..., :192], x) and padded[..., 192:].abs().max() == 0


def test_ppocr_onnxruntime_reads_all_rendered_words(words):
    recognizer = PPOCRRecognizer(intra_op_num_threads=1, batch_size=3)
    assert recognizer.name == "ppocr" and not recognizer.differentiable
    assert len(recognizer.charset) == 18709 and recognizer.charset[-1] == " "
    assert correct_reads(recognizer.read(words), WORDS) == len(WORDS)


def test_ppocr_session_options_keep_plain_onnxruntime_scores(words):
    recognizer = PPOCRRecognizer(intra_op_num_threads=2, batch_size=2)
    plain = onnxruntime.InferenceSession(str(ppocr_model_path()), providers=["CPUExecutionProvider"])
    expected = torch.cat([torch.from_numpy(plain.run(None, {"x": ppocr_preprocess(batch).numpy()})[0])
                          for batch in words.split(2)])
    assert torch.equal(recognizer.probabilities(words), expected)
    assert recognizer.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ppocr_recognizer_survives_pickling_without_its_session(words):
    recognizer = PPOCRRecognizer(intra_op_num_threads=1)
    recognizer.read(words[:1])
    clone = pickle.loads(pickle.dumps(recognizer))
    assert clone._session is None and copy.deepcopy(recognizer)._session is None
    assert clone.read(words[:1]) == recognizer.read(words[:1])


def test_ppocr_torch_graph_has_explicit_pads_and_pre_softmax_outputs():
    shipped = onnx.load(str(ppocr_model_path()))
    graph = ppocr_torch_graph(ppocr_model_path())
    same_upper = {
        node.name
        for node in shipped.graph.node
        if any(a.name == "auto_pad" and a.s == b"SAME_UPPER" for a in node.attribute)
    }
    assert len(same_upper) == 3
    assert not any(a.name == "auto_pad" for n in graph.graph.node for a in n.attribute)
    for node in graph.graph.node:
        if node.name in same_upper:  # 2x2 kernels, stride 1: SAME_UPPER pads one pixel at the bottom and right
            assert [list(a.ints) for a in node.attribute if a.name == "pads"] == [[0, 0, 1, 1]]
    softmax_count = [n.op_type for n in shipped.graph.node].count("Softmax")
    assert [n.op_type for n in graph.graph.node].count("Softmax") == softmax_count - 1
    assert len(graph.graph.output) == 2


def test_ppocr_torch_matches_onnxruntime(ppocr_torch, words):
    x = ppocr_preprocess(words).numpy()
    with torch.no_grad():
        output = ppocr_torch(words)
    # Logits (pre-softmax) against onnxruntime on the same rewritten graph, probabilities against the shipped graph.
    rewritten = onnxruntime.InferenceSession(ppocr_torch_graph(ppocr_model_path()).SerializeToString())
    ort_logits, ort_neck = rewritten.run(None, {"x": x})
    assert output.logits.shape == ort_logits.shape == (4, 24, 18710)
    # float32 reassociation: measured max |diff| 3.4e-4 on logits up to 35 (1e-5 relative), 1.6e-5 on features
    np.testing.assert_allclose(output.logits.numpy(), ort_logits, rtol=0, atol=5e-5 * np.abs(ort_logits).max())
    np.testing.assert_allclose(output.features.numpy(), ort_neck.mean(1), rtol=0, atol=1e-4)
    shipped = PPOCRRecognizer(intra_op_num_threads=1).probabilities(words)
    np.testing.assert_allclose(output.logits.softmax(-1).numpy(), shipped.numpy(), rtol=0, atol=1e-5)
    assert output.features.shape == (4, 120)
    assert correct_reads(ppocr_torch.decode(output.logits), WORDS) == len(WORDS)


def test_ppocr_torch_passes_gradients_to_the_input(ppocr_torch, words):
    images = words[:1].clone().requires_grad_(True)
    log_probs = ppocr_torch(images).logits.log_softmax(-1)
    log_probs[..., 0].sum().backward()  # push towards blank everywhere: a loss that depends on every pixel
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_ppocr_ctc_decode_of_hand_made_logits(ppocr_torch):
    charset = ppocr_torch.charset
    h, e, o = (charset.index(c) + 1 for c in "heo")
    space = len(charset)  # PP-OCR appends the space as its last class
    path = [0, h, h, 0, e, e, 0, 0, space, o, 0, o]
    assert ppocr_torch.decode(one_hot_path(path, len(charset) + 1)) == ["he oo"]


# --- EasyOCR --------------------------------------------------------------------------------------------------------


def test_easyocr_checkpoint_loads_strictly(easyocr):
    state_dict = torch.load(english_g2_checkpoint(), map_location="cpu", weights_only=True)
    assert all(key.startswith("module.") for key in state_dict)
    assert {key.removeprefix("module.") for key in state_dict} == set(easyocr.state_dict())
    for key, value in easyocr.state_dict().items():
        assert torch.equal(value, state_dict[f"module.{key}"]), key
    assert easyocr.Prediction.out_features == 97 == len(ENGLISH_G2_CHARSET) + 1


def test_easyocr_rejects_a_checkpoint_with_other_keys(tmp_path: Path):
    state_dict = EasyOCRCRNN(pretrained=False).state_dict()
    state_dict["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"bad\.pth.*unexpected 1"):
        EasyOCRCRNN(checkpoint=path)


def test_easyocr_charset_is_english_g2_order():
    assert ENGLISH_G2_CHARSET[:10] == "0123456789"
    assert ENGLISH_G2_CHARSET[10:44] == "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €"
    assert ENGLISH_G2_CHARSET[44:] == "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_easyocr_preprocess_gray_height_64_and_replicate_padding(easyocr):
    images = torch.rand(2, 3, 32, 100)
    x = easyocr.preprocess(images)
    assert x.shape == (2, 1, 64, 256)  # resized to 200, padded to ceil(100/32) * 64
    assert torch.equal(x[..., 200:], x[..., 199:200].expand(-1, -1, -1, 56))
    white = easyocr.preprocess(torch.ones(1, 3, 32, 128))
    assert white.shape == (1, 1, 64, 256) and torch.allclose(white, torch.ones(1))


def test_easyocr_reads_rendered_words(easyocr, words):
    output = easyocr(words)
    assert output.logits.shape == (4, 63, 97) and output.features.shape == (4, 256)
    assert easyocr.name == "easyocr" and easyocr.differentiable
    assert correct_reads(easyocr.decode(output.logits), WORDS) >= 3  # measured 4/4


def test_easyocr_passes_gradients_to_the_input(easyocr, words):
    images = words[:1].clone().requires_grad_(True)
    easyocr(images).logits.log_softmax(-1)[..., 0].sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_easyocr_ctc_decode_of_hand_made_logits(easyocr):
    path = [0, 2, 2, 0, 2, 43, 44, 0, 45, 96, 96]  # "1", "1", space, euro, "A", "z"
    assert easyocr.decode(one_hot_path(path, 97)) == ["11 €Az"]


# --- Tesseract ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Debian tesseract-ocr not installed")
def test_tesseract_reads_all_rendered_words(words):
    recognizer = TesseractRecognizer()
    assert recognizer.name == "tesseract" and not recognizer.differentiable
    assert correct_reads(recognizer.read(words), WORDS) == len(WORDS)


def test_tesseract_upscales_small_images_and_adds_background_border():
    image = torch.zeros(3, 16, 64)
    image[:, 4:12, 8:56] = 1.0  # white text block on black background
    pil = tesseract_input(image, min_height=64, border=8)
    assert pil.size == (256 + 16, 64 + 16)
    array = np.asarray(pil)
    assert array[:8].max() == 0 and array[:, :8].max() == 0  # border takes the (black) background colour


def test_tesseract_missing_binary_is_a_one_line_error(monkeypatch, tmp_path: Path):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    with pytest.raises(RuntimeError, match="apt-get install tesseract-ocr tesseract-ocr-eng"):
        TesseractRecognizer()

"""PP-OCR text recognizer shipped inside the `rapidocr` wheel: the suite's offline default evaluator.

The ONNX file (PP-OCRv6 small: HGNet-style backbone, SVTR neck, CTC head) is located through the installed package,
never downloaded. Two front ends share one preprocessing:
- `PPOCRRecognizer` runs onnxruntime (fast, read-only), for evaluation.
- `PPOCRTorch` converts the same graph to torch with onnx2torch (differentiable), for losses and text-feature FID.

PP-OCR reads BGR images resized to height 48 at their aspect ratio, normalized with (x/255 - 0.5)/0.5, and zero-padded
on the right to a common batch width. Its CTC dictionary is stored in the ONNX metadata (`character`, one entry per
line); the decoder puts blank at class 0 and appends a space as the last class.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F
from onnx import helper
from onnx2torch import convert
from torch import Tensor

from stisr_lightning.models.recognizers.base import RecognitionOutput, Recognizer, TorchRecognizer, ctc_greedy_decode

PPOCR_HEIGHT = 48


def ppocr_model_path() -> Path:
    """The recognition ONNX that the installed rapidocr wheel ships (site-packages/rapidocr/models/*rec*.onnx)."""
    try:
        import rapidocr
    except ImportError as error:
        raise ImportError("PP-OCR recognizer needs the 'rapidocr' package (pip install rapidocr)") from error
    models_dir = Path(rapidocr.__file__).parent / "models"
    candidates = sorted(models_dir.glob("*rec*.onnx"))
    if not candidates:
        raise FileNotFoundError(f"{models_dir}: no '*rec*.onnx' recognizer shipped in the installed rapidocr package")
    return candidates[-1]


@cache
def _load_onnx(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def ppocr_charset(model: onnx.ModelProto) -> str:
    """Class k >= 1 is charset[k-1]: the metadata dictionary followed by the space that PP-OCR appends."""
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "character" not in metadata:
        raise ValueError(f"PP-OCR ONNX: no 'character' metadata entry (found {sorted(metadata)})")
    entries = metadata["character"].splitlines()
    if any(len(entry) != 1 for entry in entries):
        raise ValueError("PP-OCR ONNX: 'character' metadata has entries that are not single characters")
    return "".join(entries) + " "


def ppocr_preprocess(images: Tensor, min_width: int = 0) -> Tensor:
    """RGB [0, 1] (N, 3, H, W) -> BGR in [-1, 1] at height 48, aspect kept, zero-padded right to >= min_width."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"PP-OCR: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    resized_width = max(1, math.ceil(PPOCR_HEIGHT * width / height))
    x = F.interpolate(images, size=(PPOCR_HEIGHT, resized_width), mode="bilinear", align_corners=False)
    x = (x.flip(1) - 0.5) / 0.5
    return F.pad(x, (0, max(0, min_width - resized_width)))


class PPOCRRecognizer(Recognizer):
    """PP-OCR through onnxruntime, batched; evaluation only.

    Compute-bound: 1.31 GFLOP per 48x192 crop (91% in convolutions, already NCHWc-blocked and fused by onnxruntime's
    default ORT_ENABLE_ALL), which runs at ~30 GFLOP/s per AVX2 core, about half the fp32 peak.

    `min_width=320` reproduces rapidocr's padding of every line to at least 48x320; the default 0 keeps the resized
    width (192 for 32x128 crops), which reads the same short words about 1.5x faster.
    """

    name = "ppocr"

    def __init__(
        self,
        model_path: str | Path | None = None,
        intra_op_num_threads: int = 2,
        batch_size: int = 64,
        min_width: int = 0,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path) if model_path is not None else ppocr_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: PP-OCR ONNX file not found")
        self.intra_op_num_threads = intra_op_num_threads
        self.batch_size = batch_size
        self.min_width = min_width
        self.charset = ppocr_charset(_load_onnx(self.model_path))
        self._session = None

    @property
    def session(self):
        # Created on first use and dropped when pickled: sessions cannot cross process boundaries (DDP spawn, workers).
        if self._session is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.intra_op_num_threads
            # Idle pool threads sleep instead of spinning between the graph's ~200 nodes: same results and wall time
            # per batch, 7% less CPU per image on a loaded 2-core machine (where training/data workers run alongside).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}

    def probabilities(self, images: Tensor) -> Tensor:
        """(N, T, C) softmax scores of the ONNX graph, batch by batch."""
        session = self.session
        input_name = session.get_inputs()[0].name
        chunks = []
        for batch in images.detach().float().cpu().split(self.batch_size):
            x = ppocr_preprocess(batch, self.min_width).numpy()
            chunks.append(torch.from_numpy(session.run(None, {input_name: np.ascontiguousarray(x)})[0]))
        return torch.cat(chunks)

    @torch.no_grad()
    def read(self, images: Tensor) -> list[str]:
        return ctc_greedy_decode(self.probabilities(images), self.charset)


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The node that writes `tensor`, looking through Identity nodes."""
    producers = {output: node for node in model.graph.node for output in node.output}
    node = producers[tensor]
    while node.op_type == "Identity":
        node = producers[node.input[0]]
    return node


def _explicit_same_upper_pads(model: onnx.ModelProto) -> None:
    """Rewrite auto_pad=SAME_UPPER (stride 1) as explicit pads, which onnx2torch converts."""
    for node in model.graph.node:
        attributes = {attribute.name: attribute for attribute in node.attribute}
        if "auto_pad" not in attributes or attributes["auto_pad"].s != b"SAME_UPPER":
            continue
        strides = list(attributes["strides"].ints) if "strides" in attributes else []
        if any(stride != 1 for stride in strides):
            raise ValueError(f"PP-OCR ONNX: node {node.name} uses SAME_UPPER with strides {strides}, expected 1")
        kernel = list(attributes["kernel_shape"].ints)
        begin = [(k - 1) // 2 for k in kernel]
        end = [k - 1 - b for k, b in zip(kernel, begin)]  # SAME_UPPER puts the odd pixel at the end
        node.attribute.remove(attributes["auto_pad"])
        node.attribute.append(helper.make_attribute("pads", begin + end))


def ppocr_torch_graph(model_path: Path) -> onnx.ModelProto:
    """A copy of the ONNX graph that onnx2torch accepts, with outputs (logits before softmax, neck sequence)."""
    model = onnx.ModelProto()
    model.CopyFrom(_load_onnx(model_path))
    _explicit_same_upper_pads(model)
    softmax = _producer(model, model.graph.output[0].name)
    if softmax.op_type != "Softmax":
        raise ValueError(f"{model_path}: expected the graph to end in Softmax, found {softmax.op_type}")
    logits_name = softmax.input[0]
    bias_add = _producer(model, logits_name)
    head_matmul = _producer(model, bias_add.input[0])
    if bias_add.op_type != "Add" or head_matmul.op_type != "MatMul":
        found = f"{head_matmul.op_type} + {bias_add.op_type}"
        raise ValueError(f"{model_path}: expected the CTC head MatMul + Add before the Softmax, found {found}")
    neck_name = head_matmul.input[0]
    model.graph.node.remove(softmax)
    del model.graph.output[:]
    model.graph.output.extend(
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in (logits_name, neck_name)]
    )
    return model


class PPOCRTorch(TorchRecognizer):
    """The PP-OCR graph as a differentiable torch module (onnx2torch); matches onnxruntime to ~1e-5 (relative).

    `features` are the SVTR neck outputs averaged over time (N, 120).
    """

    ships_weights = True
    name = "ppocr"

    def __init__(self, model_path: str | Path | None = None, min_width: int = 0) -> None:
        super().__init__()
        model_path = Path(model_path) if model_path is not None else ppocr_model_path()
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: PP-OCR ONNX file not found")
        graph = ppocr_torch_graph(model_path)
        self.charset = ppocr_charset(graph)
        self.min_width = min_width
        self.network = convert(graph)
        self.eval()

    def preprocess(self, images: Tensor) -> Tensor:
        return ppocr_preprocess(images, self.min_width)

    def forward(self, images: Tensor) -> RecognitionOutput:
        logits, neck = self.network(self.preprocess(images))
        return RecognitionOutput(logits=logits, features=neck.mean(1))

    def decode(self, logits: Tensor) -> list[str]:
        return ctc_greedy_decode(logits, self.charset)

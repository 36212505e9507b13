"""Token readings with confidences for text-conditioned generators: best-path CTC packed into fixed-size tensors."""

import pytest
import torch

from stisr_lightning.models.recognizers.base import ctc_greedy_decode, ctc_greedy_tokens


def frames(classes: list[list[int]], probability: float = 0.7, num_classes: int = 5) -> torch.Tensor:
    """Logits whose softmax puts `probability` on the given class of each frame, the rest spread evenly."""
    rest = (1 - probability) / (num_classes - 1)
    probs = torch.full((len(classes), len(classes[0]), num_classes), rest)
    probs.scatter_(2, torch.tensor(classes)[..., None], probability)
    return probs.log()


def test_ctc_tokens_collapse_repeats_drop_blanks_and_pack_left():
    logits = frames([[0, 2, 2, 0, 2, 3, 3, 0], [0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 1, 2, 3, 4]])
    ids, confidence = ctc_greedy_tokens(logits, max_length=6)
    assert ids.tolist() == [[2, 2, 3, 0, 0, 0], [0] * 6, [1, 2, 3, 4, 1, 2]]  # the third row is cut at 6
    assert torch.allclose(confidence, torch.tensor([[0.7] * 3 + [0.0] * 3, [0.0] * 6, [0.7] * 6]))
    assert ["".join("abcd"[k - 1] for k in row if k) for row in ids.tolist()][:2] == ctc_greedy_decode(logits, "abcd")[:2]


def test_ctc_token_confidence_is_the_softmax_of_the_emitting_frame():
    logits = torch.tensor([[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    ids, confidence = ctc_greedy_tokens(logits, max_length=3)
    assert ids.tolist() == [[1, 2, 0]]
    expected = [torch.softmax(logits[0, 0], 0)[1].item(), torch.softmax(logits[0, 2], 0)[2].item(), 0.0]
    assert confidence[0].tolist() == pytest.approx(expected)

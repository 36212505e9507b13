"""Label filtering of the TextZoom protocol, shared by data loading, recognizers and metrics.

The STISR repositories filter labels twice: `str_filt(label, 'all')` at load time (digits, letters, punctuation;
spaces and anything else removed) and `str_filt(text, 'lower')` at comparison (lower-cased, only 0-9a-z kept).
That protocol erases every non-Latin character, so two different Chinese strings would both compare as '' and
match: data sets in other scripts use the 'unicode' protocol (`TEXT_PROTOCOLS`).
"""

import string
import unicodedata

import torch
from torch import Tensor

DIGITS_LOWER = string.digits + string.ascii_lowercase
"""The 36 characters of the evaluation protocol, in the order the official 37-class recognizers use."""
PRINTABLE = string.digits + string.ascii_letters + string.punctuation
"""The 94 characters `str_filt(..., 'all')` keeps, in ASTER's voc_type 'all' order."""

_KEEP = {
    "lower": frozenset(DIGITS_LOWER),
    "all": frozenset(PRINTABLE),
}


TEXT_PROTOCOLS = {"textzoom": ("all", "lower"), "unicode": ("unicode", "unicode")}
"""Protocol -> (filter applied to labels at load time, filter applied to readings and labels before comparing)."""


def filter_text(text: str, level: str = "lower") -> str:
    """TextZoom's `str_filt`: 'lower' lower-cases and keeps [0-9a-z]; 'all' keeps digits, letters, punctuation.
    'unicode' keeps every character of every script: NFKC (full-width forms fold to their half-width ones, as the
    Chinese text-recognition benchmark's evaluation does), case-folded, whitespace and control characters removed."""
    if level == "unicode":
        folded = unicodedata.normalize("NFKC", text).casefold()
        return "".join(ch for ch in folded if not ch.isspace() and unicodedata.category(ch)[0] != "C")
    if level not in _KEEP:
        raise ValueError(f"filter_text: unknown level {level!r}, expected one of {sorted([*_KEEP, 'unicode'])}")
    if level == "lower":
        text = text.lower()
    keep = _KEEP[level]
    return "".join(ch for ch in text if ch in keep)


CHARSET_36 = "abcdefghijklmnopqrstuvwxyz1234567890"
"""ABINet's `charset_36.txt` in class order; class 0 is the null token (padding and end of text)."""
_CHARSET_36_IDS = {ch: i + 1 for i, ch in enumerate(CHARSET_36)}


def abinet_label_ids(labels: list[str], max_length: int = 25) -> Tensor:
    """(N, max_length + 1) class ids of the lower-cased labels, null-padded, as ABINet's `CharsetMapper.get_labels`.

    Characters outside a-z0-9 become null (id 0) in place, as in LEMMA; labels longer than `max_length` are cut so
    the last step is always null.
    """
    rows = [[_CHARSET_36_IDS.get(ch, 0) for ch in label.lower()[:max_length]] for label in labels]
    padded = [row + [0] * (max_length + 1 - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long).view(-1, max_length + 1)

"""Label filtering of the TextZoom protocol, shared by data loading, recognizers and metrics.

The STISR repositories filter labels twice: `str_filt(label, 'all')` at load time (digits, letters, punctuation;
spaces and anything else removed) and `str_filt(text, 'lower')` at comparison (lower-cased, only 0-9a-z kept).
"""

import string

DIGITS_LOWER = string.digits + string.ascii_lowercase
"""The 36 characters of the evaluation protocol, in the order the official 37-class recognizers use."""
PRINTABLE = string.digits + string.ascii_letters + string.punctuation
"""The 94 characters `str_filt(..., 'all')` keeps, in ASTER's voc_type 'all' order."""

_KEEP = {
    "lower": frozenset(DIGITS_LOWER),
    "all": frozenset(PRINTABLE),
}


def filter_text(text: str, level: str = "lower") -> str:
    """TextZoom's `str_filt`: 'lower' lower-cases and keeps [0-9a-z]; 'all' keeps digits, letters, punctuation."""
    if level not in _KEEP:
        raise ValueError(f"filter_text: unknown level {level!r}, expected one of {sorted(_KEEP)}")
    if level == "lower":
        text = text.lower()
    keep = _KEEP[level]
    return "".join(ch for ch in text if ch in keep)

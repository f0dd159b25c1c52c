"""A light English stemmer, shared by the example agents' search and the simulated model."""

from __future__ import annotations

import re


def stem(word: str) -> str:
    """Strip common English suffixes so "refunds", "refunded" and "refund" share one stem.

    Deliberately light (plural, -ing, -ed, -ation, -ment, -ery, final e, double consonant): a
    full Porter stemmer buys little on short support messages and is easy to get subtly wrong.
    """
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix):
            base = word[: -len(suffix)]
            if len(base) >= 3 and _VOWEL.search(base):
                word = base + replacement
            break
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeiousy":
        word = word[:-1]
    if len(word) >= 4 and word.endswith("e"):
        word = word[:-1]
    return word


_SUFFIXES = (("ation", ""), ("ment", ""), ("ing", ""), ("ied", "y"), ("ery", "er"), ("ed", ""))
_VOWEL = re.compile(r"[aeiouy]")

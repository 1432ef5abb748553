"""Split documents into chunks of at most `size` tokens that overlap by up to `overlap` tokens.

Chunks are cut at the largest natural boundary that fits: whole paragraphs are packed together when
they fit, a paragraph too long for one chunk is packed sentence by sentence, and a sentence too long is
cut at a space (or anywhere, as a last resort). A chunk is always a verbatim span of the document, so a
retrieved passage reads like the original. Overlap repeats the last whole units (sentences, mostly) of
a chunk at the start of the next one, so a fact cut off at a boundary is still whole in one chunk.
Token counts are exact: every chunk is measured with `tokenize`, the tokenizer that will read it (the
embedder's, whose input length is limited, or the chat model's, whose context is).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pocketchat.errors import UserError

Tokenize = Callable[[str], list]
_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*\Z)", re.S)
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+[\"')\]]*(?=\s)|\n|\Z)", re.S)


def chunk_text(text: str, tokenize: Tokenize, size: int, overlap: int = 0) -> list[str]:
    """The chunks of `text` (see the module docstring); an empty list for blank text."""
    if size < 1 or not 0 <= overlap < size:
        raise UserError(f"chunking needs size >= 1 and 0 <= overlap < size, got size {size}, overlap {overlap}")
    count = lambda start, end: len(tokenize(text[start:end]))
    units = [u for m in _PARAGRAPH.finditer(text) for u in _units(text, m.start(), m.end(), size, count)]
    chunks, first = [], 0
    while first < len(units):
        last = first  # grow the chunk unit by unit while it fits
        while last + 1 < len(units) and count(units[first][0], units[last + 1][1]) <= size:
            last += 1
        chunks.append(text[units[first][0]:units[last][1]])
        if last + 1 == len(units):
            break
        # The next chunk starts with as many trailing units as fit in `overlap`, and still gets a new unit.
        nxt = last + 1
        while (nxt - 1 > first and count(units[nxt - 1][0], units[last][1]) <= overlap
               and count(units[nxt - 1][0], units[last + 1][1]) <= size):
            nxt -= 1
        first = nxt
    return chunks


def _units(text: str, start: int, end: int, size: int, count) -> list[tuple[int, int]]:
    """Spans covering text[start:end] that each fit in `size` tokens: the whole paragraph if it fits, else
    its sentences, each cut further if it alone is too long."""
    if count(start, end) <= size:
        return [(start, end)]
    out = []
    for m in _SENTENCE.finditer(text, start, end):
        s, e = m.start(), m.end()
        while e > s and text[e - 1].isspace():
            e -= 1
        while count(s, e) > size:
            cut = _longest_prefix(s, e, size, count)
            space = text.rfind(" ", s + 1, cut + 1)
            cut = space if space > s else cut
            out.append((s, cut))
            s = cut
            while s < e and text[s].isspace():
                s += 1
        if e > s:
            out.append((s, e))
    return out


def _longest_prefix(start: int, end: int, size: int, count) -> int:
    """The largest cut in (start, end) with text[start:cut] within `size` tokens (at least one character)."""
    lo, hi = start + 1, end - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(start, mid) <= size:
            lo = mid
        else:
            hi = mid - 1
    return lo

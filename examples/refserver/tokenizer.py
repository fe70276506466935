"""Byte-level tokenizer for the reference LLM server.

Token ids 0..255 are the UTF-8 bytes of the text; id 256 is end-of-sequence. Generated
tokens arrive one byte at a time, so streaming output goes through `StreamDecoder`, which
holds back the bytes of a multi-byte character until the character is complete.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

EOS_ID = 256
VOCAB_SIZE = 257


def encode(text: str) -> list[int]:
    """Return the token ids of `text`: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Return the text of `ids`, skipping EOS; invalid UTF-8 becomes U+FFFD."""
    return bytes(i for i in ids if i != EOS_ID).decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental decoder: feed token ids one at a time, get the text they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int, final: bool = False) -> str:
        """Decode one token; with `final`, flush any incomplete character as U+FFFD."""
        data = b"" if token_id == EOS_ID else bytes((token_id,))
        return self._decoder.decode(data, final=final)

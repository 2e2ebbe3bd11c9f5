"""A text as one token stream, with the UTF-8 bytes each token stands for (for bits per byte).

Tokenising a split of wikitext-103 takes minutes, so streams are cached on disk and in the process:
a sweep over attention configs tokenises once.
"""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

# Texts are tokenised in pieces of about this many characters: the tokenizer's memory stays bounded
# and the bar moves. Pieces are cut where a line's last visible character meets its trailing whitespace,
# a boundary the GPT-2 / Llama-3 pre-tokenizer regexes draw anyway, so the ids almost always match
# tokenising the whole text in one call (a tokenizer that prepends a space to its input may differ by
# a token per cut).
CHUNK_CHARS = 1_000_000
MAX_CUT_TRIES = 1000  # lines tried for a clean cut before falling back to cutting after a newline
CHUNKS_PER_CALL = 8  # chunks handed to the (parallel) fast tokenizer per call
CACHE_VERSION = 1  # bump when the cached format or the byte attribution changes

_MEMORY: Dict[str, "TokenStream"] = {}


@dataclass
class TokenStream:
    ids: torch.Tensor  # (N,) int64 token ids
    byte_len: torch.Tensor  # (N,) int64 UTF-8 bytes of the text attributed to each token; sums to the text's bytes

    def __len__(self) -> int:
        return self.ids.numel()


def _cut_after(text: str, pos: int) -> int:
    """A cut position after pos: right after a line's last visible character, before its trailing whitespace."""
    newline = text.find("\n", pos)
    for _ in range(MAX_CUT_TRIES):
        if newline < 0:
            return -1
        p = newline
        while p > pos and text[p - 1] in " \t\r":
            p -= 1
        # Llama-3 glues newlines to punctuation right before them (".\n"), never to letters or digits.
        if p > pos and not text[p - 1].isspace() and (text[p - 1].isalnum() or p < newline):
            return p
        newline = text.find("\n", newline + 1)
    return newline + 1 if newline >= 0 else -1


def split_chunks(text: str, chunk_chars: int = CHUNK_CHARS) -> List[str]:
    """Consecutive pieces of about chunk_chars that join back to text."""
    chunks, start = [], 0
    while len(text) - start > chunk_chars:
        cut = _cut_after(text, start + chunk_chars)
        if cut < 0:
            break
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return [c for c in chunks if c]


def char_to_byte_offsets(text: str) -> np.ndarray:
    """(len(text) + 1,) int64: the UTF-8 byte offset of every character boundary."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (C,) code points
    nbytes = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(nbytes)])


def attribute_bytes(offsets: List[Tuple[int, int]], text: str) -> np.ndarray:
    """(N,) bytes per token: token k owns the text from the previous token's end to its own end, so
    gaps (spaces a tokenizer trims from offsets) go to the next token and the last token also
    takes what trails it. Offsets that overlap (a character split across byte-level tokens) count once."""
    char_bytes = char_to_byte_offsets(text)  # (C + 1,)
    ends = np.maximum.accumulate(np.array([e for _, e in offsets], dtype=np.int64))  # (N,) non-decreasing
    ends[-1] = len(text)
    byte_ends = char_bytes[ends]  # (N,)
    return np.diff(byte_ends, prepend=0)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the fast tokenizer's full definition (vocab, merges, normaliser, pre-tokeniser)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def _tokenize(text: str, tokenizer) -> TokenStream:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: byte attribution needs "
                         f"its offset mapping; load the model's tokenizer with use_fast=True")
    chunks = split_chunks(text)
    ids, byte_len = [], []
    pending = 0  # bytes of chunks that produced no token (e.g. whitespace a normaliser strips)
    bar = tqdm(total=len(text), unit="char", unit_scale=True, desc="tokenise", disable=len(chunks) < 2)
    for i in range(0, len(chunks), CHUNKS_PER_CALL):
        group = chunks[i:i + CHUNKS_PER_CALL]
        enc = tokenizer(group, add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, verbose=False)
        for chunk, chunk_ids, offsets in zip(group, enc["input_ids"], enc["offset_mapping"]):
            if not chunk_ids:
                pending += len(chunk.encode())
                continue
            nbytes = attribute_bytes(offsets, chunk)
            nbytes[0] += pending
            pending = 0
            ids.append(np.asarray(chunk_ids, dtype=np.int64))
            byte_len.append(nbytes)
            bar.update(len(chunk))
    bar.close()
    if not ids:
        raise ValueError("the text produced no tokens: check dataset.path / dataset.max_chars")
    byte_len[-1][-1] += pending
    return TokenStream(torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(byte_len)))


def token_stream(text: str, tokenizer, cache_dir: Path, tokenizer_id: str) -> TokenStream:
    """`text` tokenised without special tokens; cached by (tokenizer_id, tokenizer definition, text)."""
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    key = hashlib.sha256(
        f"v{CACHE_VERSION}|{tokenizer_id}|{tokenizer_fingerprint(tokenizer)}|{text_sha}".encode()).hexdigest()
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / "tokens" / f"{key}.pt"
    stream = None
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            stream = TokenStream(blob["ids"], blob["byte_len"])
        except Exception as exc:  # a corrupt or foreign file: tokenise again and overwrite it
            print(f"[lsh-bitnet] token cache {path} unreadable ({exc}), tokenising again", flush=True)
    if stream is None:
        stream = _tokenize(text, tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"ids": stream.ids, "byte_len": stream.byte_len, "tokenizer_id": tokenizer_id,
                    "text_sha256": text_sha}, tmp)
        os.replace(tmp, path)  # atomic: parallel sweep jobs never read a half-written file
    _MEMORY[key] = stream
    return stream


def windows(stream: TokenStream, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of seq_len tokens, the remainder dropped: (W, seq_len) ids and byte_len."""
    if seq_len < 1:
        raise ValueError(f"eval.seq_len must be >= 1 (got {seq_len})")
    n = len(stream) // seq_len
    ids = stream.ids[: n * seq_len].view(n, seq_len)  # (W, T)
    byte_len = stream.byte_len[: n * seq_len].view(n, seq_len)  # (W, T)
    return ids, byte_len

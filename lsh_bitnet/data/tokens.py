"""A text as one token stream, with the UTF-8 bytes each token stands for (for bits per byte).

Tokenising a split of wikitext-103 takes minutes, so streams are cached on disk and in the process:
a sweep over attention configs tokenises once.
"""
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from lsh_bitnet.console import progress

log = logging.getLogger(__name__)

# Texts are tokenised in pieces of about this many characters: the tokenizer's memory stays bounded
# and the bar moves. Pieces are cut where a line's last visible character meets its trailing whitespace,
# a boundary the GPT-2 / Llama-3 pre-tokenizer regexes draw anyway, so the ids almost always match
# tokenising the whole text in one call (a tokenizer that prepends a space to its input may differ by
# a token per cut).
CHUNK_CHARS = 1_000_000
MAX_CUT_TRIES = 1000  # lines tried for a clean cut before falling back to cutting after a newline
CHUNKS_PER_CALL = 8  # chunks handed to the (parallel) fast tokenizer per call
CACHE_VERSION = 1  # bump when the cached format or the byte attribution changes
# With eval.max_batches set only a prefix is tokenised, in pieces of at least this many characters
# (and PREFIX_CHARS_PER_TOKEN per needed token): a 15 MB file evaluated on 256 tokens must not cost
# the whole file's tokenisation (72 s and 4.8 GB measured before this).
PREFIX_MIN_CHUNK_CHARS = 65_536
PREFIX_CHARS_PER_TOKEN = 8  # English BPE averages ~4 characters per token: 2x headroom per piece

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


def iter_chunks(text: str, chunk_chars: int = CHUNK_CHARS):
    """split_chunks, lazily: a prefix read never slices the rest of the text."""
    start = 0
    while len(text) - start > chunk_chars:
        cut = _cut_after(text, start + chunk_chars)
        if cut < 0:
            break
        if cut > start:
            yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _tokenize(text: str, tokenizer, max_tokens: Optional[int] = None) -> TokenStream:
    """The whole text, or (max_tokens set) the chunks up to the first that reaches max_tokens ids."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: byte attribution needs "
                         f"its offset mapping; load the model's tokenizer with use_fast=True")
    if max_tokens is None:
        chunks, per_call = split_chunks(text), CHUNKS_PER_CALL
    else:  # one modest piece per call, stopping as soon as enough tokens exist
        chunks, per_call = iter_chunks(text, max(PREFIX_MIN_CHUNK_CHARS, PREFIX_CHARS_PER_TOKEN * max_tokens)), 1
    ids, byte_len = [], []
    n_ids = 0
    pending = 0  # bytes of chunks that produced no token (e.g. whitespace a normaliser strips)
    bar = progress(total=len(text), unit="char", unit_scale=True, desc="tokenise",
                   disable=max_tokens is not None or len(chunks) < 2)
    chunk_iter = iter(chunks)
    while max_tokens is None or n_ids < max_tokens:
        group = [c for _, c in zip(range(per_call), chunk_iter)]
        if not group:
            break
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
            n_ids += len(chunk_ids)
            bar.update(len(chunk))
    bar.close()
    if not ids:
        raise ValueError("the text produced no tokens: check dataset.path / dataset.max_chars")
    byte_len[-1][-1] += pending
    return TokenStream(torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(byte_len)))


def _cached_problem(blob, text_sha: str, tok_fp: str, n_bytes: int) -> Optional[str]:
    """Why a cached stream does not belong to this request (None if it does)."""
    if blob.get("text_sha256") != text_sha:
        return "text_sha256 differs from the text asked for"
    if blob.get("tokenizer_sha256") != tok_fp:
        return "tokenizer fingerprint differs"
    if blob["ids"].shape != blob["byte_len"].shape or int(blob["byte_len"].sum()) != n_bytes:
        return "token and byte counts do not add up to the text"
    return None


def token_stream(text: str, tokenizer, cache_dir: Path, tokenizer_id: str,
                 max_tokens: Optional[int] = None) -> TokenStream:
    """`text` tokenised without special tokens; cached by (tokenizer_id, tokenizer definition, text).

    max_tokens: tokenise only a prefix holding at least that many tokens (eval.max_batches x
    batch_size x seq_len), so time and memory follow what is evaluated; a full stream already in
    memory is used instead. Prefixes are kept in memory only (cheap to redo). A cached file is used
    only if its stored text hash and tokenizer fingerprint match the request, else rebuilt.
    """
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = hashlib.sha256(f"v{CACHE_VERSION}|{tokenizer_id}|{tok_fp}|{text_sha}".encode()).hexdigest()
    if key in _MEMORY:
        return _MEMORY[key]
    if max_tokens is not None:
        prefix_key = f"{key}|prefix{max_tokens}"
        if prefix_key not in _MEMORY:
            _MEMORY[prefix_key] = _tokenize(text, tokenizer, max_tokens)
        return _MEMORY[prefix_key]
    path = Path(cache_dir) / "tokens" / f"{key}.pt"
    stream = None
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            problem = _cached_problem(blob, text_sha, tok_fp, len(text.encode()))
            if problem is None:
                stream = TokenStream(blob["ids"], blob["byte_len"])
            else:
                log.warning(f"[lsh-bitnet] token cache {path} does not match ({problem}), tokenising again")
        except Exception as exc:  # a corrupt or foreign file: tokenise again and overwrite it
            log.warning(f"[lsh-bitnet] token cache {path} unreadable ({exc}), tokenising again")
    if stream is None:
        stream = _tokenize(text, tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"ids": stream.ids, "byte_len": stream.byte_len, "tokenizer_id": tokenizer_id,
                    "text_sha256": text_sha, "tokenizer_sha256": tok_fp}, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic: parallel sweep jobs never read a half-written file
    _MEMORY[key] = stream
    return stream


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def windows(stream: TokenStream, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of seq_len tokens, the remainder dropped: (W, seq_len) ids and byte_len."""
    if seq_len < 1:
        raise ValueError(f"eval.seq_len must be >= 1 (got {seq_len})")
    n = len(stream) // seq_len
    ids = stream.ids[: n * seq_len].view(n, seq_len)  # (W, T)
    byte_len = stream.byte_len[: n * seq_len].view(n, seq_len)  # (W, T)
    return ids, byte_len

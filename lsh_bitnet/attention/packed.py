"""Byte-packed hash codes: eight tables' codes of <= 8 bits in one int64 word, compared eight at a time (SWAR).

A decode step compares its query's code with every cached key's code in every table. One byte comparison per
(query head, key, table) is L passes over (heads x keys) tensors; with the codes of tables 8w .. 8w + 7 in the
bytes of word w, one XOR per word leaves a zero byte exactly where a table collides, and a few word-wide ops
count the nonzero bytes: ~9 passes for up to 8 tables instead of 16 (docs/BENCHMARKS.md, decode).

Bytes are laid out by a dtype view of (..., 8 W) uint8 as (..., W) int64, so the order of tables inside a word
is the machine's byte order; queries and keys are packed the same way, which is all a comparison needs. Table
slots past L in the last word are 0 for both, so they never differ.
"""
import torch

# Codes of up to this many bits fit one byte.
BYTE_CODE_BITS = 8
BYTES_PER_WORD = 8
LOW7 = 0x7F7F7F7F7F7F7F7F  # every byte's low seven bits
LOW_BITS = 0x0101010101010101  # every byte's lowest bit; multiplying by it sums the bytes into the top one
# (differing tables) * K + slot orders a decode step's keys in one int32 (engines/decode_topk.py)
ORDER_LIMIT = 1 << 31


def packable(n_bits: int) -> bool:
    """Whether codes of n_bits bits are packed one per byte."""
    return 0 <= n_bits <= BYTE_CODE_BITS


def n_words(n_tables: int) -> int:
    return -(-n_tables // BYTES_PER_WORD)


def pack_words(codes: torch.Tensor) -> torch.Tensor:
    """(..., L) integer codes < 256 -> (..., ceil(L / 8)) int64 words, table t in byte t % 8 of word t // 8."""
    L = codes.shape[-1]
    out = torch.zeros(codes.shape[:-1] + (n_words(L) * BYTES_PER_WORD,), dtype=torch.uint8, device=codes.device)
    out[..., :L] = codes
    return out.view(torch.int64)


def word_major(codes: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, n, L) codes -> (W, B, Hkv, n) words: each word's keys contiguous, as differing_tables reads them."""
    return pack_words(codes).permute(3, 0, 1, 2)


def differing_tables(q_words: torch.Tensor, k_words: torch.Tensor) -> torch.Tensor:
    """Tables whose codes differ, per (query head, key): q_words (W, B, Hkv, g), k_words (W, B, Hkv, K) ->
    (B, Hkv, g, K) int32 in [0, L]. The collisions are L minus it."""
    total = None
    for w in range(q_words.shape[0]):
        x = k_words[w].unsqueeze(2) ^ q_words[w].unsqueeze(-1)  # (B, Hkv, g, K): a zero byte per colliding table
        # the high bit of each byte: set iff the byte is nonzero (its low 7 bits carry into it, or it was set)
        high = (x & LOW7).add_(LOW7).bitwise_or_(x).bitwise_right_shift_(7).bitwise_and_(LOW_BITS)
        count = high.mul_(LOW_BITS).bitwise_right_shift_(56)  # the byte sum lands in the top byte
        total = count if total is None else total.add_(count)
    return total.to(torch.int32)

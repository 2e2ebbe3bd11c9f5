"""Byte-packed hash codes: eight tables' codes of <= 8 bits in one int64 word, compared eight at a time (SWAR).

A decode step compares its query's code with every cached key's code in every table. One byte comparison per
(query head, key, table) is L passes over (heads x keys) tensors; with the codes of tables 8w .. 8w + 7 in the
bytes of word w, one XOR per word leaves a zero byte exactly where a table collides, and a few word-wide ops
count the nonzero bytes; compiled, the whole count is one pass over the packed codes (docs/BENCHMARKS.md, decode).

Bytes are laid out by a dtype view of (..., 8 W) uint8 as (..., W) int64, so the order of tables inside a word
is the machine's byte order; queries and keys are packed the same way, which is all a comparison needs. Table
slots past L in the last word are 0 for both, so they never differ.
"""
import torch

# Codes of up to this many bits fit one byte.
BYTE_CODE_BITS = 8
BYTES_PER_WORD = 8
MAX_TABLES = 255  # the count of differing tables must fit one byte
LOW7 = 0x7F7F7F7F7F7F7F7F  # every byte's low seven bits
LOW_BITS = 0x0101010101010101  # every byte's lowest bit
# (differing tables) * K + slot orders a decode step's keys in one int32 (engines/decode_topk.py)
ORDER_LIMIT = 1 << 31
# differing_tables compiled (Inductor's C++ backend on CPU): the XOR, the byte tests and the popcount of every word
# in one loop instead of ~9 passes over (heads x keys) int64 tensors per word. At 8192 keys, 9 query heads, 1
# thread: 62 us against 263 eager for one word (8 tables), 109 against 1,087 for four (32 tables); compiled once
# per process and word count (~3 s), key counts dynamic. False: eager (tests compare the two).
COMPILE = True
_fused = None  # the compiled function; False once compilation failed


def packable(n_bits: int, n_tables: int) -> bool:
    """Whether codes of n_bits bits are packed one per byte, and the differing tables of n_tables counted in one
    byte (differing_tables sums every word's bytes into the top byte of one)."""
    return 0 <= n_bits <= BYTE_CODE_BITS and n_tables <= MAX_TABLES


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
    (B, Hkv, g, K) int32 in [0, L]. The collisions are L minus it. Compiled where it can be (COMPILE)."""
    global _fused
    if COMPILE and _fused is not False and q_words.device.type == "cpu":
        try:
            if _fused is None:
                _fused = torch.compile(_differing, dynamic=True)
            return _fused(q_words, k_words)
        except Exception as err:  # no C++ compiler, an unsupported torch: eager from now on, said once
            import warnings

            warnings.warn(f"packed.differing_tables runs eagerly (torch.compile failed: {type(err).__name__}: "
                          f"{str(err)[:200]})", RuntimeWarning)
            _fused = False
    return _differing(q_words, k_words)


def _differing(q_words: torch.Tensor, k_words: torch.Tensor) -> torch.Tensor:
    total = None
    for w in range(q_words.shape[0]):
        x = k_words[w].unsqueeze(2) ^ q_words[w].unsqueeze(-1)  # (B, Hkv, g, K): a zero byte per colliding table
        # bit 0 of each byte: 1 iff the byte is nonzero (its low 7 bits carry into bit 7, or bit 7 was set)
        nonzero = (((x & LOW7) + LOW7) | x) >> 7 & LOW_BITS
        total = nonzero if total is None else total + nonzero  # each byte counts words: <= MAX_TABLES / 8
    # the sum of the 8 bytes, by halves: each byte is <= MAX_TABLES / 8 < 128, so the word is >= 0 and no partial
    # sum carries into the next byte (a multiply by LOW_BITS would overflow int64, which Inductor does not keep)
    total = total + (total >> 32)
    total = total + (total >> 16)
    return ((total + (total >> 8)) & 0xFF).to(torch.int32)


def call_words(hasher, query: torch.Tensor, key: torch.Tensor, key_codes=None, key_words=None):
    """(q_words (W, B, Hkv, g), k_words (W, B, Hkv, K)) of a call of one query per row: the query's codes now, the
    keys' from the code cache's packed codes, else from its codes (L, B, Hkv, K), else hashed now."""
    B, Hq, _, D = query.shape
    Hkv = key.shape[1]
    if key_words is None:
        codes = hasher.key_codes(key) if key_codes is None else key_codes.permute(1, 2, 3, 0)  # (B, Hkv, K, L)
        key_words = word_major(codes)
    return word_major(hasher.codes(query.reshape(B, Hkv, Hq // Hkv, D))), key_words

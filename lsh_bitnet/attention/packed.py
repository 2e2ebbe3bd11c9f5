"""Byte-packed hash codes: eight tables' codes of <= 8 bits in one int64 word, compared eight at a time (SWAR).

A decode step compares its query's code with every cached key's code in every table. One byte comparison per
(query head, key, table) is L passes over (heads x keys) tensors; with the codes of tables 8w .. 8w + 7 in the
bytes of word w, one XOR per word leaves a zero byte exactly where a table collides, and a few word-wide ops
count the nonzero bytes; compiled, the whole count is one pass over the packed codes (docs/BENCHMARKS.md, decode).

Bytes are laid out by a dtype view of (..., 8 W) uint8 as (..., W) int64, so the order of tables inside a word
is the machine's byte order; queries and keys are packed the same way, which is all a comparison needs. Table
slots past L in the last word are 0 for both, so they never differ.
"""
import time

import torch

# Codes of up to this many bits fit one byte.
BYTE_CODE_BITS = 8
BYTES_PER_WORD = 8
MAX_TABLES = 255  # the count of differing tables must fit one byte
LOW7 = 0x7F7F7F7F7F7F7F7F  # every byte's low seven bits
LOW_BITS = 0x0101010101010101  # every byte's lowest bit
# The counts compiled (Inductor's C++ backend on CPU): the XOR, the byte tests, the popcount of every word and what
# the rule reads of them in one loop instead of ~9 passes over (heads x keys) int64 tensors per word. At 8192 keys,
# 9 query heads, 1 thread: 62 us against 263 eager for one word (8 tables), 109 against 1,087 for four (32 tables);
# compiled once per process, function and word count (~1-3 s), key counts dynamic. False: eager (tests compare).
COMPILE = True
_COMPILED = {}  # function -> its compiled form, or False once compilation failed
# Compilation seconds, as the flex engine reports them (engines/flex.compile_stats): per graph (function, word
# count), the first call's seconds less the second's. COMPILED lists the graphs in the order they compiled.
_FIRST, _SECOND, COMPILED = {}, {}, []


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
    (B, Hkv, g, K) int32 in [0, L]. The collisions are L minus it."""
    return _run(_differing, q_words, k_words)


def collision_order(q_words: torch.Tensor, k_words: torch.Tensor):
    """(differing tables x K + slot (B, Hkv, g, K) int32: the keys in lsh_topk's order, most collisions first and
    then the lower slot, as smallest first; the differing (query head, table, key) triples, int64 0-d)."""
    return _run(_order, q_words, k_words)


def collision_candidates(q_words: torch.Tensor, k_words: torch.Tensor, max_differing: int):
    """(keys where at most max_differing tables differ (B, Hkv, g, K) bool; the differing triples, int64 0-d)."""
    return _run(_candidates, q_words, k_words, max_differing)


def _run(fn, q_words: torch.Tensor, *args):
    """fn compiled where it can be (COMPILE, CPU), else eager."""
    if COMPILE and _COMPILED.get(fn) is not False and q_words.device.type == "cpu":
        try:
            if fn not in _COMPILED:
                _COMPILED[fn] = torch.compile(fn, dynamic=True)
            return _timed_call(fn, q_words, *args)
        except Exception as err:  # no C++ compiler, an unsupported torch: eager from now on, said once
            import warnings

            warnings.warn(f"packed.{fn.__name__.strip('_')} runs eagerly (torch.compile failed: "
                          f"{type(err).__name__}: {str(err)[:200]})", RuntimeWarning)
            _COMPILED[fn] = False
    return fn(q_words, *args)


def _timed_call(fn, q_words: torch.Tensor, *args):
    key = (fn.__name__, q_words.shape[0])  # one graph per function and word count
    if key in _SECOND:
        return _COMPILED[fn](q_words, *args)
    start = time.perf_counter()
    out = _COMPILED[fn](q_words, *args)
    (_SECOND if key in _FIRST else _FIRST)[key] = time.perf_counter() - start
    if key not in COMPILED:
        COMPILED.append(key)
    return out


def compile_stats(start: int = 0) -> dict:
    """{"compile_s", "compiles"} of the graphs compiled after the first `start` (flex.compile_stats' rule)."""
    keys = COMPILED[start:]
    return {"compile_s": sum(_FIRST[k] - min(_SECOND.get(k, 0.0), _FIRST[k]) for k in keys), "compiles": len(keys)}


def _order(q_words: torch.Tensor, k_words: torch.Tensor):
    differ = _differing(q_words, k_words)
    K = differ.shape[-1]
    return differ * K + torch.arange(K, dtype=torch.int32, device=differ.device), differ.sum(dtype=torch.int64)


def _candidates(q_words: torch.Tensor, k_words: torch.Tensor, max_differing: int):
    differ = _differing(q_words, k_words)
    return differ <= max_differing, differ.sum(dtype=torch.int64)


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

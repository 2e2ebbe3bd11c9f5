"""Naive reference of the sparse attention semantics (SPEC sections 3-4, docs/ATTENTION-API.md).

Written as plain Python loops over rows, heads, queries and keys in float64 so that it shares no code
(and no vectorisation bugs) with lsh_bitnet/attention. The only thing it takes from the implementation
is the drawn hash parameters (`Hasher.coords` / `Hasher.planes`); the bits are recomputed here.
"""
import hashlib
import math
from fractions import Fraction

import torch

HASHED = ("lsh", "lsh_forest", "lsh_topk", "lsh_probe")
VARIANTS = ("full", "lsh", "lsh_forest", "oracle_topk", "window", "lsh_topk", "random_k", "lsh_probe")


def hash_kind(hasher_params):
    """-> ("bit_sampling", coords[h][t][b]) or ("simhash", planes[h][t][d][b]) as nested Python lists.

    Accepts a Hasher (reads .coords / .planes) or a dict with one of those keys."""
    get = hasher_params.get if isinstance(hasher_params, dict) else (lambda n: getattr(hasher_params, n, None))
    if get("coords") is not None:
        return "bit_sampling", torch.as_tensor(get("coords")).long().tolist()
    if get("signs") is not None:  # hadamard: hyperplanes rebuilt here from the drawn signs (naive_hadamard_planes)
        return "simhash", naive_hadamard_planes(get("signs"), *table_shape(hasher_params)[1:],
                                                head_dim=get("head_dim"))
    if get("planes") is not None:
        return "simhash", torch.as_tensor(get("planes")).double().tolist()
    raise ValueError("hasher_params needs .coords (bit_sampling) or .planes (simhash)")


def sylvester(n):
    """The n x n Walsh-Hadamard matrix (n a power of two) by Sylvester's doubling, as lists of +-1."""
    H = [[1]]
    while len(H) < n:
        H = [row + row for row in H] + [row + [-x for x in row] for row in H]
    return H


def naive_hadamard_planes(signs, n_tables, n_bits, head_dim):
    """planes[h][t][d][b] of hasher=hadamard from its drawn signs (Hkv, rotations, rounds, P): rotation r is
    M = H D_R ... H D_1 (D_k = diag(signs[h][r][k])); bit b of table t is row t * n_bits + b of the rotations'
    rows stacked, restricted to the first head_dim columns."""
    signs = torch.as_tensor(signs).long().tolist()
    out = []
    for head in signs:
        rows = []
        for rotation in head:
            P = len(rotation[0])
            H = sylvester(P)
            M = [[int(i == j) for j in range(P)] for i in range(P)]  # identity
            for d in rotation:  # M <- H diag(d) M
                DM = [[d[i] * M[i][j] for j in range(P)] for i in range(P)]
                M = [[sum(H[i][k] * DM[k][j] for k in range(P)) for j in range(P)] for i in range(P)]
            rows.extend(M)
        out.append([[[float(rows[t * n_bits + b][d]) for b in range(n_bits)] for d in range(head_dim)]
                    for t in range(n_tables)])
    return out


def table_shape(hasher_params):
    """-> (n_kv_heads, n_tables, n_bits) of the drawn parameters."""
    get = hasher_params.get if isinstance(hasher_params, dict) else (lambda n: getattr(hasher_params, n, None))
    coords = get("coords")
    if coords is not None:
        return tuple(torch.as_tensor(coords).shape)
    if get("signs") is not None:  # hadamard: shapes only, its planes are rebuilt by naive_hadamard_planes
        return torch.as_tensor(get("signs")).shape[0], get("n_tables"), get("n_bits")
    planes = torch.as_tensor(get("planes"))  # (Hkv, n_tables, D, n_bits)
    return planes.shape[0], planes.shape[1], planes.shape[3]


def naive_projection(vec, kind, params, h, t, b):
    """The number whose sign is bit b of table t of KV head h: x[c] or x . r (float64, exact sum)."""
    if kind == "bit_sampling":
        return vec[params[h][t][b]]
    return math.fsum(vec[d] * params[h][t][d][b] for d in range(len(vec)))


def centred(x, center):
    """x (B, H, T, D) minus the mean key: center None, (H, D) per KV head, or (B, H, D) per row and KV head."""
    if center is None:
        return x
    mu = torch.as_tensor(center, dtype=torch.float64)
    mu = mu[None] if mu.dim() == 2 else mu
    return x.double() - mu[:, :, None, :]


def naive_prompt_center(key, key_valid):
    """hasher.center=prompt: the mean of each row's valid keys per KV head, (B, Hkv, D) float64; padding keys
    take no part. key (B, Hkv, K, D), key_valid (B, K) bool."""
    valid = key_valid.tolist()
    out = []
    for b, row in enumerate(key.double().tolist()):
        slots = [j for j, ok in enumerate(valid[b]) if ok]
        out.append([[math.fsum(head[j][d] for j in slots) / max(len(slots), 1) for d in range(len(head[0]))]
                    for head in row])
    return torch.tensor(out, dtype=torch.float64)


def naive_hash_bits(x, hasher_params, kv_head_of=None):
    """x (B, H, T, D) -> bits[b][h][t][table] = tuple of n_bits bools, bit 0 first (most significant).

    bit_sampling: bit = x[c] > 0 (strict: a zero coordinate gives 0); simhash: bit = x . r > 0.
    Head h is hashed with the functions of KV head kv_head_of(h) (identity for keys; h // g for queries).
    """
    kind, params = hash_kind(hasher_params)
    _, n_tables, n_bits = table_shape(hasher_params)
    kv_head_of = kv_head_of or (lambda h: h)
    xs = x.double().tolist()
    out = []
    for row in xs:
        out_row = []
        for h, head in enumerate(row):
            hk = kv_head_of(h)
            out_head = []
            for vec in head:
                out_head.append([tuple(naive_projection(vec, kind, params, hk, t, b) > 0 for b in range(n_bits))
                                 for t in range(n_tables)])
            out_row.append(out_head)
        out.append(out_row)
    return out


def naive_min_margin(x, hasher_params, kv_head_of=None):
    """Smallest |projection| over all vectors/tables/bits: a float32 hasher may flip a bit below ~1e-5."""
    kind, params = hash_kind(hasher_params)
    _, n_tables, n_bits = table_shape(hasher_params)
    kv_head_of = kv_head_of or (lambda h: h)
    best = math.inf
    for row in x.double().tolist():
        for h, head in enumerate(row):
            for vec in head:
                for t in range(n_tables):
                    for b in range(n_bits):
                        best = min(best, abs(naive_projection(vec, kind, params, kv_head_of(h), t, b)))
    return best


def lcp(a, b):
    """Number of leading agreeing bits of two bit tuples."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))  # float64: ~1e-16 relative, far below the 1e-5 tolerance


def oracle_budget(n_valid, k, fraction):
    """k_i = min(k, |V(i)|) or ceil(fraction * |V(i)|), the fraction read as the decimal the user typed."""
    if k is not None:
        return min(int(k), n_valid)
    return min(n_valid, math.ceil(Fraction(repr(float(fraction))) * n_valid))


def hamming(a, b):
    """Number of disagreeing bits of two bit tuples."""
    return sum(x != y for x, y in zip(a, b))


def naive_probe_score(qbits_i, kbits_j, n_tables, radius):
    """lsh_probe's s_ij: each table whose codes lie within Hamming distance `radius` adds radius + 1 - distance."""
    return sum(max(0, radius + 1 - hamming(qbits_i[t], kbits_j[t])) for t in range(n_tables))


def naive_random_rank(seed, layer_idx, head, qpos, kpos):
    """random_k's rank of the key at position kpos for the query at position qpos of query head `head`, from its
    definition (SPEC section 7.4): s = the first 4 bytes, little-endian, of
    sha256("lsh_bitnet:random_k:<seed>:<layer>:<head>"); rank = mix(mix(s XOR qpos) XOR kpos), mix being
    Thomas Mueller's 32-bit hash (x = ((x >> 16) ^ x) * 0x45d9f3b mod 2^32, twice, then (x >> 16) ^ x)."""
    def mix(x):
        for _ in range(2):
            x = (((x >> 16) ^ x) * 0x45D9F3B) % (1 << 32)
        return (x >> 16) ^ x

    text = f"lsh_bitnet:random_k:{seed}:{layer_idx}:{head}"
    s = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return mix(mix(s ^ qpos) ^ kpos)


def naive_collision_prob(qv, kv_hashed, kind, n_bits, n_tables, m):
    """p_ij: the probability under the hash family that key j passes the m-of-L rule for query i.

    simhash: one table collides w.p. (1 - theta/pi)^K; bit_sampling (K distinct of D coordinates):
    C(agree, K) / C(D, K), agree = #coordinates with (q_c > 0) == (k_c > 0); then the binomial tail."""
    D = len(qv)
    if kind == "simhash":
        cos = dot(qv, kv_hashed) / math.sqrt(dot(qv, qv) * dot(kv_hashed, kv_hashed))
        p1 = (1 - math.acos(max(-1.0, min(1.0, cos))) / math.pi) ** n_bits
    else:
        agree = sum(1 for a, b in zip(qv, kv_hashed) if (a > 0) == (b > 0))
        p1 = math.comb(agree, n_bits) / math.comb(D, n_bits)
    return math.fsum(math.comb(n_tables, i) * p1 ** i * (1 - p1) ** (n_tables - i) for i in range(m, n_tables + 1))


def naive_candidates(query, key, key_valid, *, variant, include_self=True, sink_tokens=0, local_window=0,
                     n_tables=1, n_trees=1, max_depth=0, min_candidates=1, k=None, fraction=None,
                     hasher_params=None, min_collisions=1, score="collisions", center=None, return_always=False,
                     seed=0, layer_idx=0, probe_radius=0):
    """-> (C, V): C[b][h][i] / V[b][h][i] sorted lists of key slots, None for a padding query slot.

    query (B, Hq, Q, D), key (B, Hkv, K, D), key_valid (B, K) bool. Query i sits at slot K - Q + i.
    Keys are hashed as key - center (center: None, (Hkv, D) or (B, Hkv, D)). With return_always, also
    A[b][h][i], the always-attend set.
    """
    assert variant in VARIANTS, variant
    B, Hq, Q, D = query.shape
    _, Hkv, K, _ = key.shape
    assert Hq % Hkv == 0 and Q <= K
    g = Hq // Hkv
    valid = [[bool(v) for v in row] for row in key_valid.tolist()]
    qs, ks = query.double().tolist(), key.double().tolist()
    if variant in HASHED:
        p_heads, p_tables, p_bits = table_shape(hasher_params)
        want = (n_trees, max_depth) if variant == "lsh_forest" else (n_tables, None)
        assert p_heads == Hkv and p_tables == want[0] and (want[1] is None or p_bits == want[1]), \
            f"hasher params {(p_heads, p_tables, p_bits)} do not fit variant={variant} Hkv={Hkv} {want}"
        qbits = naive_hash_bits(query, hasher_params, kv_head_of=lambda h: h // g)
        kbits = naive_hash_bits(centred(key, center), hasher_params)
    C = [[[None] * Q for _ in range(Hq)] for _ in range(B)]
    V = [[[None] * Q for _ in range(Hq)] for _ in range(B)]
    A = [[[None] * Q for _ in range(Hq)] for _ in range(B)]
    for b in range(B):
        pos, n = [], 0  # p(b, j): number of valid slots before j
        for j in range(K):
            pos.append(n)
            n += valid[b][j]
        for h in range(Hq):
            hk = h // g
            for i in range(Q):
                s = K - Q + i
                if not valid[b][s]:
                    continue
                v_set = [j for j in range(s + 1) if valid[b][j]]
                always = set()
                for j in v_set:
                    if include_self and j == s:
                        always.add(j)
                    if pos[j] < sink_tokens:
                        always.add(j)
                    if pos[s] - pos[j] < local_window:
                        always.add(j)
                collisions = lambda j: sum(qbits[b][h][i][t] == kbits[b][hk][j][t] for t in range(n_tables))  # noqa
                if variant == "full":
                    base = set(v_set)
                elif variant == "window":
                    base = set()
                elif variant == "lsh":  # at least min_collisions of the tables collide (1: the union)
                    base = {j for j in v_set if collisions(j) >= min_collisions}
                elif variant in ("oracle_topk", "lsh_topk"):
                    if variant == "oracle_topk":
                        scores = [(-dot(qs[b][h][i], ks[b][hk][j]), j) for j in v_set]
                    elif score == "collisions":
                        scores = [(-collisions(j), j) for j in v_set]
                    else:  # soft: agreeing bits over all tables
                        scores = [(-sum(x == y for t in range(n_tables)
                                        for x, y in zip(qbits[b][h][i][t], kbits[b][hk][j][t])), j) for j in v_set]
                    base = {j for _, j in sorted(scores)[:oracle_budget(len(v_set), k, fraction)]}
                elif variant == "lsh_probe":  # keys some probe finds (s > 0), the budget's best by s, ties lower
                    scored = [(-naive_probe_score(qbits[b][h][i], kbits[b][hk][j], n_tables, probe_radius), j)
                              for j in v_set]
                    found = sorted(x for x in scored if x[0] < 0)
                    base = {j for _, j in found[:oracle_budget(len(v_set), k, fraction)]}
                elif variant == "random_k":  # the budget's highest random ranks, ties to the lower slot
                    ranked = sorted(v_set, key=lambda j: (-naive_random_rank(seed, layer_idx, h, pos[s], pos[j]), j))
                    base = set(ranked[:oracle_budget(len(v_set), k, fraction)])
                else:  # lsh_forest: deepest depth x whose prefix matches still hold min(min_candidates, |V|)
                    depth = {j: max(lcp(qbits[b][h][i][t], kbits[b][hk][j][t]) for t in range(n_trees))
                             for j in v_set}
                    need = min(min_candidates, len(v_set))
                    x_star = 0
                    for x in range(max_depth + 1):
                        if sum(1 for j in v_set if depth[j] >= x) >= need:
                            x_star = x
                    base = {j for j in v_set if depth[j] >= x_star}
                C[b][h][i] = sorted(base | always)
                V[b][h][i] = v_set
                A[b][h][i] = always
    return (C, V, A) if return_always else (C, V)


def naive_sparse_attention(query, key, value, key_valid, *, variant, include_self=True, sink_tokens=0,
                           local_window=0, n_tables=1, n_trees=1, max_depth=0, min_candidates=1, k=None,
                           fraction=None, hasher_params=None, scaling=None, min_collisions=1, score="collisions",
                           center=None, estimator="softmax", seed=0, layer_idx=0, probe_radius=0):
    """-> (out (B, Hq, Q, Dv) float64, comparisons, full_comparisons); padding query rows are zeros.

    estimator="sampling": w_j = exp(scale q.k) / p_ij (naive_collision_prob), p = 1 on always-attend keys."""
    C, V, A = naive_candidates(query, key, key_valid, variant=variant, include_self=include_self,
                               sink_tokens=sink_tokens, local_window=local_window, n_tables=n_tables,
                               n_trees=n_trees, max_depth=max_depth, min_candidates=min_candidates, k=k,
                               fraction=fraction, hasher_params=hasher_params, min_collisions=min_collisions,
                               score=score, center=center, return_always=True, seed=seed, layer_idx=layer_idx,
                               probe_radius=probe_radius)
    B, Hq, Q, D = query.shape
    Hkv, Dv = key.shape[1], value.shape[-1]
    g = Hq // Hkv
    scaling = D ** -0.5 if scaling is None else scaling
    qs, ks, vs = query.double().tolist(), key.double().tolist(), value.double().tolist()
    hashed_keys = centred(key, center).double().tolist()
    out = [[[[0.0] * Dv for _ in range(Q)] for _ in range(Hq)] for _ in range(B)]
    comparisons = full_comparisons = 0
    for b in range(B):
        for h in range(Hq):
            hk = h // g
            for i in range(Q):
                cands = C[b][h][i]
                if cands is None:  # padding query: ignored and not counted
                    continue
                comparisons += len(cands)
                full_comparisons += len(V[b][h][i])
                if not cands:  # empty C(i): zero output
                    continue
                logits = [scaling * dot(qs[b][h][i], ks[b][hk][j]) for j in cands]
                if estimator == "sampling":
                    kind, _ = hash_kind(hasher_params)
                    n_bits = table_shape(hasher_params)[2]
                    logits = [x - (0.0 if j in A[b][h][i] else math.log(naive_collision_prob(
                        qs[b][h][i], hashed_keys[b][hk][j], kind, n_bits, n_tables, min_collisions)))
                        for x, j in zip(logits, cands)]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = math.fsum(weights)
                out[b][h][i] = [math.fsum(w * vs[b][hk][j][d] for w, j in zip(weights, cands)) / total
                                for d in range(Dv)]
    return torch.tensor(out, dtype=torch.float64).view(B, Hq, Q, Dv), comparisons, full_comparisons


def naive_hash_ops(query, key, key_valid, *, variant, hasher_params=None):
    """ops_per_vector * (valid query vectors over Hq heads + valid key vectors over Hkv heads); 0 unhashed.

    simhash: D * n_bits * n_tables multiply-adds per vector; bit_sampling: n_bits * n_tables tests."""
    if variant not in HASHED:
        return 0
    kind, _ = hash_kind(hasher_params)
    _, n_tables, n_bits = table_shape(hasher_params)
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    per_vector = n_bits * n_tables * (D if kind == "simhash" else 1)
    signs = getattr(hasher_params, "signs", None)
    if signs is not None:  # hadamard: per rotation and round, P log2 P additions and P sign flips
        n_rot, rounds, P = signs.shape[1:]
        per_vector = n_rot * rounds * (P * (P.bit_length() - 1) + P)
    valid = key_valid.tolist()
    n_q = sum(1 for b in range(B) for i in range(Q) if valid[b][K - Q + i])
    n_k = sum(1 for b in range(B) for j in range(K) if valid[b][j])
    return per_vector * (n_q * Hq + n_k * Hkv)


def naive_selection_ops(query, key, key_valid, *, variant, hasher_params=None, n_tables=1, n_trees=1, max_depth=0,
                        score="collisions", center=None, comparisons=0, estimator="softmax", min_collisions=1,
                        probe_radius=0):
    """docs/SPEC.md selection_ops, by loops: lsh counts each causal colliding (query head, query, table, key);
    lsh_topk adds one selection step per visible key (soft: L*K bit agreements + 1 per visible key); the
    forest L + ceil(log2(depth + 1)) per visible key; the oracle one per visible key, random_k two; sampling m per
    candidate; lsh_probe, per valid (query head, query): L * #{codes within the radius} buckets visited, the keys of
    V(i) found (one per table within the radius) and one selection step per key found at least once."""
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    g = Hq // Hkv
    valid = key_valid.tolist()
    visible = pairs = 0
    if variant == "lsh_probe":
        return naive_probe_ops(query, key, key_valid, hasher_params, n_tables, probe_radius, center)
    if variant in ("lsh", "lsh_topk"):
        qbits = naive_hash_bits(query, hasher_params, kv_head_of=lambda h: h // g)
        kbits = naive_hash_bits(centred(key, center), hasher_params)
    for b in range(B):
        for h in range(Hq):
            for i in range(Q):
                s = K - Q + i
                if not valid[b][s]:
                    continue
                for j in range(s + 1):
                    if valid[b][j]:
                        visible += 1
                        if variant in ("lsh", "lsh_topk"):
                            pairs += sum(qbits[b][h][i][t] == kbits[b][h // g][j][t] for t in range(n_tables))
    extra = comparisons * min_collisions if estimator == "sampling" else 0
    if variant == "lsh":
        return pairs + extra
    if variant == "lsh_topk":
        return visible * (n_tables * table_shape(hasher_params)[2] + 1) if score == "soft" else pairs + visible
    if variant == "lsh_forest":  # binary search over the depths 0..max_depth: halvings until one depth is left
        steps = 0
        while 2 ** steps < max_depth + 1:
            steps += 1
        return visible * (n_trees + steps)
    if variant == "random_k":  # one rank drawn and one selection step per visible key
        return 2 * visible
    return visible if variant == "oracle_topk" else 0


def naive_probe_ops(query, key, key_valid, hasher_params, n_tables, radius, center=None):
    """lsh_probe's selection_ops by loops (see naive_selection_ops)."""
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    g = Hq // Hkv
    n_bits = table_shape(hasher_params)[2]
    visited = n_tables * sum(math.comb(n_bits, d) for d in range(min(radius, n_bits) + 1))
    qbits = naive_hash_bits(query, hasher_params, kv_head_of=lambda h: h // g)
    kbits = naive_hash_bits(centred(key, center), hasher_params)
    valid = key_valid.tolist()
    ops = 0
    for b in range(B):
        for h in range(Hq):
            for i in range(Q):
                s = K - Q + i
                if not valid[b][s]:
                    continue
                ops += visited
                for j in range(s + 1):
                    if valid[b][j]:
                        near = sum(hamming(qbits[b][h][i][t], kbits[b][h // g][j][t]) <= radius
                                   for t in range(n_tables))
                        ops += near + (near > 0)
    return ops

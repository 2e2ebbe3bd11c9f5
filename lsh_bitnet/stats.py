"""Uncertainty of the reported metrics: Wilson intervals for accuracies, a bootstrap over windows for
perplexity, paired comparisons of two runs on the same items (the collector's --paired-with), and the
one place where the run's top-level `seed` seeds every global RNG.

No torch at import time (the runner imports this before validation). Intervals go to results.json as
`<metric>_ci_low`, `<metric>_ci_high` beside the point value and `n` (samples or windows).
"""
import math
import random
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

LEVEL = 0.95  # every interval in results.json is a 95% interval
# Resamples of the perplexity bootstrap: at 2000 the Monte Carlo error of a 2.5% / 97.5% endpoint is
# a few percent of the interval's width, well below the width itself, and it costs milliseconds.
BOOTSTRAP_RESAMPLES = 2000


def _z(level: float) -> float:
    """Two-sided normal quantile: 1.959964 for 0.95 (the inverse CDF via the error function, no scipy)."""
    lo, hi = 0.0, 10.0
    target = (1 + level) / 2
    for _ in range(100):  # bisection on Phi(z) = (1 + erf(z / sqrt 2)) / 2: exact to float precision
        mid = (lo + hi) / 2
        if (1 + math.erf(mid / math.sqrt(2))) / 2 < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson(k: int, n: int, level: float = LEVEL) -> Tuple[Optional[float], Optional[float]]:
    """Wilson score interval for k successes in n trials (Wilson 1927); (None, None) when n == 0.

    Unlike the normal interval p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a
    point at k = 0 or k = n, which is where sparse-attention accuracies often sit."""
    if n <= 0:
        return None, None
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} successes is outside [0, n={n}]")
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1); centre - half can round to 2.8e-17 instead.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def bootstrap_perplexity(nll_sums: Sequence[float], token_counts: Sequence[int], seed: int = 0,
                         resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL
                         ) -> Tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of exp(sum NLL / sum tokens), resampling whole windows.

    Windows, not tokens, are the independent units (tokens of one window share its context), so the
    resampling is over windows. Fewer than 2 windows: (None, None), there is no spread to estimate."""
    nll = np.asarray(nll_sums, dtype=np.float64)  # (W,)
    tok = np.asarray(token_counts, dtype=np.float64)  # (W,)
    if nll.shape != tok.shape:
        raise ValueError(f"bootstrap_perplexity: {nll.shape[0]} NLL sums but {tok.shape[0]} token counts")
    if nll.size < 2:
        return None, None
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, nll.size, size=(resamples, nll.size))  # (R, W) windows drawn with replacement
    ppl = np.exp(nll[idx].sum(axis=1) / tok[idx].sum(axis=1))  # (R,)
    alpha = (1 - level) / 2
    low, high = np.quantile(ppl, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_perplexity_ratio(nll_run: Sequence[float], nll_base: Sequence[float], token_counts: Sequence[int],
                            seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL
                            ) -> Tuple[float, Optional[float], Optional[float]]:
    """Perplexity of a run over that of a baseline on the same windows, with a paired percentile bootstrap.

    Both runs are resampled with the same window draws, so the spread between windows (far larger than
    between two variants on one window) cancels: the interval says whether a variant is within a few
    percent of the baseline, which the two runs' own intervals cannot. Fewer than 2 windows: no interval."""
    run = np.asarray(nll_run, dtype=np.float64)  # (W,) NLL summed over each window's predicted tokens
    base = np.asarray(nll_base, dtype=np.float64)  # (W,)
    tok = np.asarray(token_counts, dtype=np.float64)  # (W,) the same windows, so the same tokens
    if not run.shape == base.shape == tok.shape or run.size == 0:
        raise ValueError(f"paired_perplexity_ratio: {run.size} run, {base.size} baseline NLL sums and "
                         f"{tok.size} token counts; need the same windows, at least one")
    ratio = float(np.exp((run.sum() - base.sum()) / tok.sum()))
    if run.size < 2:
        return ratio, None, None
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, run.size, size=(resamples, run.size))  # (R, W): one draw of windows for both runs
    draws = np.exp((run[idx].sum(axis=1) - base[idx].sum(axis=1)) / tok[idx].sum(axis=1))  # (R,)
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return ratio, float(low), float(high)


def paired_accuracy_difference(correct_run: Sequence[bool], correct_base: Sequence[bool], level: float = LEVEL
                               ) -> Tuple[float, Optional[float], Optional[float]]:
    """Accuracy of a run minus a baseline's on the same samples, with Newcombe's interval for paired
    proportions (1998, Statistics in Medicine 17:2635, method 10: the two Wilson intervals combined
    with the continuity-corrected correlation of the pairs).

    A percentile bootstrap collapses to a point when every pair agrees in kind (35 of 35 against 0 of 35
    gives [1, 1]); this interval does not, and it stays inside [-1, 1]. No samples: (nan, None, None)."""
    run = [bool(c) for c in correct_run]
    base = [bool(c) for c in correct_base]
    if len(run) != len(base):
        raise ValueError(f"paired_accuracy_difference: {len(run)} run and {len(base)} baseline outcomes; "
                         f"need the same samples")
    n = len(run)
    if n == 0:
        return float("nan"), None, None
    both = sum(r and b for r, b in zip(run, base))
    gains = sum(r and not b for r, b in zip(run, base))  # right only in the run
    losses = sum(b and not r for r, b in zip(run, base))  # right only in the baseline
    neither = n - both - gains - losses
    p1, p2 = (both + gains) / n, (both + losses) / n
    l1, u1 = wilson(both + gains, n, level)
    l2, u2 = wilson(both + losses, n, level)
    margins = (both + gains) * (losses + neither) * (both + losses) * (gains + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - gains * losses
        # Newcombe's correction shrinks a positive association by n/2 (not below 0); a negative one stays.
        corrected = max(cross - n / 2, 0.0) if cross > 0 else cross
        phi = corrected / math.sqrt(margins)
    delta = p1 - p2
    low = delta - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = delta + math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return delta, max(-1.0, low), min(1.0, high)


def accuracy_fields(name: str, correct: Sequence[bool], level: float = LEVEL) -> Dict[str, Optional[float]]:
    """{name, name_ci_low, name_ci_high} for a list of per-sample outcomes."""
    n, k = len(correct), int(sum(bool(c) for c in correct))
    low, high = wilson(k, n, level)
    return {name: k / n if n else None, f"{name}_ci_low": low, f"{name}_ci_high": high}


def perplexity_fields(nll_sums: Sequence[float], token_counts: Sequence[int], seed: int = 0) -> Dict[str, Optional[float]]:
    """{perplexity, nll, perplexity_ci_low, perplexity_ci_high, n} from per-window NLL sums and predicted tokens."""
    total_tokens = float(sum(token_counts))
    if total_tokens <= 0:
        return {"perplexity": None, "nll": None, "perplexity_ci_low": None, "perplexity_ci_high": None,
                "n": len(nll_sums)}
    mean_nll = float(sum(nll_sums)) / total_tokens
    low, high = bootstrap_perplexity(nll_sums, token_counts, seed=seed)
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "perplexity_ci_low": low,
            "perplexity_ci_high": high, "n": len(nll_sums)}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs from the run's top-level `seed`.

    The components with their own RNG take their seed from the config (hasher.seed and dataset.seed
    default to ${seed}); this covers whatever draws from the global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seed takes 32 bits
    import torch

    torch.manual_seed(seed)

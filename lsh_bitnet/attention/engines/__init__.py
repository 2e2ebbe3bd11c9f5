"""Attention engines (SPEC section 8): how softmax(q.k) v is computed over the candidate sets."""

"""``cache.CacheEntry.load_or_compute``: one computation per content hash, and every caller (the
computing one included) gets the bytes on disk."""

from __future__ import annotations

import torch

from metainf_core.cache import CacheEntry


def test_load_or_compute_computes_once_and_returns_what_is_on_disk(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6, dtype=torch.float64).reshape(2, 3).t()}, {"what": "a table"}  # not contiguous

    entry = CacheEntry.for_inputs("unit", {"a": 1}, root=tmp_path)
    first, info = entry.load_or_compute(compute)
    assert entry.complete and calls == [1]
    assert info["what"] == "a table" and info["fit_seconds"] >= 0 and "inputs" not in info
    again, info2 = CacheEntry.for_inputs("unit", {"a": 1}, root=tmp_path).load_or_compute(compute)
    assert calls == [1], "a complete entry must not be computed again"
    torch.testing.assert_close(again["x"], first["x"], rtol=0, atol=0)  # the same file read twice
    torch.testing.assert_close(first["x"], torch.arange(6, dtype=torch.float64).reshape(2, 3).t(), rtol=0, atol=0)
    assert info2 == info
    CacheEntry.for_inputs("unit", {"a": 2}, root=tmp_path).load_or_compute(compute)
    assert calls == [1, 1], "other inputs are another entry"

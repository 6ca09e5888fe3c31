"""Each comparison method that does not apply says why in its own words (``compare.METHODS``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from metainf_core.compare import METHODS, CompareConfig
from metainf_core.influence.exact import MAX_EXACT_PARAMS
from metainf_core.learners import LearnerSpec


def _run(algo: str, q: int) -> SimpleNamespace:
    """What the applicability checks read of a run: its learner and its parameter count."""
    return SimpleNamespace(spec=LearnerSpec(algo, 3), params={"w": torch.zeros(q)})


def test_direct_if_has_its_own_reasons():
    protonet = METHODS["direct-if"].skip_reason(_run("protonet", 100))
    assert protonet is not None and "no weight adaptation" in protonet and "partial derivative" in protonet
    assert "task-IF" not in protonet
    assert METHODS["task-if"].skip_reason(_run("protonet", 100)) is None  # task-IF applies (= TLXML-exact, damped)
    # above MAX_EXACT_PARAMS both solve on HVPs (solver "auto" = CG); only a forced dense solve is refused
    assert METHODS["direct-if"].skip_reason(_run("maml", MAX_EXACT_PARAMS + 1)) is None
    assert METHODS["task-if"].skip_reason(_run("protonet", MAX_EXACT_PARAMS + 1)) is None
    dense = CompareConfig(solver="dense")
    big = METHODS["direct-if"].skip_reason(_run("maml", MAX_EXACT_PARAMS + 1), dense)
    assert big is not None and big.startswith("direct IF") and "task-IF" not in big and "Hessian-vector" in big
    assert METHODS["task-if"].skip_reason(_run("maml", MAX_EXACT_PARAMS + 1), dense).startswith("task-IF")
    assert METHODS["direct-if"].skip_reason(_run("maml", 100)) is None

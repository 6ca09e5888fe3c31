"""metainf compute core: few-shot datasets, fixed tasksets, meta-learners, checkpoints and
task-level influence (TLXML). Usable without the Streamlit app; never imports it.

The public Python API (``metainf_core.api``) is importable from here; it loads on first use, so
``import metainf_core`` (the CLI's first step) imports neither torch nor numpy::

    from metainf_core import Explainer, open_run
    ranking = Explainer(open_run("protonet-fashion-mnist")).fit().rank(7)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "DEMO_DIR",
    "EditResult",
    "Explainer",
    "ExplainerConfig",
    "NotFittedError",
    "Rankings",
    "Run",
    "__version__",
    "demos",
    "import_run",
    "open_run",
]  # fmt: skip
_API = frozenset(__all__) - {"__version__"}  # metainf_core.api's names


def __getattr__(name: str) -> Any:  # PEP 562: the API module is imported when one of its names is first used
    if name in _API:
        from metainf_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'metainf_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

"""softcar-federated: Flower + Opacus federated, differentially private fine-tuning of softcar.

The re-exports are resolved lazily (PEP 562): they import softcar, hence torch, and a ClientApp
process that only runs a SecAgg+ key-exchange stage must not pay for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from softcar_federated.config import FedConfig, NodeConfig
    from softcar_federated.validation import MalformedUpdateError

_LAZY = {
    "FedConfig": "softcar_federated.config",
    "NodeConfig": "softcar_federated.config",
    "MalformedUpdateError": "softcar_federated.validation",
}

__all__ = ["FedConfig", "MalformedUpdateError", "NodeConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'softcar_federated' has no attribute {name!r}")

"""softcar-federated: Flower + Opacus federated, differentially private fine-tuning of softcar."""

from __future__ import annotations

__version__ = "0.1.0"

from softcar_federated.config import FedConfig, NodeConfig
from softcar_federated.validation import MalformedUpdateError

__all__ = ["FedConfig", "MalformedUpdateError", "NodeConfig", "__version__"]

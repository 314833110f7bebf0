"""Validated configuration of a federated run.

Flower hands apps flat ``run_config`` / ``node_config`` dicts with kebab-case keys (from
``[tool.flwr.app.config]``, ``--run-config`` and ``--node-config``). They are parsed here into
pydantic models once, so a typo or a bad value fails at start-up with a clear message instead of
mid-round on some SuperNode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from softcar import TrainConfig

Mode = Literal["adapter", "adapter+head"]
StrategyName = Literal["fedavg", "fedavgm", "fedprox", "fedadam"]
DPMode = Literal["client", "client-level", "server", "none"]


def _kebab_to_snake(config: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in config.items()}


class FedConfig(BaseModel):
    """Everything the ServerApp and ClientApp agree on (the app's ``run_config``)."""

    model_config = ConfigDict(extra="forbid")

    num_server_rounds: int = Field(3, ge=1)
    mode: Mode = Field("adapter", description="What is federated: the adapter only, or adapter + shared head.")
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal term weight.")
    server_learning_rate: float = Field(
        0.0,
        ge=0,
        description="Server-side learning rate: FedAdam's eta, FedAvgM's step on the averaged update; "
        "0: the strategy's default (FedAdam 0.01, FedAvgM 1.0). With a shared head and non-IID documents "
        "FedAvgM at about the number of clients per round undoes the mean's dilution of each row's update.",
    )
    server_momentum: float = Field(0.0, ge=0, lt=1, description="FedAvgM server momentum.")
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_train_nodes: int = Field(1, ge=1)
    min_available_nodes: int = Field(
        1, ge=1, description="Low by default so a crashed SuperNode does not block the next round."
    )
    round_timeout: float = Field(600.0, gt=0, description="Seconds to wait for replies of a round.")
    federated_evaluation: bool = True

    # Local training
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1, description="Expected (Poisson) batch size.")
    learning_rate: float = Field(2e-4, gt=0)
    head_learning_rate: float = Field(2e-3, gt=0)
    max_query_length: int = Field(32, ge=4)
    pseudo_queries_per_document: int = Field(4, ge=0)

    # Differential privacy
    dp: DPMode = Field(
        "client",
        description="client: Opacus DP-SGD (example-level); client-level: DP-FedAvg (clipped updates, "
        "server noise); server: central DP wrapper; none.",
    )
    target_epsilon: float = Field(8.0, gt=0, description="Per-client budget; inf disables noise.")
    target_delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="Per-sample clipping norm of DP-SGD.")
    noise_multiplier: float = Field(0.0, ge=0, description="0: calibrate from target-epsilon over all planned rounds.")
    central_noise_multiplier: float = Field(1.0, ge=0)
    central_clipping_norm: float = Field(0.5, gt=0)
    central_num_sampled_clients: int = Field(0, ge=0, description="0: min-train-nodes.")

    # Client-level DP (DP-FedAvg), what local training updates, warm start
    population: int = Field(
        0, ge=0, description="client-level DP: clients in the federation (N, for the sample rate m/N and δ ≤ 1/N)."
    )
    clients_per_round: int = Field(
        0, ge=0, description="client-level DP: clients sampled per round (m); rounds with fewer are not released."
    )
    local_parts: Literal["adapter+head", "head"] = Field(
        "adapter+head", description="What local training updates; 'head' freezes the adapter (fewer DP'd parameters)."
    )
    local_question_rows: bool = Field(
        True,
        description="Each deployment keeps its feedback questions as question rows of its own serving "
        "retriever (softcar's update(), calibrated for the share of its own documents with feedback; "
        "never sent, not trained on, so no DP cost).",
    )
    warm_start: bool = Field(
        False, description="Server pre-trains on its public documents' pseudo-queries (no user questions) first."
    )

    # Secure aggregation (Flower SecAgg+; checked at start by secure_aggregation.check_config)
    secure_aggregation: bool = Field(False, description="SecAgg+: the server sees only the sum of updates.")
    secagg_num_shares: int = Field(0, ge=0, description="Shares of each node's secrets; 0: every node of the round.")
    secagg_reconstruction_threshold: int = Field(
        2, ge=1, description="Shares needed to unmask; more than half the shares, at most min-train-nodes."
    )
    secagg_clipping_range: float = Field(8.0, gt=0, description="Update values must lie in ±this to be quantised.")
    secagg_max_weight: float = Field(5000.0, gt=0, description="Largest num-examples a node may weigh in the sum.")

    # Data and model
    encoder: str = Field("", description="Base SLM folder; empty: the packaged all-MiniLM-L6-v2.")
    adapter: Literal["linear", "mlp"] = "linear"
    dataset: str = Field("", description="BEIR folder for partitions and server evaluation; empty: none.")
    iid: bool = False
    heldout_fraction: float = Field(0.5, gt=0, lt=1)
    output_dir: str = Field("", description="Where round logs, plots and checkpoints go; empty: a temp dir.")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FedConfig:
        if self.dp == "client" and math.isinf(self.target_epsilon) and self.noise_multiplier > 0:
            raise ValueError("noise-multiplier > 0 contradicts target-epsilon = inf")
        if self.dp == "client-level" and (self.population == 0 or self.clients_per_round == 0):
            raise ValueError("dp='client-level' needs population and clients-per-round (both > 0)")
        return self

    @property
    def client_dp_enabled(self) -> bool:
        """DP-SGD runs when client DP is on and the budget is finite."""
        return self.dp == "client" and not math.isinf(self.target_epsilon)

    def train_config(self, seed: int | None = None) -> TrainConfig:
        """The core ``TrainConfig`` of local training: the same trainer and defaults as ``fit``,
        with this run's batch size, learning rates and pseudo-queries."""
        return TrainConfig(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            head_learning_rate=self.head_learning_rate,
            pseudo_queries_per_document=self.pseudo_queries_per_document,
            seed=self.seed if seed is None else seed,
            train_adapter=self.local_parts == "adapter+head",
            show_progress=False,
        )

    @property
    def server_step(self) -> float:
        """The server learning rate in force: ``server_learning_rate``, or the strategy's default
        when it is 0 (FedAdam's eta 0.01, FedAvgM 1.0)."""
        return self.server_learning_rate or (0.01 if self.strategy == "fedadam" else 1.0)

    @property
    def shared_parts(self) -> tuple[str, ...]:
        return ("adapter", "head") if self.mode == "adapter+head" else ("adapter",)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedConfig:
        """Parse Flower's run_config (kebab-case keys); unknown keys are an error."""
        values = _kebab_to_snake(run_config)
        if isinstance(values.get("target_epsilon"), str):
            values["target_epsilon"] = float(values["target_epsilon"])
        return cls.model_validate(values)


class NodeConfig(BaseModel):
    """Per-SuperNode settings (``flower-supernode --node-config``).

    Either ``partition-id``/``num-partitions`` (a slice of ``dataset``: simulation, tests,
    ``softcar-fed local``) or ``checkpoint`` (a real deployment's saved retriever, plus its own
    feedback file).
    """

    model_config = ConfigDict(extra="ignore")

    partition_id: int | None = Field(None, ge=0)
    num_partitions: int | None = Field(None, ge=1)
    checkpoint: str | None = None
    feedback: str | None = Field(None, description="JSONL of {'query','doc_id'} pairs.")
    heldout: str | None = Field(None, description="JSONL of {'query','doc_id'} pairs for evaluation only.")
    work_dir: str | None = Field(None, description="Where the federated copy and privacy ledger live.")
    poison: str | None = Field(None, description="Test hook: 'nan' | 'shape' | 'keys' corrupts every update.")
    crash_at_round: int | None = Field(None, description="Test hook: raise inside train at this round.")
    audit_log: str | None = Field(None, description="Folder: the wire bytes of every reply this node sends.")
    worker: str | None = Field(
        None, description="Socket of this node's long-lived worker (`softcar-fed worker`): training runs there."
    )

    @model_validator(mode="after")
    def _check(self) -> NodeConfig:
        if self.checkpoint is None and (self.partition_id is None or self.num_partitions is None):
            raise ValueError("node config needs either checkpoint=... or partition-id and num-partitions")
        if (
            self.partition_id is not None
            and self.num_partitions is not None
            and self.partition_id >= self.num_partitions
        ):
            raise ValueError(f"partition-id {self.partition_id} >= num-partitions {self.num_partitions}")
        return self

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeConfig:
        values = {k: (None if v == "" else v) for k, v in _kebab_to_snake(node_config).items()}
        return cls.model_validate(values)

"""Per-round overhead of the ClientApp that is not training: before/after keeping the loaded
deployment in the node's process, and before/after importing torch only for training messages.

Two settings, both measured in this one run:

* **Fresh process per message** (Flower 1.41 deployment mode: a SuperNode starts a new
  ``flwr-clientapp`` process for every message, in ``subprocess`` and ``process`` isolation
  alike, so nothing in memory survives a round). We time a fresh interpreter loading the
  ClientApp module (all a message that does not train pays: SecAgg+'s three key-exchange stages)
  and loading it plus the training stack (what every message paid before, and what a training
  message still pays), and opening the deployment from its federated copy (what every training
  message pays on top).
* **Long-lived process** (Flower's simulation engine keeps its ClientApp actors; in-process use):
  ``rounds`` real ``client_app.train`` calls on the same node. "Before": the deployment cache
  and the noise calibration memo are cleared before every round (the ClientApp reloaded the
  deployment and re-ran Opacus' noise calibration every round); "after": both kept.
  ``overhead = round-s - train-s`` as the ClientApp reports them.

Run (the packaged MiniLM, python-faq beside the repository):

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python federated/benchmarks/bench_round_overhead.py \
        --out federated/benchmarks/round-overhead.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "python-faq"


def fresh_process_seconds(code: str, repeats: int) -> list[float]:
    """Wall seconds of ``python -c code`` in a new interpreter, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="BEIR folder (default: python-faq).")
    parser.add_argument("--encoder", default="", help="Encoder folder (default: the packaged MiniLM).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Fresh-process timings per row.")
    parser.add_argument("--out", default="", help="Write the JSON here.")
    args = parser.parse_args()

    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

    from softcar import format_table, write_json
    from softcar_federated import client_app, partitions
    from softcar_federated.config import FedConfig, NodeConfig
    from softcar_federated.deployment import LocalDeployment, clear_deployment_cache

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="softcar-overhead-"))
    run_config = {
        "encoder": args.encoder,
        "dataset": str(Path(args.dataset).resolve()),
        "mode": "adapter+head",
        "num-server-rounds": args.rounds,
        "batch-size": 32,
        "max-query-length": 24,
        "pseudo-queries-per-document": 1,
        "target-epsilon": 8.0,
    }
    node_config = {"partition-id": 0, "num-partitions": 2}
    config = FedConfig.from_run_config({**run_config, "output-dir": str(work / "x")})
    split = partitions.load_split(args.dataset)
    server = partitions.build_retriever(
        split.corpus, args.encoder or None, max_query_length=24, pseudo_queries=1, seed=config.seed
    )
    arrays = ArrayRecord(torch_state_dict=server.trainable_state_dict(parts=config.shared_parts))
    digest = partitions.doc_ids_digest(server.documents)

    def message(server_round: int) -> Message:
        metadata = Metadata(
            run_id=1,
            message_id=f"m{server_round}",
            src_node_id=0,
            dst_node_id=1,
            reply_to_message_id="",
            group_id=str(server_round),
            created_at=0.0,
            ttl=600.0,
            message_type=MessageType.TRAIN,
        )
        record = ConfigRecord({"server-round": server_round, "doc-ids-sha256": digest})
        return Message(RecordDict({"arrays": arrays, "config": record}), metadata=metadata)

    rows: list[dict] = []
    per_round: list[dict] = []
    for label, reload in (("before: reload every round", True), ("after: kept loaded", False)):
        out_dir = work / ("reload" if reload else "cached")
        rc = {**run_config, "output-dir": str(out_dir)}
        context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=rc)
        clear_deployment_cache()
        overheads = []
        for server_round in range(1, args.rounds + 1):
            if reload:  # as before: reload the deployment and re-calibrate the noise every round
                clear_deployment_cache()
                if client_app.NOISE_PLAN_STATE_KEY in context.state.config_records:
                    del context.state.config_records[client_app.NOISE_PLAN_STATE_KEY]
            metrics = client_app.train(message(server_round), context).content["metrics"]
            overhead = float(metrics["handler-s"]) - float(metrics["train-s"])
            overheads.append(overhead)
            per_round.append(
                {
                    "setting": label,
                    "round": server_round,
                    "round_s": round(float(metrics["handler-s"]), 3),
                    "train_s": round(float(metrics["train-s"]), 3),
                    "overhead_s": round(overhead, 3),
                }
            )
        later = overheads[1:] or overheads
        rows.append(
            {
                "setting": f"long-lived process, {label}",
                "round 1 overhead (s)": round(overheads[0], 2),
                "rounds 2+ overhead (s, mean)": round(statistics.mean(later), 2),
            }
        )
    clear_deployment_cache()

    # Opening the deployment from its federated copy: what a fresh process pays per training message.
    node = NodeConfig.from_node_config(node_config)
    opens = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        LocalDeployment.open(FedConfig.from_run_config({**run_config, "output-dir": str(work / "cached")}), node, 1)
        opens.append(time.perf_counter() - started)

    light = "import softcar_federated.client_app"
    heavy = light + "; import softcar_federated.local_training, softcar_federated.deployment"
    fresh = {
        "bare interpreter": fresh_process_seconds("pass", args.repeats),
        "load the ClientApp module (after; all a SecAgg+ key stage needs)": fresh_process_seconds(light, args.repeats),
        "load it + the training stack (before: every message; after: training messages)": fresh_process_seconds(
            heavy, args.repeats
        ),
    }
    for name, times in fresh.items():
        rows.append({"setting": f"fresh process: {name}", "median (s)": round(statistics.median(times), 2)})
    rows.append(
        {
            "setting": "fresh process: open the deployment from its federated copy",
            "median (s)": round(statistics.median(opens), 2),
        }
    )
    payload = {
        "command": " ".join(["bench_round_overhead.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "note": "2-core machine shared with other developers' jobs; timings are wall-clock under that load",
        "dataset": str(args.dataset),
        "encoder": args.encoder or "packaged all-MiniLM-L6-v2",
        "rounds": args.rounds,
        "rows": rows,
        "per_round": per_round,
        "fresh_process_seconds": fresh,
        "open_deployment_seconds": opens,
    }
    print(format_table(rows))
    print(format_table(per_round))
    print(f"load average before {load_before}, after {payload['load_average_after']}")
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()

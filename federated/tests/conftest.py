"""Shared fixtures: a tiny random encoder, a tiny BEIR corpus, TLS material and SuperNode keys.

Everything is generated in the test session (no downloads); encoders come from
``softcar.testing.make_tiny_encoder`` so a whole federation runs in seconds per round on a CPU.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict

from softcar import ClassifierRetriever
from softcar_federated import partitions
from softcar_federated.config import FedConfig
from softcar_federated.supervisor import is_alive

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

TOPICS = {
    "garden": "soil seeds roses compost tomato watering pruning mulch tulip shade hedge lawn".split(),
    "kitchen": "flour oven butter recipe knife simmer garlic bake pasta sauce onion whisk".split(),
    "network": "router packet latency socket firewall bandwidth dns switch cable proxy vpn port".split(),
}


def write_beir(folder: Path, docs_per_topic: int = 8, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for topic, words in TOPICS.items():
        for i in range(docs_per_topic):
            key = rng.sample(words, 3)
            text = (
                " ".join(rng.choice(words) for _ in range(12)) + f". The {key[0]} {key[1]} {key[2]} guide number {i}."
            )
            doc_id = f"{topic}-{i}"
            corpus.append({"_id": doc_id, "title": "", "text": text})
            queries.append({"_id": f"q-{doc_id}", "text": f"how about {key[0]} {key[1]} {key[2]} {i}"})
            qrels.append(f"q-{doc_id}\t{doc_id}\t1")
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    from softcar.testing import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert", kind="bert", hidden_size=32)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("data") / "tiny-beir")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from softcar_federated.supervisor import TLSFiles

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "softcar test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TLSFiles(ca_cert=folder / "ca.crt", server_cert=folder / "server.pem", server_key=folder / "server.key")


@pytest.fixture
def supernode_keys(tmp_path: Path) -> tuple[Path, Path]:
    """An EC key pair in OpenSSH format, as Flower's SuperNode authentication expects."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = tmp_path / "node_key"
    public = tmp_path / "node_key.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    private.chmod(0o600)
    return private, public


def client_strings(dataset: Path, num_partitions: int, partition_id: int, mode: str) -> set[str]:
    """Every string of one deployment's own data: its documents' ids and texts, its feedback and
    held-out questions, i.e. what must never leave the node."""
    from softcar_federated import partitions

    split = partitions.load_split(dataset)
    part = partitions.partition(split, num_partitions, False, 0)[partition_id]
    own = set(part.doc_ids)
    docs = [d for d in split.corpus if d.id in own]
    strings = {d.text for d in docs} | {q for q, _ in part.feedback} | {q for q, _ in part.heldout}
    strings |= {d.id for d in docs} | {doc_id for _, doc_id in part.feedback}
    return {s for s in strings if s}


def leaks(blob: bytes, strings: set[str]) -> list[str]:
    """The strings (or their first 20 characters, to catch truncation) found in ``blob``."""
    found = []
    for text in strings:
        for needle in {text, text[:20]}:
            if len(needle) >= 4 and needle.encode("utf-8") in blob:
                found.append(needle)
    return found


def node_message(
    content: RecordDict,
    message_type: str = "train",
    *,
    run_id: int = 1,
    message_id: str = "m",
    src_node_id: int = 0,
    dst_node_id: int = 1,
    reply_to_message_id: str = "",
    group_id: str = "",
    ttl: float = 600.0,
) -> Message:
    """A Flower ``Message`` as the SuperLink would deliver it, for calling ClientApps and
    strategies in-process (server → node by default; swap the ids for a node's reply)."""
    metadata = Metadata(
        run_id=run_id,
        message_id=message_id,
        src_node_id=src_node_id,
        dst_node_id=dst_node_id,
        reply_to_message_id=reply_to_message_id,
        group_id=group_id,
        created_at=0.0,
        ttl=ttl,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)


def dp_client(
    encoder: str, dataset: Path, output: Path, node_config: dict[str, Any]
) -> tuple[FedConfig, ArrayRecord, Context]:
    """What a ClientApp handler gets in round 1 of a 2-round DP run (ε = 4) on ``dataset``: the
    run's config, the server's initial shared arrays, and node 1's fresh context."""
    run_config: dict[str, Any] = {
        "encoder": encoder,
        "dataset": str(dataset),
        "output-dir": str(output),
        "num-server-rounds": 2,
        "batch-size": 8,
        "max-query-length": 16,
        "target-epsilon": 4.0,
        "pseudo-queries-per-document": 2,
    }
    config, server = server_start(run_config)
    arrays = ArrayRecord(torch_state_dict=server.trainable_state_dict(parts=config.shared_parts))
    context = Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    return config, arrays, context


def server_start(run_config: dict[str, Any]) -> tuple[FedConfig, ClassifierRetriever]:
    """The run's config and the untrained retriever the server starts from over the run's
    dataset; round 1's shared state is its ``trainable_state_dict(parts=config.shared_parts)``."""
    config = FedConfig.from_run_config(run_config)
    split = partitions.load_split(config.dataset)
    server = partitions.build_retriever(split.corpus, config.encoder, max_query_length=config.max_query_length)
    return config, server


def processes_in(folder: Path) -> list[int]:
    """Live processes whose cwd or command line mentions ``folder`` (leak check)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(folder)) or str(folder) in cmd) and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found

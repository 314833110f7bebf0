"""What the two framework examples share: their command line and their data."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from transformers.utils import logging as hf_logging

from softcar import BeirDataset, load_beir, packaged_dataset_path
from softcar.errors import DatasetError

FAQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "python-faq"


def parse_args(description: str) -> argparse.Namespace:
    """``--data`` and ``--epochs``; also quiets logging and transformers' progress bars."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", help="a BEIR folder (default: the packaged chatterbot_qa set)")
    parser.add_argument(
        "--epochs", type=int, default=2, help="softcar training epochs (default 2: under 2 minutes on 2 CPU cores)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()
    return args


def load_data(path: str | None) -> tuple[str, BeirDataset]:
    """The packaged chatterbot_qa set; the Python FAQ (../shared/data/python-faq) as a fallback."""
    if path:
        return Path(path).name, load_beir(path)
    try:
        folder = packaged_dataset_path("chatterbot_qa")
    except DatasetError:
        folder = FAQ
    return folder.name, load_beir(folder)

"""Export the chosen checkpoint as a plain sentence-transformers folder + ``mrlkit.json``.

A Ray checkpoint of this stage holds ``checkpoint/`` = the Hugging Face trainer's
folder: the sentence-transformers model files plus optimizer, scheduler, RNG and
trainer state. Only the model files are exported, published atomically to
``<root>/models/<run>/`` so ``SentenceTransformer(path, truncate_dim=d)`` loads it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mrlkit import storage
from mrlkit.errors import MrlkitError
from mrlkit.models import MrlMetadata, write_metadata
from mrlkit.train.callbacks import HF_CHECKPOINT_DIR

log = logging.getLogger("mrlkit.train")

# Trainer state, not model: left out of the export.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt")


def is_model_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("eval/") or name in TRAINER_STATE_FILES:
        return False
    return not (name.startswith("rng_state") and name.endswith(".pth"))


def checkpoint_uri(checkpoint: Any, root: str) -> str:
    """A Ray ``Checkpoint``'s location as a storage URI (its path is bucket/key on S3, absolute locally)."""
    if storage.is_s3_uri(root):
        return f"s3://{checkpoint.path.lstrip('/')}"
    return checkpoint.path


def export_checkpoint(checkpoint_location: str, model_uri: str, meta: MrlMetadata) -> dict[str, Any]:
    """Download the model files of one checkpoint, add ``mrlkit.json``, publish at ``model_uri``."""
    source = storage.join(checkpoint_location, HF_CHECKPOINT_DIR)
    files = [rel for rel in storage.list_files(source) if is_model_file(rel)]
    if "modules.json" not in files:
        raise MrlkitError(f"{source}: not a sentence-transformers checkpoint (no modules.json); cannot export")
    with tempfile.TemporaryDirectory(prefix="mrlkit-export-") as tmp:
        for rel in files:
            storage.download_file(storage.join(source, rel), Path(tmp, rel))
        write_metadata(tmp, meta)
        marker = storage.publish_dir(tmp, model_uri, extra={"source_checkpoint": checkpoint_location})
    log.info("train: exported %s -> %s (%d files)", checkpoint_location, model_uri, len(marker["files"]))
    return marker

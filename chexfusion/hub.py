"""Where a run comes from: a local folder, or a Hugging Face Hub id resolved offline-first.

A Hub id (``org/name``, optionally ``org/name@revision``) is looked up in the
local Hugging Face cache only, unless the caller allows the network
(``allow_network=True`` or ``CHEXFUSION_ALLOW_NETWORK=1``; ``HF_HUB_OFFLINE=1``
always wins). A model that is not there is one line saying how to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def network_allowed(allow_network: bool | None = None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if allow_network is not None:
        return allow_network
    return os.environ.get("CHEXFUSION_ALLOW_NETWORK", "").lower() in ("1", "true", "yes")


def resolve_run(spec: str | os.PathLike, allow_network: bool | None = None) -> Path:
    """A local folder as it is; a Hub id as its snapshot folder in the Hugging Face cache."""
    path = Path(spec)
    if path.exists() or not _HUB_ID.match(str(spec)):
        return path
    repo_id, _, revision = str(spec).partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    online = network_allowed(allow_network)
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=not online))
    except LocalEntryNotFoundError:
        raise UserError(f"'{spec}' is neither a local folder nor in the Hugging Face cache: download it first "
                        f"(huggingface-cli download {repo_id}) or allow the network (CHEXFUSION_ALLOW_NETWORK=1)"
                        ) from None
    except Exception as exc:  # huggingface_hub raises many types (repository not found, gated, HTTP errors)
        raise UserError(f"could not get '{spec}' from the Hugging Face Hub: {type(exc).__name__}: {exc}") from None

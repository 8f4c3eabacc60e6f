"""Where a run or a pretrained encoder comes from: a local folder, or a Hugging Face Hub id resolved offline-first.

A Hub id (``org/name``, optionally ``org/name@revision``) is looked up in the
local Hugging Face cache only, unless the user allows the network: the
``--allow-network`` flag of the commands that load models, the config keys
``model.allow_network`` (stage 1) / ``features.allow_network`` (features, stage 2),
``allow_network=True`` in the API, or ``CHEXFUSION_ALLOW_NETWORK=1``.
``HF_HUB_OFFLINE=1`` always wins. A model that is not there is one line saying
how to get it, naming the opt-in.

The flag and the config keys hold for one command through :func:`network_scope`,
so every loader below it (run ids, ``hf:`` / ``open_clip:`` encoder ids) sees the
same answer without the choice being passed down each call.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from .errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_SCOPE: ContextVar[bool | None] = ContextVar("chexfusion_allow_network", default=None)
# How a refusal names the opt-in.
OPT_IN = "--allow-network (or model.allow_network / features.allow_network: true, or CHEXFUSION_ALLOW_NETWORK=1)"


def network_allowed(allow_network: bool | None = None) -> bool:
    """An explicit ``allow_network``, else the command's :func:`network_scope`, else the environment."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if allow_network is not None:
        return allow_network
    if _SCOPE.get() is not None:
        return _SCOPE.get()
    return os.environ.get("CHEXFUSION_ALLOW_NETWORK", "").lower() in ("1", "true", "yes")


@contextmanager
def network_scope(allow: bool):
    """The network allowed to every loader inside (``allow`` true); false leaves the outer choice as it was."""
    token = _SCOPE.set(True) if allow else None
    try:
        yield
    finally:
        if token is not None:
            _SCOPE.reset(token)


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
                        f"(hf download {repo_id}) or allow the network with {OPT_IN}") from None
    except Exception as exc:  # huggingface_hub raises many types (repository not found, gated, HTTP errors)
        raise UserError(f"could not get '{spec}' from the Hugging Face Hub: {type(exc).__name__}: {exc}") from None

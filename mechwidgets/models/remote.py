"""Remote models: every trace runs through nnsight's remote execution (NDIF).

``load_model(name, remote=True)`` keeps only the architecture here (meta tensors, no
weights) and ships each trace to NDIF; ``remote="https://host"`` ships it to a
self-hosted NDIF; ``remote="local"`` is nnsight's test backend, which serialises a trace
exactly as for NDIF and runs it here with this package's modules hidden, so a trace that
passes it references nothing a server lacks. The model is wrapped in nnsight's
``TransformersModel`` (the class NDIF keys its deployments by) instead of a plain
``NNsight``.

What a traced block may reference follows from that: envoys looked up before the block,
tensors, plain values, ``torch`` and functions made of those (nnsight ships such a
function by its source), never a mechwidgets object. The actions slice or reduce inside
the block before ``.save()``, so what comes back is the pooled activations and metric
values (:func:`returned_bytes` measures it).

>>> model = load_model("meta-llama/Llama-3.1-70B", remote=True)   # NDIF_API_KEY set
>>> cube = extract(model, task)        # lands in the local cube cache; reruns are offline
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nnsight
import torch

from mechwidgets.core.errors import ModelError
from mechwidgets.models import zoo

#: where NDIF users get an API key
NDIF_KEYS = "https://login.ndif.us"


def check_remote(name_or_module: Any, remote: Any) -> None:
    """Raise a one-line ModelError, before any loading, for a remote setting that cannot run.

    ``remote`` must be False, True, ``"local"`` or an ``http(s)://`` URL; NDIF runs Hugging
    Face hub models by id (not a zoo model, a local folder or an in-memory module), and
    public NDIF needs an API key (``NDIF_API_KEY``).
    """
    if remote is False or remote is None or remote == "local":
        return
    if remote is not True and not (
        isinstance(remote, str) and remote.startswith(("http://", "https://"))
    ):
        raise ModelError(
            f"remote={remote!r} is not a remote setting: use True (NDIF), an NDIF URL "
            "('https://host') or 'local' (nnsight's serialising test backend)"
        )
    name = name_or_module if isinstance(name_or_module, str) else None
    if name is None or name in zoo.list_models() or Path(name).expanduser().exists():
        what = "an in-memory model" if name is None else f"'{name}' (not a hub id)"
        raise ModelError(
            f"NDIF runs Hugging Face hub models by id, and {what} is not one; run it here, "
            "or with remote='local' to test the remote path"
        )
    if remote is True and not nnsight.CONFIG.API.APIKEY:
        raise ModelError(
            "remote=True runs on NDIF and needs an API key: set NDIF_API_KEY (get one at "
            f"{NDIF_KEYS}), or pass remote='local' to test the remote path here"
        )


def remote_model(
    name: str, remote: bool | str, revision: str | None, dtype: str | None
) -> tuple[torch.nn.Module, Any, str, str, str, Any]:
    """The architecture of hub model ``name`` on the meta device (no weights), its tokenizer
    and identity, and the nnsight wrapper that ships traces to NDIF.

    Returns ``(module, tokenizer, name, revision, source, wrapper)``.
    """
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        wrapped = nnsight.TransformersModel(name, revision=revision, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # offline, unknown id
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"cannot read the config and tokenizer of '{name}' ({first}); a remote model "
            "still needs them here: check the hub id and the network"
        ) from None
    hf = wrapped._module
    revision = getattr(hf.config, "_commit_hash", None) or revision or "main"
    return hf, wrapped.tokenizer, name, revision, f"hf:{name}@{revision}", wrapped


def remote_wrapper(hf: torch.nn.Module, tokenizer: Any) -> Any:
    """Wrap a model whose weights are here in nnsight's remotable ``TransformersModel``
    (for ``remote="local"``), keeping the tokenizer's padding side as it was."""
    side = tokenizer.padding_side
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nnsight already serves")
            wrapped = nnsight.TransformersModel(hf, tokenizer=tokenizer)
    except ValueError as exc:
        raise ModelError(f"nnsight cannot run this model remotely: {exc}") from None
    tokenizer.padding_side = side
    return wrapped


def returned_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (nested dicts, lists and tuples): what a remote
    trace sends back for its saved values, less pickling overhead."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(returned_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(returned_bytes(v) for v in value)
    return 0


@contextlib.contextmanager
def recorded_traces() -> Iterator[list[list[Any]]]:
    """Within the block, every trace run through nnsight's ``remote="local"`` backend adds
    the list of values it saved (what NDIF would send back) to the yielded list; values
    saved in local traces are not recorded. For tests and ``bench/remote.py``.

    >>> with recorded_traces() as traces:
    ...     extract(remote_model, task)
    >>> [returned_bytes(saved) for saved in traces]
    """
    from nnsight.intervention.backends.local import LocalSimulationBackend

    traces: list[list[Any]] = []
    active: list[bool] = []
    run, save = LocalSimulationBackend.__call__, nnsight.save

    def counted(self: LocalSimulationBackend, tracer: Any) -> None:
        traces.append([])
        active.append(True)
        try:
            run(self, tracer)
        finally:
            active.pop()

    def recorded(value: Any) -> Any:
        if active:  # saved inside a remote trace, not a local one
            traces[-1].append(value)
        return save(value)

    LocalSimulationBackend.__call__ = counted
    nnsight.save = recorded
    try:
        yield traces
    finally:
        LocalSimulationBackend.__call__ = run
        nnsight.save = save

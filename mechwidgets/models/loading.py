"""Load a model by name or wrap one already built, and reach its components by kind.

:func:`load_model` resolves a name in the embedded zoo first, then as a Hugging Face id
(local cache or hub), and returns a :class:`Model`: the ``nnsight`` wrapper, the
architecture :class:`~mechwidgets.models.adapters.Adapter`, the tokenizer, the sizes and
the hashes that key the activation cache. Components are reached through the adapter
table (``model.attn(3)``, ``model.mlp_out_proj(3)``), never through module names.

>>> model = load_model("toy-grammar")
>>> with model.nn.trace(**model.tokenize(["the cat sleeps"])):
...     hidden = model.block(0).output.save()
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import nnsight
import torch
import transformers

from mechwidgets.core.components import ModelShape
from mechwidgets.core.errors import ModelError, TaskError
from mechwidgets.models import zoo
from mechwidgets.models.adapters import (
    Adapter,
    adapter_for,
    auto_class_for,
    config_value,
    walk,
)
from mechwidgets.models.card import ModelCard, card_path, save_card, source_of
from mechwidgets.models.remote import check_remote, remote_model, remote_wrapper

#: the component sites a :class:`Model` can reach; each is a path in the adapter table
Site = Literal["block", "attn", "mlp", "attn_out_proj", "mlp_out_proj"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: one tensor's storage address, in-place version counter, dtype and shape
TensorState = tuple[int, int, torch.dtype, tuple[int, ...]]


@dataclass
class Model:
    """A loaded model: nnsight wrapper, adapter, tokenizer, sizes and identity.

    Parameters
    ----------
    nn : the ``nnsight.NNsight`` wrapper to trace.
    hf : the wrapped Hugging Face module.
    adapter : where the architecture keeps its components.
    tokenizer : the model's tokenizer (a pad token is set when it had none).
    name : the zoo name, HF id, or class name of an in-memory model.
    revision : the resolved revision (commit or weights hash), None for in-memory models.
    source : ``zoo:``/``hf:``/``local:`` identity of a named model; None means hash the
        weights.
    """

    nn: nnsight.NNsight
    hf: torch.nn.Module
    adapter: Adapter
    tokenizer: Any
    name: str
    revision: str | None = None
    source: str | None = None
    #: each tensor's storage and in-place version when loaded (see ``identity``)
    loaded_state: tuple[TensorState, ...] = field(default=(), repr=False, compare=False)
    #: the last identity computed and the tensor states it was computed for
    _identity_memo: tuple[tuple[TensorState, ...], str | None, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: envoys looked up so far, by site and layer (nnsight's tree is fixed once wrapped)
    _envoys: dict[tuple[str, int], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: where traces run: False here, ``"local"`` nnsight's serialising test backend, True
    #: NDIF, or a self-hosted NDIF's URL (see :func:`load_model`)
    remote: bool | str = field(default=False, compare=False)

    @cached_property
    def shape(self) -> ModelShape:
        """Layers, heads and MLP width, for checking selectors."""
        return ModelShape(
            n_layers=len(self._blocks(self.hf.base_model)),
            n_heads=config_value(self.hf.config, self.adapter.n_heads_key),
            d_mlp=self.out_proj_weight("mlp_out_proj", 0).shape[0],
        )

    @cached_property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return config_value(self.hf.config, self.adapter.d_model_key)

    @cached_property
    def d_head(self) -> int:
        """Width of one attention head."""
        key = self.adapter.d_head_key
        value = getattr(self.hf.config, key, None) if key else None
        return value if isinstance(value, int) else self.d_model // self.shape.n_heads

    @cached_property
    def max_context(self) -> int:
        """The longest input in tokens."""
        return config_value(self.hf.config, self.adapter.max_context_key)

    @cached_property
    def n_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.hf.parameters())

    @property
    def identity(self) -> str:
        """What the weights are now, for cache keys and bundles.

        A hash of the current weights, after the name and revision of a named model, so an
        edit after loading (a planted neuron, say) never reuses a stale cube. A named model
        over ``HASH_LIMIT`` parameters is keyed by name and revision alone while its
        tensors are the loaded ones, unedited.

        The hash is computed once per state of the weights, not per call: it is kept with
        each parameter's and buffer's storage address, dtype, shape and torch's in-place
        version counter, and recomputed only when one of those changed (an in-place edit,
        ``load_state_dict``, ``.to(dtype)``, a replaced module). Hashing costs 0.14-0.16 s of
        CPU at 70M parameters and ran on every extraction before; the check costs
        microseconds. Edits through ``.data`` bypass torch's version counters: after one,
        call :meth:`forget_identity` (and for a large named model also set
        ``model.source = None`` to key it by its weights).
        """
        state = _param_state(self.hf)
        memo = self._identity_memo
        if memo is not None and memo[0] == state and memo[1] == self.source:
            return memo[2]
        # a model on NDIF has no local weights (meta tensors): its name and revision key it
        remote = self.device.type == "meta"
        large = self.source is not None and (remote or self.n_params > HASH_LIMIT)
        if large and state == self.loaded_state:
            identity = str(self.source)
        else:
            prefix = f"{self.source}+" if self.source else ""
            identity = f"{prefix}weights:{weights_hash(self.hf)}"
        self._identity_memo = (state, self.source, identity)
        return identity

    def forget_identity(self) -> None:
        """Hash the weights again at the next :attr:`identity`: call it after editing
        weights through ``.data``, which torch's version counters do not see."""
        self._identity_memo = None

    @cached_property
    def tokenizer_hash(self) -> str:
        """A hash of the tokenizer's full definition (vocabulary, normalizer, special tokens)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = (
            backend.to_str()
            if backend is not None
            else json.dumps(sorted(self.tokenizer.get_vocab().items()))
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the weights."""
        return next(self.hf.parameters()).dtype

    def trace(self, **inputs: Any) -> Any:
        """An nnsight trace of ``inputs`` (tensors, and model options such as
        ``use_cache=False``), run here or shipped as :attr:`remote` says.

        A remote trace's block is serialised and run where the model is, so it may
        reference only what an NDIF server has: envoys (from :meth:`envoy` and friends,
        looked up before the block), tensors, plain values, torch, and functions built
        from those; never a :class:`Model` or another mechwidgets object.
        """
        if self.remote:
            return self.nn.trace(**inputs, remote=self.remote)
        return self.nn.trace(**inputs)

    def module(self, site: Site, layer: int) -> torch.nn.Module:
        """The torch module at ``site`` of block ``layer`` (for hooks and weights)."""
        return walk(self._blocks(self.hf.base_model)[layer], self._path(site))

    def envoy(self, site: Site, layer: int) -> Any:
        """The nnsight envoy at ``site`` of block ``layer`` (for use inside a trace)."""
        # Looked up by module, not by attribute path: nnsight renames submodules whose
        # names clash with its own attributes (BERT's ``output`` becomes ``E_output``).
        # Kept: walking the module tree for the 18 reads of an extraction cost 0.08 ms.
        found = self._envoys.get((site, layer))
        if found is None:
            found = self._envoys[site, layer] = self.nn.interleaver.envoys[
                id(self.module(site, layer))
            ]
        return found

    def block(self, layer: int) -> Any:
        """Envoy of block ``layer``; its output is the residual stream after the block."""
        return self.envoy("block", layer)

    def embeddings(self) -> Any:
        """Inside a trace: the embedding output, i.e. the residual stream entering block 0.

        Token embeddings, plus position embeddings, LayerNorm and dropout where the family
        has them (BERT's ``embeddings`` module output, GPT-2's ``wte + wpe``): the hidden
        state HF returns first with ``output_hidden_states``. The cube's layer
        :data:`~mechwidgets.core.components.EMBED`.
        """
        return self.block(0).input

    def attn(self, layer: int) -> Any:
        """Envoy whose output (first element if a tuple) is the attention's write."""
        return self.envoy("attn", layer)

    def mlp(self, layer: int) -> Any:
        """Envoy whose output is the MLP's write into the residual stream."""
        return self.envoy("mlp", layer)

    def attn_out_proj(self, layer: int) -> Any:
        """Envoy of the attention output projection; its input is the concatenated heads."""
        return self.envoy("attn_out_proj", layer)

    def mlp_out_proj(self, layer: int) -> Any:
        """Envoy of the MLP down projection; its input is the neuron activations."""
        return self.envoy("mlp_out_proj", layer)

    def out_proj_weight(self, site: Literal["attn_out_proj", "mlp_out_proj"], layer: int) -> Any:
        """The projection's weight as an (in, out) matrix, whatever the module stores."""
        weight = self.module(site, layer).weight
        return weight if self.adapter.out_proj_transposed else weight.T

    def out_proj_bias(self, site: Literal["attn_out_proj", "mlp_out_proj"], layer: int) -> Any:
        """The projection's bias, or None."""
        return self.module(site, layer).bias

    def tokenize(
        self,
        texts: list[str],
        padding_side: Literal["left", "right"] | None = None,
        input_ids: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad a batch of texts into model inputs, on the model's device.

        Returns ``input_ids``, ``attention_mask`` and ``position_ids`` (counted over the
        non-pad tokens, so left and right padding give the same activations); pass them
        as ``model.nn.trace(**inputs)``. Texts longer than the context raise TaskError.
        ``input_ids``, the texts' token ids when the caller has them (unpadded, as the
        tokenizer gives them), are padded instead of tokenizing the texts again.
        """
        pad = {"padding": True, "padding_side": padding_side, "return_tensors": "pt"}
        if input_ids is None:
            enc = self.tokenizer(list(texts), **pad)
        else:  # the same tensors as tokenizing the texts with padding
            enc = self.tokenizer.pad({"input_ids": input_ids}, **pad)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        self.check_context(mask.sum(1).tolist())
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        }
        device = "cpu" if self.device.type == "meta" else self.device  # NDIF: sent from here
        return {k: v.to(device) for k, v in inputs.items()}

    def check_context(self, lengths: Sequence[int]) -> None:
        """Raise a one-line TaskError naming the first text longer than the context."""
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > self.max_context:
            raise TaskError(
                f"text {longest} has {lengths[longest]} tokens but {self.name} reads at most "
                f"{self.max_context}; shorten it"
            )

    def _path(self, site: Site) -> str:
        return "" if site == "block" else getattr(self.adapter, site)

    def _blocks(self, base: Any) -> Any:
        return walk(base, self.adapter.blocks)

    def __repr__(self) -> str:
        s = self.shape
        return (
            f"Model({self.name!r}, family={self.adapter.family}, layers={s.n_layers}, "
            f"heads={s.n_heads}, d_model={self.d_model}, d_mlp={s.d_mlp}, "
            f"dtype={str(self.dtype).removeprefix('torch.')})"
        )


#: named models up to this many parameters are keyed by a hash of their current weights;
#: hashing 100M float32 parameters takes well under a second on a CPU
HASH_LIMIT = 100_000_000


def _param_state(module: torch.nn.Module) -> tuple[TensorState, ...]:
    """Each parameter's and buffer's storage address, version counter, dtype and shape.

    Tied weights appear once (``parameters()`` deduplicates them). About 3 us per tensor.
    """
    tensors = itertools.chain(module.parameters(), module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)


def weights_hash(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def load_model(
    name_or_module: str | torch.nn.Module,
    tokenizer: Any = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    remote: bool | str = False,
) -> Model:
    """Load a zoo model or HF checkpoint by name, or wrap an already built HF model.

    Parameters
    ----------
    name_or_module : a zoo name (``"toy-grammar"``, exactly as :func:`zoo.list_models`
        spells it), a local folder saved with ``save_pretrained`` (any absolute path, or a
        relative path that exists; loaded offline), an HF id (``"EleutherAI/pythia-70m"``),
        or a built ``transformers`` model.
    tokenizer : required with a built model; overrides the checkpoint's otherwise.
    revision : HF branch, tag or commit.
    device, dtype : where and in which precision to run (``float32``, ``float16``,
        ``bfloat16``); by default ``cpu``/``float32`` for a name and unchanged for a module.
    remote : run every trace through nnsight's remote execution: ``True`` on NDIF (an
        HF hub id; needs ``NDIF_API_KEY``; only the architecture is built here, no
        weights), a URL (``"https://host"``) on a self-hosted NDIF, or ``"local"``:
        nnsight's test backend, which serialises each trace exactly as for NDIF and runs
        it here with this package's modules hidden (the weights load here). See
        :mod:`mechwidgets.models.remote`.

    Returns
    -------
    Model

    Examples
    --------
    >>> load_model("EleutherAI/pythia-70m", revision="step3000", dtype="bfloat16")
    """
    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    check_remote(name_or_module, remote)
    source: str | None
    card: Path | None = None  # where a named checkpoint's card goes (models/card.py)
    if remote and remote != "local":
        assert isinstance(name_or_module, str)  # check_remote refuses anything but a hub id
        hf, tokenizer, name, revision, source, wrapped = remote_model(
            name_or_module, remote, revision, dtype
        )
        return _wrap(hf, tokenizer, name, revision, source, remote, wrapped)
    if isinstance(name_or_module, torch.nn.Module):
        if tokenizer is None:
            raise ModelError(
                "an in-memory model needs its tokenizer: load_model(model, tokenizer=tok)"
            )
        hf, name, source = name_or_module, _module_name(name_or_module), None
    elif isinstance(name_or_module, str):
        if tokenizer is None:  # the checkpoint's own tokenizer: the card's hash is its
            card = card_path(name_or_module, revision, dtype or "float32")
        hf, tokenizer, source, revision = _load_named(
            name_or_module, tokenizer, revision, dtype or "float32"
        )
        name = name_or_module
        device = device or "cpu"
    else:
        raise ModelError(
            f"load_model takes a model name or a transformers model, "
            f"got {type(name_or_module).__name__}"
        )
    try:
        hf.to(device=device, dtype=DTYPES[dtype] if dtype else None)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(
            f"cannot move the model to device '{device}': {_first_line(exc)}"
        ) from None
    model = _wrap(hf.eval(), tokenizer, name, revision, source, remote)
    if card is not None and not card.exists():
        save_card(card, model_card(model))
    return model


def model_card(model: Model) -> ModelCard:
    """The cache-key facts of ``model`` as it is now (see :mod:`mechwidgets.models.card`);
    for a model just loaded, before any edit, what every later load of it gives."""
    return ModelCard(
        name=model.name,
        identity=model.identity,
        tokenizer_hash=model.tokenizer_hash,
        dtype=str(model.dtype).removeprefix("torch."),
        shape=model.shape,
        d_model=model.d_model,
    )


def _load_named(
    name: str, tokenizer: Any, revision: str | None, dtype: str
) -> tuple[torch.nn.Module, Any, str, str]:
    """Weights, tokenizer, identity and revision: from the zoo folder offline, else a local
    folder, else the HF cache or hub.

    Only a name exactly in :func:`zoo.list_models` is a zoo model; an absolute path or an
    existing folder is the user's own checkpoint, loaded offline.
    """
    folder = zoo.model_dir(name) if name in zoo.list_models() else None
    path = Path(name).expanduser()
    own = folder is None and (path.is_absolute() or path.is_dir())
    if own and not path.is_dir():
        raise ModelError(f"no folder at '{path}'; check the path to the saved model")
    where: str | Path = folder if folder is not None else path if own else name
    local = folder is not None or own
    try:
        with _without_progress_bar():
            config = transformers.AutoConfig.from_pretrained(
                where, revision=revision, local_files_only=local
            )
            auto = getattr(transformers, auto_class_for(config))
            hf = auto.from_pretrained(
                where, revision=revision, dtype=DTYPES[dtype], local_files_only=local
            )
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    where, revision=revision, local_files_only=local
                )
    except (OSError, ValueError, KeyError) as exc:
        if folder is not None:
            raise ModelError(
                f"zoo model '{name}' in {folder} cannot be loaded ({_first_line(exc)}); "
                "reinstall mechwidgets or retrain it with mechwidgets.models.zoo.train"
            ) from None
        if own:
            raise ModelError(
                f"cannot load the folder '{path}' as a Hugging Face model ({_first_line(exc)}); "
                "it needs config.json, the weights and the tokenizer files, as "
                "save_pretrained writes them"
            ) from None
        zoo_names = ", ".join(zoo.list_models()) or "none installed"
        raise ModelError(
            f"cannot load model '{name}' ({_first_line(exc)}); it is not a zoo model "
            f"(zoo: {zoo_names}), so check the Hugging Face id and revision; when offline "
            "its weights must already be in the local Hugging Face cache"
        ) from None
    if folder is not None or own:
        source, revision = source_of(name, folder or path, folder is not None)
        return hf, tokenizer, source, revision
    revision = getattr(config, "_commit_hash", None) or revision or "main"
    return hf, tokenizer, f"hf:{name}@{revision}", revision


@contextmanager
def _without_progress_bar() -> Iterator[None]:
    """Silence transformers' per-load "Loading weights" bar, restoring the user's setting."""
    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


def _wrap(
    hf: torch.nn.Module,
    tokenizer: Any,
    name: str,
    revision: str | None,
    source: str | None,
    remote: bool | str = False,
    wrapped: Any = None,
) -> Model:
    """Wrap the module with nnsight and check that the adapter's sizes fit its weights."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token"
            )
        tokenizer.pad_token = tokenizer.eos_token  # pads are masked out, so any token will do
    adapter = adapter_for(hf.config)
    with warnings.catch_warnings():
        # nnsight renames BERT's ``output`` submodules and says so; envoy() looks modules up
        # by identity, so the renaming is harmless here.
        warnings.filterwarnings("ignore", message=".*nnsight already serves", category=UserWarning)
        if wrapped is None:
            wrapped = remote_wrapper(hf, tokenizer) if remote else nnsight.NNsight(hf)
    model = Model(
        wrapped, hf, adapter, tokenizer, name, revision, source, _param_state(hf), remote=remote
    )
    heads = model.out_proj_weight("attn_out_proj", 0).shape[0]
    if heads != model.shape.n_heads * model.d_head:
        raise ModelError(
            f"{name}: the attention output projection takes {heads} inputs, not "
            f"{model.shape.n_heads} heads of {model.d_head}; check the model config"
        )
    return model


def _module_name(module: torch.nn.Module) -> str:
    config = getattr(module, "config", None)
    if config is None:
        raise ModelError(
            f"{type(module).__name__} is not a transformers model (it has no .config); "
            "pass a model built with transformers"
        )
    return getattr(config, "name_or_path", "") or type(module).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

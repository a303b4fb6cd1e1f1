"""Typed run configs: what to run, on what, with which controls.

A :class:`RunSpec` bundles a :class:`DatasetSpec`, an :class:`ExtractionSpec`, an
:class:`ActionSpec` and a list of :class:`ControlSpec` with a seed and an output folder
(the seed design's "Standardized Schemas"). It loads from YAML, from a dict, or from the
flat shorthand the magics use; any bad field fails with one line that names the field,
the bad value and what is allowed.

>>> spec = RunSpec.from_yaml("configs/feature_detection_toy.yaml")
>>> RunSpec.from_dict({"action": "collapse", "model": "toy-grammar", "task": "subject_number"})
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mechwidgets.core.components import parse_selector, without_embed
from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import did_you_mean
from mechwidgets.core.registry import action_params, check_params, list_actions

#: names from the seed design accepted as aliases of the action names
ACTION_ALIASES = {
    "feature_detection": "detect",
    "feature_comparison": "compare",
    "circuit_localization": "localize",
    "polysemanticity": "polysemantic",
    "repr_collapse": "collapse",
}
#: selector prefixes from the seed design's extractor
SELECTOR_ALIASES = {"layers_output": "resid", "attentions_output": "attn", "mlps_output": "mlp"}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Spec):
    """Where the texts and labels come from: a built-in task or a file of the user's."""

    name: str = Field(description="built-in task name, or a path to a CSV/JSONL/Parquet file")
    n: StrictInt = Field(2000, gt=0, description="samples to draw for a built-in task")
    seed: StrictInt = 0
    text: str = Field("text", description="text column, for a file")
    labels: list[str] = Field(default_factory=list, description="label columns, for a file")
    split: str | None = Field(
        None, description="split column of train/val/test values, for a file; default: drawn"
    )
    position: str | tuple[str, str] | None = Field(
        None,
        description="column of the token to read (an index, a marker or a span), or two "
        "columns of character spans, for a file; see mechwidgets.data.positions",
    )
    word_types: str | dict[str, str] | None = Field(
        None, description="word-type column for every label, or {label: column}, for a file"
    )
    groups: str | None = Field(None, description="column of the independent unit, for a file")
    # the seed design's split names; tasks and files name their splits train/val/test
    train_split: Literal["train"] = "train"
    val_split: Literal["val"] = "val"
    test_split: Literal["test"] = "test"


class ExtractionSpec(_Spec):
    """Which model, which components, which token, how fast."""

    model_name: str
    revision: str | None = None
    selectors: list[str] = Field(default_factory=lambda: ["resid:all", "attn:all", "mlp:all"])
    token: Literal["last", "mean"] | StrictInt | str | tuple[StrictInt, StrictInt] | None = Field(
        None,
        description="token policy: last, mean, an index, a marker such as '[MASK]' or a "
        "[start, end] character span (mechwidgets.data.positions); None reads the task's "
        "positions, else the last token; the seed design's `token_index` is an alias",
        validation_alias=AliasChoices("token", "token_index"),
    )
    batch_size: StrictInt = Field(32, gt=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    remote: bool | str = Field(
        False,
        description="run the model's traces through nnsight's remote execution: true (NDIF), "
        "an NDIF URL ('https://host') or 'local' (nnsight's serialising test backend); "
        "mechwidgets.models.remote",
    )
    neurons: bool = Field(False, description="also extract MLP neuron activations")
    cache: bool = True
    unseen: Literal["error", "exclude"] = Field(
        "error",
        description="texts the model cannot see (only special tokens, or an <unk> token): "
        "an error, or excluded and counted in the verdict",
    )

    @field_validator("selectors", mode="before")
    @classmethod
    def _selectors(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        out = []
        for item in items:
            prefix, sep, rest = str(item).partition(":")
            item = SELECTOR_ALIASES.get(prefix, prefix) + sep + rest
            blocks, _ = without_embed(item)  # "embed": the embedding layer, for extraction
            if blocks is not None:
                parse_selector(blocks)  # raises a one-line SelectorError
            out.append(item)
        return out


class ComputeSpec(_Spec):
    """Where the action's probes run: the workers of a running dask scheduler."""

    scheduler: str = Field(description="a dask.distributed scheduler address, tcp://host:8786")


class ActionSpec(_Spec):
    """The action by name and its parameters, checked against the action's Params class
    (:mod:`mechwidgets.core.params`) when parsed, before anything heavy is imported."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = ACTION_ALIASES.get(value, value)
        if value not in list_actions():
            hint = did_you_mean(value, [*list_actions(), *ACTION_ALIASES])
            raise ValueError(f"unknown action{hint}; choose one of {', '.join(list_actions())}")
        return value

    @model_validator(mode="after")
    def _params(self) -> ActionSpec:
        try:
            check_params(self.name, self.params)
        except SpecError as exc:
            raise PydanticCustomError("spec", str(exc)) from None
        return self


class ControlSpec(_Spec):
    """A null or control baseline to run beside the real probe; controls take no options."""

    name: Literal["label_shuffle", "random_subspace", "control_task"]
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _no_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            raise PydanticCustomError(
                "spec",
                f"controls take no options, got {value!r}; remove them (the random-subspace "
                "rank is the action parameter subspace_rank)",
            )
        return value


class RunSpec(_Spec):
    """Everything needed to reproduce a run.

    ``controls`` left out means the action's default controls; ``controls: []`` means none.
    """

    run_name: str = "run"
    seed: StrictInt = 0
    dataset: DatasetSpec
    extraction: ExtractionSpec
    action: ActionSpec
    controls: list[ControlSpec] | None = None
    output_dir: str | None = None
    compute: ComputeSpec | None = Field(
        None, description="probe slices on a dask scheduler's workers (mechwidgets.cluster)"
    )
    tasks: list[DatasetSpec] = Field(
        default_factory=list,
        description="compare across tasks: further tasks, each extracted like `dataset` "
        "from the same model; the labels name one label per task, `dataset`'s first",
    )

    @model_validator(mode="after")
    def _tasks_for_compare(self) -> RunSpec:
        if self.tasks and self.action.name != "compare":
            raise PydanticCustomError(
                "spec",
                f"'tasks' (several datasets) is for compare across tasks, not "
                f"{self.action.name}; give one dataset",
            )
        return self

    @field_validator("controls", mode="before")
    @classmethod
    def _controls(cls, value: Any) -> list[Any] | None:
        if value is None:
            return None
        if isinstance(value, str | dict):
            value = [value]
        return [{"name": c} if isinstance(c, str) else c for c in value]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Validate a nested or flat (magic-style) dict; errors are one-line SpecErrors."""
        if not isinstance(data, dict):
            raise SpecError(
                f"a run config must be a mapping of fields (key: value lines), got "
                f"{type(data).__name__}; write it as in configs/feature_detection_toy.yaml"
            )
        action = _action_name(data)
        try:
            return cls.model_validate(_nest(data, action))
        except ValidationError as exc:
            raise SpecError(_one_line(exc, action)) from None

    @classmethod
    def from_yaml(cls, source: str | Path) -> RunSpec:
        """Load from a YAML file path or a YAML string; a key given twice is an error."""
        text = Path(source).read_text() if _is_path(source) else str(source)
        try:
            data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"bad YAML{where}: {problem}; fix the config and run again") from None
        return cls.from_dict(data or {})

    @classmethod
    def from_file(cls, path: str | Path) -> RunSpec:
        """Load a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file; a missing file
        or bad JSON is a one-line SpecError. Imports nothing heavy, so the CLI checks a
        config with it before the runner loads torch and the actions."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(
                f"no such config: {path}; give a YAML config or a bundle's artifacts.json"
            )
        if path.suffix != ".json":
            return cls.from_yaml(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise SpecError(f"bad JSON in {path} at line {exc.lineno}: {exc.msg}") from None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` turns back into an equal spec."""
        return self.model_dump(mode="json")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping, after checking that no key repeats."""
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first at line {seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _is_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    return "\n" not in source and source.endswith((".yaml", ".yml", ".json"))


#: flat shorthand keys (as in ``%%mechinterp`` bodies) -> (section, field)
_FLAT = {
    "model": ("extraction", "model_name"),
    "revision": ("extraction", "revision"),
    "selectors": ("extraction", "selectors"),
    "token": ("extraction", "token"),
    "batch_size": ("extraction", "batch_size"),
    "dtype": ("extraction", "dtype"),
    "device": ("extraction", "device"),
    "remote": ("extraction", "remote"),
    "neurons": ("extraction", "neurons"),
    "unseen": ("extraction", "unseen"),
    "task": ("dataset", "name"),
    "n": ("dataset", "n"),
}
#: flat shorthand for the extraction's selectors
_SELECTOR_KEYS = ("layers", "components")


def _action_name(data: dict[str, Any]) -> str | None:
    """The registered action a config names, or None when it names none."""
    action = data.get("action")
    name = action.get("name") if isinstance(action, dict) else action
    name = ACTION_ALIASES.get(name, name) if isinstance(name, str) else None
    return name if name in list_actions() else None


def _nest(data: dict[str, Any], action_name: str | None) -> dict[str, Any]:
    """Turn the flat shorthand into the nested form; nested input passes through.

    A top-level key that is neither a RunSpec field nor flat shorthand becomes an action
    parameter when the action takes it; otherwise it stays, to be reported as unknown.
    """
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in _FLAT}
    for key, (section, name) in _FLAT.items():
        if key in data:
            out.setdefault(section, {})
            if isinstance(out[section], dict):
                out[section] = {**out[section], name: data[key]}
    names = data.get("task")
    names = names.split(",") if isinstance(names, str) and "," in names else names
    if isinstance(names, list) and isinstance(out.get("dataset"), dict):
        # flat "task: a,b": the first task is the dataset, the rest compare's further tasks
        first, *rest = [str(name).strip() for name in names]
        out["dataset"] = {**out["dataset"], "name": first}
        out["tasks"] = [{**out["dataset"], "name": name} for name in rest]
    if isinstance(out.get("action"), str):
        out["action"] = {"name": out["action"]}
    action = out.get("action")
    if not isinstance(action, dict):
        return out
    takes = action_params(action_name).model_fields if action_name else None
    params = dict(action.get("params") or {})
    for key in _SELECTOR_KEYS:
        if key in out:
            params.setdefault(key, out.pop(key))
    for key in list(out):
        if key not in RunSpec.model_fields and (takes is None or key in takes):
            params[key] = out.pop(key)
    if params:
        out["action"] = {**action, "params": params}
    if any(key in params for key in _SELECTOR_KEYS):
        layers = params.pop("layers", "all")
        if not str(layers).strip():
            raise SpecError("layers is empty; give 'all', '3', '0-5' or '1,3'")
        comps = params.pop("components", "resid,attn,mlp")
        comps = comps.split(",") if isinstance(comps, str) else list(comps)
        out.setdefault("extraction", {})
        out["extraction"] = {
            **out["extraction"],
            "selectors": [f"{str(c).strip()}:{str(layers).strip()}" for c in comps],
        }
        out["action"] = {**out["action"], "params": params}
    return out


def _one_line(exc: ValidationError, action_name: str | None) -> str:
    """The most useful error of a validation as one line: unknown keys come first."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    field_loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
    loc = ".".join(str(p) for p in field_loc) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if len(field_loc) < len(err["loc"]):  # a union (e.g. token): say what each member takes
        members = [
            e["msg"].removeprefix("Input should be ")
            for e in errors
            if tuple(p for p in e["loc"] if not _is_union_tag(p)) == field_loc
        ]
        msg = "Input should be " + " or ".join(dict.fromkeys(members))
    if err["type"] == "spec":
        return msg
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1], action_name)
        hint = did_you_mean(str(err["loc"][-1]), allowed)
        return f"unknown field '{loc}'{hint}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"missing field '{loc}'; add it to the config"
    bad = err.get("input")
    if err["type"] == "literal_error":
        msg += did_you_mean(str(bad), re.findall(r"'([^']*)'", err["ctx"]["expected"]))
    return f"bad value {bad!r} for '{loc}': {msg}"


def _is_union_tag(part: Any) -> bool:
    """Whether a location part names a union member (``literal['a','b']``, ``int``)."""
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "none"))


def _allowed_keys(loc: tuple[Any, ...], action_name: str | None) -> list[str]:
    """The keys a config may hold at ``loc`` (the top level also takes the flat shorthand)."""
    model = _section_model(loc)
    keys = list(model.model_fields) if model else []
    if model is not None:
        for info in model.model_fields.values():
            choices = getattr(info.validation_alias, "choices", [])
            keys += [c for c in choices if isinstance(c, str) and c not in keys]
    if not loc:
        takes = action_params(action_name).model_fields if action_name else {}
        keys += [*_FLAT, *_SELECTOR_KEYS, *takes]
    return list(dict.fromkeys(keys))


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunSpec
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        ann = getattr(info, "annotation", None)
        args = getattr(ann, "__args__", ())
        nested = [a for a in args if getattr(a, "__args__", None)]  # list[ControlSpec] | None
        args = (*args, *(b for a in nested for b in a.__args__))
        nxt = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model

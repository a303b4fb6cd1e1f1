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

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from mechwidgets.core.components import parse_selector
from mechwidgets.core.errors import SpecError

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
CONTROLS = ("label_shuffle", "random_subspace", "control_task")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Spec):
    """Where the texts and labels come from: a built-in task or a file of the user's."""

    name: str = Field(description="built-in task name, or a path to a CSV/JSONL/Parquet file")
    n: int = Field(2000, gt=0, description="samples to draw for a built-in task")
    seed: int = 0
    text: str = Field("text", description="text column, for a file")
    labels: list[str] = Field(default_factory=list, description="label columns, for a file")
    split: str | None = Field(
        None, description="split column of train/val/test values, for a file; default: drawn"
    )
    # the seed design's split names; tasks and files name their splits train/val/test
    train_split: Literal["train"] = "train"
    val_split: Literal["val"] = "val"
    test_split: Literal["test"] = "test"


class ExtractionSpec(_Spec):
    """Which model, which components, which token, how fast."""

    model_name: str
    revision: str | None = None
    selectors: list[str] = Field(default_factory=lambda: ["resid:all", "attn:all", "mlp:all"])
    token: Literal["last", "mean"] | int | None = Field(
        None,
        description="token policy: last, mean or an index; None reads the task's positions, "
        "else the last token; the seed design's `token_index` is an alias",
        validation_alias=AliasChoices("token", "token_index"),
    )
    batch_size: int = Field(32, gt=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    neurons: bool = Field(False, description="also extract MLP neuron activations")
    cache: bool = True

    @field_validator("selectors", mode="before")
    @classmethod
    def _selectors(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        out = []
        for item in items:
            prefix, sep, rest = str(item).partition(":")
            item = SELECTOR_ALIASES.get(prefix, prefix) + sep + rest
            parse_selector(item)  # raises a one-line SelectorError
            out.append(item)
        return out


class ActionSpec(_Spec):
    """The action by name and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from mechwidgets.core.registry import list_actions

        value = ACTION_ALIASES.get(value, value)
        if value not in list_actions():
            raise ValueError(f"unknown action; choose one of {', '.join(list_actions())}")
        return value


class ControlSpec(_Spec):
    """A null or control baseline to run beside the real probe."""

    name: Literal["label_shuffle", "random_subspace", "control_task"]
    params: dict[str, Any] = Field(default_factory=dict)


class RunSpec(_Spec):
    """Everything needed to reproduce a run."""

    run_name: str = "run"
    seed: int = 0
    dataset: DatasetSpec
    extraction: ExtractionSpec
    action: ActionSpec
    controls: list[ControlSpec] = Field(default_factory=list)
    output_dir: str | None = None

    @field_validator("controls", mode="before")
    @classmethod
    def _controls(cls, value: Any) -> list[Any]:
        return [{"name": c} if isinstance(c, str) else c for c in (value or [])]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Validate a nested or flat (magic-style) dict; errors are one-line SpecErrors."""
        if not isinstance(data, dict):
            raise SpecError(f"a run config must be a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(_nest(data))
        except ValidationError as exc:
            raise SpecError(_one_line(exc)) from None

    @classmethod
    def from_yaml(cls, source: str | Path) -> RunSpec:
        """Load from a YAML file path or a YAML string."""
        text = Path(source).read_text() if _is_path(source) else str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"bad YAML{where}: {problem}; fix the config and run again") from None
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` turns back into an equal spec."""
        return self.model_dump(mode="json")


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
    "neurons": ("extraction", "neurons"),
    "task": ("dataset", "name"),
    "n": ("dataset", "n"),
}


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    """Turn the flat shorthand into the nested form; nested input passes through."""
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in _FLAT}
    for key, (section, name) in _FLAT.items():
        if key in data:
            out.setdefault(section, {})
            if isinstance(out[section], dict):
                out[section] = {**out[section], name: data[key]}
    if isinstance(out.get("action"), str):
        out["action"] = {"name": out["action"]}
    action = out.get("action")
    if isinstance(action, dict):
        params = dict(action.get("params") or {})
        for key in ("layers", "components"):  # shorthand for selectors
            if key in out:
                params.setdefault(key, out.pop(key))
        for key in list(out):
            if key not in RunSpec.model_fields:
                params[key] = out.pop(key)
        if params:
            out["action"] = {**action, "params": params}
        if "layers" in params or "components" in params:
            layers = str(params.pop("layers", "all"))
            comps = params.pop("components", "resid,attn,mlp")
            comps = comps.split(",") if isinstance(comps, str) else list(comps)
            out.setdefault("extraction", {})
            out["extraction"] = {
                **out["extraction"],
                "selectors": [f"{c.strip()}:{layers}" for c in comps],
            }
            out["action"] = {**out["action"], "params": params}
    return out


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section = _section_model(err["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown field '{loc}'; allowed here: {allowed}"
    if err["type"] == "missing":
        return f"missing field '{loc}'; add it to the config"
    bad = err.get("input")
    return f"bad value {bad!r} for '{loc}': {msg}"


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunSpec
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        ann = getattr(info, "annotation", None)
        args = getattr(ann, "__args__", ())
        nxt = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model

"""``patch``, ``attribution_patch`` and ``recovery`` as registered actions.

The engine lives in :mod:`mechwidgets.intervene`; this module registers its
three public functions like the other actions, so each runs from a YAML config, the
``mechinterp`` command and the ``%mechinterp`` magic, and re-runs from its bundle. Their
parameters are the functions' keyword parameters, checked when the RunSpec is parsed.
None of them reads a cube: the runner loads the model and builds the data, and extracts
nothing. Patching takes the dataset as clean/corrupt prompt pairs
(:func:`mechwidgets.get_task_pairs`); recovery takes it as a task.

>>> spec = RunSpec.from_yaml("configs/patching_toy.yaml")   # action: patch
>>> run_spec(spec, output_dir="runs/patching_toy").table.nlargest(3, "effect")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mechwidgets.actions.base import ActionResult, ResultAction, RunContext
from mechwidgets.core.errors import SpecError
from mechwidgets.core.registry import Needs, register_action
from mechwidgets.intervene.attribution import attribution_patch
from mechwidgets.intervene.patching import patch
from mechwidgets.intervene.recovery import recovery_test


class _ModelAction(ResultAction):
    """An action that runs its registered function on the model and the dataset."""

    #: the function's parameter that takes the dataset
    data_parameter = "task"
    #: whether the function takes ``components`` (then a config's selectors give them)
    takes_components = False
    name: str
    function: Any

    def prepare(self, context: RunContext) -> dict[str, Any]:
        """The model, the dataset and the config's parameters, as the function takes them."""
        if context.model is None or context.task is None:
            raise SpecError(f"{self.name} needs a model and a task; give both in the config")
        params = dict(context.params)
        selectors = context.selectors()
        if self.takes_components and "components" not in params and selectors:
            params["components"] = selectors
        data = {"model": context.model, self.data_parameter: context.task, "seed": context.seed}
        return data | params

    def run(self, prepared: dict[str, Any]) -> ActionResult:
        """Call the registered function."""
        result: ActionResult = self.function(**prepared)
        return result


@register_action("patch", function=patch)
class Patch(_ModelAction):
    """Activation patching over a grid, with attribution patching's agreement beside it."""

    data_parameter = "clean"
    takes_components = True

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """A model and prompt pairs; no cube."""
        return Needs(cube=False, pairs=True)


@register_action("attribution_patch", function=attribution_patch)
class AttributionPatch(Patch):
    """Every patching effect of a grid estimated from one forward and one backward pass."""


@register_action("recovery", function=recovery_test)
class Recovery(_ModelAction):
    """Does a feature lost with depth return when an earlier residual stream is patched in?"""

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """A model and a task; no cube. Refuses a config without ``label`` or
        ``source_layer`` before any work."""
        missing = [key for key in ("label", "source_layer") if key not in params]
        if missing:
            raise SpecError(
                f"recovery needs {' and '.join(missing)} in action.params, e.g. "
                "label: subject_number, source_layer: 1"
            )
        return Needs(cube=False)

"""The registered actions: the five research questions, and patching, attribution patching
and recovery (:mod:`.patching`), each registered by name on import."""

from mechwidgets.actions import collapse as collapse  # noqa: F401  (registers "collapse")
from mechwidgets.actions import compare as compare  # noqa: F401  (registers "compare")
from mechwidgets.actions import detect as detect  # noqa: F401  (registers "detect")
from mechwidgets.actions import localize as localize  # noqa: F401  (registers "localize")
from mechwidgets.actions import patching as patching  # noqa: F401  (registers the patching three)
from mechwidgets.actions import polysemantic as polysemantic  # noqa: F401  (registers it)

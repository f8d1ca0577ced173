"""Student architectures and the space Optuna samples them from.

Layer maps, one convention throughout kdnas: a *layer map* is a list with one entry per student layer ``i``
(0-based), holding the 0-based index ``j`` of the teacher's hidden layer (transformer block) that student layer
matches; block ``j``'s output is ``hidden_states[j + 1]`` (``hidden_states[0]`` are the embeddings) and its attention
``attentions[j]``. :func:`kdnas.space.inheritance.inheritance_layer_map` says which teacher layer each student layer
is sliced from, :func:`kdnas.objectives.intermediate.kd_layer_map` which teacher layer teaches it. Only what users
write and read counts from 1: the ``kd.intermediate.layer_map`` list and the ``layer_map`` a trial records.
"""

from kdnas.space.arch import StudentArch
from kdnas.space.search_space import SearchSpace

__all__ = ["SearchSpace", "StudentArch"]

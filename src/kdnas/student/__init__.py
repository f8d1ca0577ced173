"""The student: its architecture (:mod:`.arch`), the space Optuna samples it from (:mod:`.space`), how it is sliced
from a teacher (:mod:`.inheritance`) and its training loop (:mod:`.training`, :mod:`.batches`, :mod:`.metrics`,
:mod:`.precision`).

Layer maps, one convention throughout kdnas: a *layer map* is a list with one entry per student layer ``i``
(0-based), holding the 0-based index ``j`` of the teacher's hidden layer (transformer block) that student layer
matches; block ``j``'s output is ``hidden_states[j + 1]`` (``hidden_states[0]`` are the embeddings) and its attention
``attentions[j]``. :func:`kdnas.student.inheritance.inheritance_layer_map` says which teacher layer each student layer
is sliced from, :func:`kdnas.distill.intermediate.kd_layer_map` which teacher layer teaches it. Only what users
write and read counts from 1: the ``kd.intermediate.layer_map`` list and the ``layer_map`` a trial records.
"""

from kdnas.student.arch import StudentArch
from kdnas.student.space import SearchSpace

__all__ = ["SearchSpace", "StudentArch"]

"""Student architectures and the space Optuna samples them from."""

from kdnas.space.arch import StudentArch
from kdnas.space.search_space import SearchSpace

__all__ = ["SearchSpace", "StudentArch"]

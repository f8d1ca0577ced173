"""A student's resumable training state on disk: tensors as safetensors, everything else as JSON (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSORS_FILE = "state.safetensors"
_TREE_FILE = "state.json"


def _split(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``node`` as JSON, its tensors moved into ``tensors`` (dict keys keep their int/str type)."""
    if isinstance(node, torch.Tensor):
        tensors[path] = node.detach().cpu().contiguous().clone()
        return {"tensor": path}
    if isinstance(node, dict):
        return {"items": [[key, _split(value, f"{path}.{key}", tensors)] for key, value in node.items()]}
    if isinstance(node, (list, tuple)):
        return {"list": [_split(value, f"{path}.{i}", tensors) for i, value in enumerate(node)]}
    return {"value": node}


def _join(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "items" in node:
        return {key: _join(value, tensors) for key, value in node["items"]}
    if "list" in node:
        return [_join(value, tensors) for value in node["list"]]
    return node["value"]


def save_state(state: dict[str, Any], directory: Path) -> None:
    """Write a nested state (tensors, numbers, strings, lists, dicts) into ``directory``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _split(state, "state", tensors)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / _TENSORS_FILE)
    (directory / _TREE_FILE).write_text(json.dumps(tree))


def load_state(directory: Path) -> dict[str, Any]:
    """Read back a state written by :func:`save_state`."""
    return _join(json.loads((directory / _TREE_FILE).read_text()), load_file(directory / _TENSORS_FILE))

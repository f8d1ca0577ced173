"""Task metrics: accuracy, macro F1 and Matthews correlation, from predicted and true label ids."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

METRICS = ("accuracy", "f1", "mcc")


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    return sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)


def _macro_f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class for binary tasks (as GLUE reports it), macro-averaged F1 otherwise."""
    classes = sorted(set(labels) | set(preds))
    if classes and set(classes) <= {0, 1}:
        classes = [1]
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(preds, labels, strict=True))
        fp = sum(p == c and y != c for p, y in zip(preds, labels, strict=True))
        fn = sum(p != c and y == c for p, y in zip(preds, labels, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def _matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K); 0 when undefined."""
    classes = sorted(set(labels) | set(preds))
    n = len(labels)
    correct = sum(p == y for p, y in zip(preds, labels, strict=True))
    pred_counts = [sum(p == c for p in preds) for c in classes]
    true_counts = [sum(y == c for y in labels) for c in classes]
    cov_ytyp = correct * n - sum(p * t for p, t in zip(pred_counts, true_counts))
    cov_ypyp = n * n - sum(p * p for p in pred_counts)
    cov_ytyt = n * n - sum(t * t for t in true_counts)
    denom = math.sqrt(cov_ypyp * cov_ytyt)
    return cov_ytyp / denom if denom else 0.0


def score(metric: str, preds: Sequence[int], labels: Sequence[int]) -> float:
    """The value of ``metric`` (one of :data:`METRICS`)."""
    if not labels:
        raise ValueError("cannot score an empty evaluation set")
    functions = {"accuracy": accuracy, "f1": _macro_f1, "mcc": _matthews_corrcoef}
    if metric not in functions:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return functions[metric](preds, labels)


def majority_level(metric: str, labels: Sequence[int]) -> float:
    """``metric`` of always predicting the most frequent of ``labels``."""
    majority = Counter(labels).most_common(1)[0][0]
    return score(metric, [majority] * len(labels), labels)


def collapse_reason(
    metric: str, value: float, preds: Sequence[int], labels: Sequence[int], label_names: Sequence[str] = ()
) -> str | None:
    """Why a model with these eval predictions has collapsed, or None when it has not: it predicts one class for every
    example, or its ``value`` of ``metric`` is no better than always predicting the most frequent label. A model
    scored on labels of one class cannot be told collapsed (None)."""
    if len(set(labels)) < 2:
        return None
    predicted = set(preds)
    if len(predicted) == 1:
        only = next(iter(predicted))
        name = f" ({label_names[only]})" if only < len(label_names) else ""
        return f"predicts class {only}{name} for all {len(preds)} eval examples"
    floor = majority_level(metric, labels)
    if value <= floor + 1e-9:
        return f"{metric} {value:.4f} is no better than always predicting the majority class ({floor:.4f})"
    return None


def standard_error(metric: str, value: float, rows: int) -> float:
    """The standard error of ``metric`` at ``value`` measured on ``rows`` examples: the binomial one,
    √(v(1 − v)/n), for accuracy and F1 (proportions), and (1 − v²)/√(n − 1) for Matthews correlation (that of a
    correlation coefficient). How far two students' scores on the same evaluation set may differ by chance."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if rows < 2:
        return math.inf
    if metric == "mcc":
        return (1.0 - min(value * value, 1.0)) / math.sqrt(rows - 1)
    clipped = min(max(value, 0.0), 1.0)
    return math.sqrt(clipped * (1.0 - clipped) / rows)

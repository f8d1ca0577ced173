"""Where early stopping judges students: its rungs, in epochs, possibly fractions of one (no Ray needed)."""

from __future__ import annotations

from kdnas.config import KDNASConfig
from kdnas.student.training import steps_per_epoch
from kdnas.study.records import epoch_count

_AUTO_MIN_TRIALS = 8
"""``mode: auto`` turns early stopping on from this many trials: fewer leave one or two students per rung to be
compared with, so it would stop little and save little."""


def rungs(grace_period: float, reduction_factor: int, max_t: float) -> list[float]:
    """The milestones ``grace · rf^k`` strictly below ``max_t`` (a student's last epoch is never a rung), as
    :func:`~kdnas.study.records.epoch_count`."""
    milestones: list[float] = []
    t = grace_period
    while t < max_t:
        milestones.append(epoch_count(t))
        t *= reduction_factor
    return milestones


def early_stopping_enabled(config: KDNASConfig) -> bool:
    """Whether ``search.early_stopping`` is on (``on``, or ``auto`` from :data:`_AUTO_MIN_TRIALS` trials, with a rung;
    ``off``, the default: no rule paid in the P4 benchmark)."""
    stopping = config.search.early_stopping
    if stopping.mode == "off":
        return False
    has_rung = stopping.grace_epochs < config.training.epochs
    return has_rung and (stopping.mode == "on" or config.search.n_trials >= _AUTO_MIN_TRIALS)


def _config_rungs(config: KDNASConfig) -> list[float]:
    """The rungs of ``config``'s early stopping, or none when it is off."""
    if not early_stopping_enabled(config):
        return []
    stopping = config.search.early_stopping
    return rungs(stopping.grace_epochs, stopping.reduction_factor, config.training.epochs)


def rungs_in_warmup(config: KDNASConfig) -> list[float]:
    """The rungs before the learning-rate warm-up ends (the first ``training.warmup_ratio`` of all steps): a student
    judged there has not yet trained at its learning rate, so its metric says little about where it ends."""
    warmup_epochs = config.training.warmup_ratio * config.training.epochs
    return [rung for rung in _config_rungs(config) if rung < warmup_epochs]


def mid_epoch_rungs(config: KDNASConfig) -> list[float]:
    """The rungs that fall inside an epoch (e.g. 0.25 and 0.5): a trial reports its metric there too, not only after
    each epoch, so a student can be stopped before its first epoch ends."""
    return [t for t in _config_rungs(config) if not float(t).is_integer()]


def mid_epoch_steps(config: KDNASConfig, rows: int) -> dict[int, float]:
    """The optimisation steps (1-based, counted from the start of training on ``rows`` rows) after which a trial
    reports a mid-epoch rung, each mapped to its rung; a rung that rounds to an epoch's end is left to that epoch's
    report."""
    per_epoch = steps_per_epoch(rows, config.training.batch_size)
    steps = {max(1, round(rung * per_epoch)): rung for rung in mid_epoch_rungs(config)}
    return {step: rung for step, rung in steps.items() if step % per_epoch}

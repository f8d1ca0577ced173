"""What a study's text costs: a per-epoch transfer budget (``data.transfer.per_epoch``: each epoch trains on every
labelled row and a fresh sample of the transfer set, so a trial's cost does not grow with the transfer set), and
predictions batched by length (teachers label the transfer set with little padding)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kdnas.config import build_config
from kdnas.student.batches import Encoded, predict_logits
from kdnas.student.training import EpochRows, train
from kdnas.study.records import TRAIN_ROWS_ATTR, TrialReport
from kdnas.study.storage import fingerprint_differences
from kdnas.tune.fingerprint import config_fingerprint
from kdnas.tune.inputs import UNLABELLED
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs

ARCH = {"num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_ratio": 1}


def test_each_epoch_keeps_every_labelled_row_and_draws_a_fresh_transfer_sample():
    rows, generator = EpochRows(always=10, draw=5), torch.Generator().manual_seed(0)
    first, second = rows.order(100, generator), rows.order(100, generator)
    for order in (first, second):
        assert len(order) == 15 == len(set(order.tolist()))
        drawn = [i for i in order.tolist() if i >= 10]
        assert set(range(10)) <= set(order.tolist()) and len(drawn) == 5 and max(drawn) < 100
    assert set(first.tolist()) != set(second.tolist())  # another sample of the transfer set
    assert first[:10].tolist() != list(range(10))  # shuffled, labelled rows among the drawn ones


def _data(labelled: int, transfer: int) -> Encoded:
    ids = torch.randint(1000, 30000, (labelled + transfer, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.cat([(ids[:labelled, 0] > 15000).long(), torch.full((transfer,), UNLABELLED)])
    return Encoded(ids, torch.ones_like(ids), None, labels)


def test_training_steps_follow_the_epochs_sample_not_the_whole_transfer_set():
    steps: list[int] = []
    model = torch.nn.Linear(1, 1)

    def loss(model, batch, labels, index, progress):
        assert ((index < 8) | (labels == UNLABELLED)).all()
        return model.weight.sum() * 0

    data = _data(8, 200)
    train(
        model,
        data,
        loss_fn=loss,
        epochs=2,
        batch_size=4,
        learning_rate=0.1,
        on_step=lambda s, total, _: steps.append(total),
        epoch_rows=EpochRows(8, 8),
    )
    assert len(steps) == 8 and steps[-1] == 8  # 2 epochs of (8 labelled + 8 drawn) / 4


def test_a_trial_trains_on_its_per_epoch_transfer_budget_and_records_it(tmp_path):
    data = _data(16, 48)
    raw = {
        "data": {"max_seq_length": 8, "transfer": {"per_epoch": 16}},
        "training": {"epochs": 1, "batch_size": 8},
        "latency": {"warmup": 0, "runs": 3, "min_run_time_s": 0, "cache": False},
        "student": {"inherit": {"enabled": False}},
    }
    inputs = TrialInputs(
        config=build_config(raw),
        metric="accuracy",
        label_names=("neg", "pos"),
        train=data,
        eval=Encoded(data.input_ids[:16], data.attention_mask[:16], None, data.labels[:16]),
        teacher_names=("t",),
        teacher_logits=torch.randn(1, len(data), 2, generator=torch.Generator().manual_seed(0)),
        students_dir=str(tmp_path),
        transfer_rows=48,
    )
    reports: list[dict] = []
    run_trial(ARCH, inputs, trial_number=0, device="cpu", report=reports.append)
    attrs = TrialReport.from_result(reports[-1], "accuracy").attrs
    assert attrs[TRAIN_ROWS_ATTR] == {"labelled": 16, "transfer": 48, "transfer_per_epoch": 16}


def test_a_rerun_that_changes_the_transfer_budget_is_refused():
    before = config_fingerprint(build_config({}))
    after = config_fingerprint(build_config({"data": {"transfer": {"per_epoch": 1000}}}))
    assert fingerprint_differences(before, after) == ["data.transfer.per_epoch null → 1000"]


class _Widths(torch.nn.Module):
    """Logits that depend on each row's tokens only (sums over the unmasked ids); records each batch's width."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        self.widths.append(input_ids.shape[1])
        total = (input_ids * attention_mask).sum(dim=1, keepdim=True).float()
        return SimpleNamespace(logits=torch.cat([total, -total], dim=1))


def test_predictions_are_batched_by_length_and_returned_in_row_order():
    lengths = [3, 8, 1, 8, 2, 5, 3, 1]
    ids = torch.arange(1, 65).reshape(8, 8)
    mask = torch.tensor([[1] * n + [0] * (8 - n) for n in lengths])
    model = _Widths()
    logits = predict_logits(model, Encoded(ids, mask, None, torch.zeros(8, dtype=torch.long)), batch_size=2)
    expected = (ids * mask).sum(dim=1).float()
    assert torch.equal(logits[:, 0], expected)  # row order, whatever order the batches ran in
    assert model.widths == [8, 5, 3, 1]  # longest first: each batch trimmed to its own rows' length

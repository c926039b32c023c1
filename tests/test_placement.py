"""placement: streaming batches from host memory gives exactly the metrics of data kept on the
device; auto's choice and its log line; bad values are one-line user errors."""
import logging

import pandas as pd
import pytest
import torch

from alseg import placement
from alseg.errors import AlsegError
from alseg.experiment import run

TIMING = ["train_s", "query_s"]
RUNS = {  # two cycles each: the second one scores with a trained model
    "pixels": ["budget.cycles=1", "strategy=margin", "train.eval_batch_size=4", "train.batch_size=4"],
    "superpixels": ["region=seeds", "region.num_superpixels=40", "budget=clicks", "budget.initial=30",
                    "budget.per_cycle=20", "budget.cycles=1", "strategy=entropy", "strategy.class_balance=true", "train.semi=pseudo_label",
                    "train.augment.scale=[0.8,1.2]", "train.augment.jitter=0.2", "train.eval_batch_size=5"],
}


@pytest.mark.parametrize("name", RUNS)
def test_host_and_device_placement_give_identical_metrics(make_cfg, tmp_path, monkeypatch, caplog, name):
    reads = []
    read = placement.Streamed.read
    monkeypatch.setattr(placement.Streamed, "read", lambda self, *a: reads.append(self.shape) or read(self, *a))
    metrics = {}
    for where in ("device", "host"):
        with caplog.at_level(logging.INFO, logger="alseg.placement"):
            run(make_cfg(f"placement={where}", *RUNS[name]), tmp_path / where)
        assert f"placement: {where} (placement={where}" in caplog.text
        metrics[where] = pd.read_csv(tmp_path / where / "metrics.csv").drop(columns=TIMING)
        if where == "device":
            assert not reads  # nothing streamed
    pd.testing.assert_frame_equal(metrics["device"], metrics["host"], check_exact=True)
    assert len(metrics["host"]) == 2
    shapes = {shape[1:] for shape in reads}
    assert {(32, 48, 3), (32, 48)} <= shapes  # images, and labels or the revealed map, read batch by batch
    if name == "superpixels":
        assert sum(1 for s in reads if s[1:] == (32, 48)) > len(metrics["host"]) * 2  # region maps stream too


@pytest.mark.parametrize(("free", "resident", "says"), [(10_000, True, "fits in"), (1_000, False, "does not fit in")])
def test_auto_keeps_data_on_the_device_when_it_fits_in_the_free_share(monkeypatch, caplog, free, resident, says):
    monkeypatch.setattr(placement, "free_memory", lambda device: free)
    with caplog.at_level(logging.INFO, logger="alseg.placement"):
        chosen = placement.choose_placement("auto", 0.5, 4_000, torch.device("cpu"))
    assert chosen.resident is resident
    assert f"placement: {'device' if resident else 'host'} (the data (0.00 GB) {says} placement_fraction=0.5" in caplog.text
    assert ("streamed" in caplog.text) is not resident


def test_streamed_batches_equal_resident_batches_in_order():
    array = torch.arange(7 * 4 * 5, dtype=torch.uint8).view(7, 4, 5).numpy()
    indices = [torch.tensor([3, 0]), torch.tensor([6, 6, 1]), slice(2, 5)]
    resident = placement.Placement(torch.device("cpu"), True).put(array)
    streamed = placement.Placement(torch.device("cpu"), False).put(array)
    got = list(placement.batches([streamed, resident, None], indices))
    assert len(got) == 3
    for (s, r, none), index in zip(got, indices):
        assert none is None and torch.equal(s, r) and torch.equal(r, resident[index])


@pytest.mark.parametrize(("override", "message"), [
    ("placement=gpu", "placement must be auto, device or host, got \"gpu\""),
    ("placement_fraction=0", "placement_fraction must be a number in (0, 1], got 0"),
    ("placement_fraction=1.5", "placement_fraction must be a number in (0, 1], got 1.5"),
])
def test_bad_placement_values_are_user_errors(make_cfg, tmp_path, override, message):
    with pytest.raises(AlsegError) as err:
        run(make_cfg(override), tmp_path / "run")
    assert str(err.value) == message


def test_device_placement_beyond_a_gpus_free_memory_says_to_stream(monkeypatch):
    monkeypatch.setattr(placement, "free_memory", lambda device: 2_000_000_000)
    with pytest.raises(AlsegError, match=r"^placement=device: the data \(3.00 GB\) does not fit in the 2.00 GB free on "
                                         r"cuda:0; use placement=auto or placement=host"):
        placement.choose_placement("device", 0.5, 3_000_000_000, torch.device("cuda:0"))

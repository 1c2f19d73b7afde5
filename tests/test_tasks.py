"""The four task models: schema normalization inside the module, outputs, fee calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anya_fl.experiments.sample_data import sample_task_arrays
from core.bitcoin.features import TASK_SCHEMAS, TASKS
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import FEE_TARGETS
from core.errors import ConfigError
from models.tasks import FEE_QUANTILE, Normalizer, build_model, calibrate_fee_model, infer, task_spec
from models.training import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    return sample_task_arrays(simulate_chain(ChainConfig(n_transactions=60_000, seed=3)))


@pytest.mark.parametrize("task", TASKS)
def test_normalizer_matches_numpy_twin_and_takes_raw_rows(task, data) -> None:
    x = data[task].x["test"][:500]
    schema = TASK_SCHEMAS[task]
    z = Normalizer(schema)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z, schema.normalize(x), rtol=1e-5, atol=1e-5)
    assert np.abs(z).max() <= 6.0
    # typical ranges map to [-1, 1]: the median row is well inside
    assert np.median(np.abs(z)) < 1.5


@pytest.mark.parametrize("task", TASKS)
def test_outputs_have_task_units(task, data) -> None:
    model = build_model(task, seed=1)
    x = data[task].x["test"][:1000]
    out = infer(model, x)
    assert out.shape == (len(x),) and len(x) >= 200 and np.isfinite(out).all()
    if task in ("fraud", "network", "liquidity"):
        assert ((out >= 0) & (out <= 1)).all()
    elif task == "fee":
        assert (out >= 1.0).all()  # never below the min relay fee
    else:
        assert (out >= 0).all()


def test_build_model_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_model("fraud", 5), build_model("fraud", 5), build_model("fraud", 6)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ConfigError, match="task: unknown task 'price'"):
        task_spec("price")


def test_fee_calibration_reaches_coverage_per_target(data) -> None:
    spec = task_spec("fee")
    f = data["fee"]
    model = build_model("fee", seed=0)
    train(model, spec.loss, f.x["train"], f.y["train"], TrainConfig(epochs=5, batch_size=256, lr=spec.lr))
    offsets = calibrate_fee_model(model, f.x["val"], f.y["val"])
    assert len(offsets) == len(FEE_TARGETS)
    pred = infer(model, f.x["val"])
    k = f.x["val"][:, -1]
    present = [t for t in FEE_TARGETS if (k == t).any()]
    assert len(present) >= 3
    for target in present:
        sel = k == target
        hit = (pred[sel] >= f.y["val"][sel] - 1e-4).mean()
        assert hit >= FEE_QUANTILE - 1e-9, (target, hit)
    # the offset is inside the module: a fresh copy with the same state predicts the same
    clone = build_model("fee")
    clone.load_state_dict(model.state_dict())
    np.testing.assert_allclose(infer(clone, f.x["test"]), infer(model, f.x["test"]), rtol=1e-6)


def test_fee_calibration_borrows_nearest_target_when_one_is_missing(data) -> None:
    f = data["fee"]
    keep = f.x["val"][:, -1] != 2
    offsets = calibrate_fee_model(build_model("fee"), f.x["val"][keep], f.y["val"][keep])
    assert offsets[1] in (offsets[0], offsets[2])
    with pytest.raises(ConfigError, match="calibration: no held-out rows"):
        calibrate_fee_model(build_model("fee"), f.x["val"][:0], f.y["val"][:0])


def test_fee_calibration_interpolates_between_targets(data) -> None:
    model = build_model("fee")
    model.calib_offset.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    x = np.repeat(data["fee"].x["test"][:1], 3, axis=0)
    x[:, -1] = [1.0, 2.0, 4.0]  # 4 sits between knots 3 and 6 in log space
    off = model.calibration(torch.from_numpy(x)).numpy()
    assert off[0] == pytest.approx(0.0) and off[1] == pytest.approx(1.0)
    assert off[2] == pytest.approx(2.0 + np.log(4 / 3) / np.log(6 / 3), rel=1e-5)

"""Tests for models.training: the one (DP-)training loop, its privacy accounting and its cleanliness."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

import models.training as training
from core.errors import AnyaError, ConfigError
from models.training import BudgetExhausted, DPConfig, TrainConfig, predict, resolve_device, train

ACCOUNTANT_CLASSES = {"prv": PRVAccountant, "rdp": RDPAccountant, "gdp": GaussianAccountant}
DELTA = 1e-5


def make_model(d: int = 8, seed: int = 0) -> torch.nn.Module:
    """Tiny MLP with a (b, 1) logit head."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def separable(n: int, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable binary problem with a margin."""
    rng = np.random.default_rng(seed)
    w = np.linspace(1.0, -1.0, d)
    x = rng.normal(size=(n, d)).astype(np.float32)
    score = x @ w
    x = x + (0.3 * np.sign(score))[:, None] * (w / np.linalg.norm(w))[None, :].astype(np.float32)
    return x.astype(np.float32), (score > 0).astype(np.float32)


def fresh_epsilon(accountant: str, history: list, delta: float = DELTA) -> float:
    """Epsilon of a history computed by a brand-new Opacus accountant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = ACCOUNTANT_CLASSES[accountant]()
    acc.history = [(float(s), float(q), int(k)) for s, q, k in history]
    return float(acc.get_epsilon(delta=delta))


BCE = torch.nn.BCEWithLogitsLoss()
X, Y = separable(600)


def dp_cfg(**dp: object) -> TrainConfig:
    """Small DP config: q = 32/600, 19 steps per epoch, 2 epochs."""
    return TrainConfig(epochs=2, batch_size=32, lr=1e-2, dp=DPConfig(delta=DELTA, **dp))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ accounting


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_reported_epsilon_matches_fresh_opacus_accountant(accountant: str) -> None:
    res = train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.1, accountant=accountant))
    q = 32 / 600
    assert res.steps == 2 * round(600 / 32) == 38
    assert res.sample_rate == q and res.noise_multiplier == 1.1
    assert res.accountant == accountant and res.delta == DELTA
    assert res.accountant_state == {"mechanism": accountant, "history": [[1.1, q, 38]]}
    # independent: a fresh accountant stepped once per optimizer step, as PrivacyEngine's hook does
    acc = ACCOUNTANT_CLASSES[accountant]()
    for _ in range(38):
        acc.step(noise_multiplier=1.1, sample_rate=q)
    assert res.epsilon == pytest.approx(float(acc.get_epsilon(delta=DELTA)), rel=1e-12)
    assert res.epsilon == fresh_epsilon(accountant, res.accountant_state["history"])
    json.dumps(res.accountant_state)  # serializable


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_target_epsilon_is_met_closely(accountant: str) -> None:
    res = train(make_model(), BCE, X, Y, dp_cfg(target_epsilon=2.0, accountant=accountant))
    assert res.epsilon is not None
    assert 0.99 * 2.0 <= res.epsilon <= 2.0
    assert res.epsilon == fresh_epsilon(accountant, res.accountant_state["history"])


def test_resume_accumulates_epsilon_with_fixed_noise() -> None:
    first = train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.0, accountant="rdp"))
    state = json.loads(json.dumps(first.accountant_state))  # as stored between federated rounds
    second = train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.0, accountant="rdp"), accountant_state=state)
    q = 32 / 600
    assert second.accountant_state["history"] == [[1.0, q, 76]]
    assert second.epsilon == fresh_epsilon("rdp", [(1.0, q, 76)])
    assert second.epsilon > first.epsilon


def test_resume_with_target_and_budget_exhausted() -> None:
    first = train(make_model(), BCE, X, Y, dp_cfg(target_epsilon=1.0, accountant="prv"))
    second = train(
        make_model(), BCE, X, Y, dp_cfg(target_epsilon=2.0, accountant="prv"), accountant_state=first.accountant_state
    )
    hist = second.accountant_state["history"]
    assert len(hist) == 2 and hist[0] == first.accountant_state["history"][0]
    assert second.epsilon == fresh_epsilon("prv", hist)
    assert first.epsilon < second.epsilon <= 2.0 and second.epsilon >= 0.99 * 2.0
    with pytest.raises(BudgetExhausted) as info:
        train(
            make_model(),
            BCE,
            X,
            Y,
            dp_cfg(target_epsilon=2.0, accountant="prv"),
            accountant_state=second.accountant_state,
        )
    assert isinstance(info.value, AnyaError)
    assert "target_epsilon" in str(info.value) and f"{second.epsilon:.4g}" in str(info.value)
    with pytest.raises(BudgetExhausted, match="target_epsilon: budget 1.5"):
        train(
            make_model(),
            BCE,
            X,
            Y,
            dp_cfg(target_epsilon=1.5, accountant="prv"),
            accountant_state=second.accountant_state,
        )


def test_state_from_another_accountant_is_refused() -> None:
    first = train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.0, accountant="rdp"))
    with pytest.raises(ValueError, match="accountant"):
        train(
            make_model(),
            BCE,
            X,
            Y,
            dp_cfg(noise_multiplier=1.0, accountant="prv"),
            accountant_state=first.accountant_state,
        )
    with pytest.raises(ConfigError, match="accountant_state"):
        train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.0, accountant="rdp"), accountant_state={"history": []})
    with pytest.raises(ConfigError, match="accountant_state"):
        train(make_model(), BCE, X, Y, TrainConfig(epochs=1), accountant_state=first.accountant_state)


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental")
def test_gdp_accountant_and_its_constant_noise_rule() -> None:
    first = train(make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.2, accountant="gdp"))
    assert first.epsilon == fresh_epsilon("gdp", first.accountant_state["history"])
    second = train(
        make_model(), BCE, X, Y, dp_cfg(noise_multiplier=1.2, accountant="gdp"), accountant_state=first.accountant_state
    )
    assert second.accountant_state["history"] == [[1.2, 32 / 600, 76]]
    assert second.epsilon > first.epsilon
    with pytest.raises(ConfigError, match="gdp"):
        train(
            make_model(),
            BCE,
            X,
            Y,
            dp_cfg(noise_multiplier=2.0, accountant="gdp"),
            accountant_state=first.accountant_state,
        )


# ---------------------------------------------------------------------------------- empty batches


def test_empty_poisson_batches_take_noise_steps_and_are_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = training._poisson_batch

    def spy(rng: np.random.Generator, n: int, q: float) -> torch.Tensor:
        idx = real(rng, n, q)
        sizes.append(int(idx.numel()))
        return idx

    monkeypatch.setattr(training, "_poisson_batch", spy)
    x, y = X[:50], Y[:50]
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=3, batch_size=1, lr=1e-2, dp=DPConfig(noise_multiplier=1.0, accountant="rdp"))
    res = train(model, BCE, x, y, cfg)
    assert len(sizes) == 150 and sizes.count(0) > 20  # q = 0.02: P(empty) = 0.98**50 ~ 0.36
    assert res.steps == 150
    assert res.accountant_state["history"] == [[1.0, 0.02, 150]]
    assert res.epsilon == fresh_epsilon("rdp", res.accountant_state["history"])
    assert np.isfinite(res.train_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_all_batches_empty_still_noise_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_poisson_batch", lambda rng, n, q: torch.zeros(0, dtype=torch.int64))
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    res = train(model, BCE, X[:50], Y[:50], TrainConfig(epochs=1, batch_size=5, dp=DPConfig(noise_multiplier=1.0)))
    assert res.steps == 10 and res.accountant_state["history"] == [[1.0, 0.1, 10]]
    assert np.isnan(res.train_loss)  # no non-empty batch to average
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # noise moved them


# ---------------------------------------------------------------------------------- determinism


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dp", [None, DPConfig(noise_multiplier=1.0, accountant="rdp")], ids=["plain", "dp"])
def test_same_seed_same_weights_other_seed_other_weights(dp: DPConfig | None) -> None:
    runs = []
    for seed in (0, 0, 1):
        model = make_model()
        train(model, BCE, X, Y, TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=seed, dp=dp))
        runs.append(_weights(model))
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


def test_callers_torch_rng_is_left_alone() -> None:
    state = torch.get_rng_state()
    train(make_model(), BCE, X, Y, TrainConfig(epochs=1, batch_size=64, seed=3))
    assert torch.equal(state, torch.get_rng_state())


# -------------------------------------------------------------------------------- clean unwrap


def test_dp_training_leaves_a_clean_trained_module() -> None:
    model = make_model()
    params_before = list(model.parameters())
    w_before = _weights(model)
    res = train(model, BCE, X, Y, dp_cfg(noise_multiplier=1.0, accountant="rdp"))
    assert res.epsilon is not None
    assert list(model.parameters()) == params_before  # same Parameter objects, updated in place
    assert not _same(w_before, _weights(model))
    assert set(model.state_dict()) == set(w_before) and not any("_module" in k for k in model.state_dict())
    assert not model.training
    for p in model.parameters():
        assert p.device.type == "cpu" and p.grad is None
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "summed_grad"):
            assert not hasattr(p, attr), attr
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert not hasattr(m, "activations") and not hasattr(m, "autograd_grad_sample_hooks")
    # still usable for both kinds of training afterwards
    plain = train(model, BCE, X, Y, TrainConfig(epochs=1, batch_size=64))
    assert np.isfinite(plain.train_loss)
    again = train(model, BCE, X, Y, dp_cfg(noise_multiplier=1.0))
    assert again.epsilon is not None and not any("_module" in k for k in model.state_dict())


# ----------------------------------------------------------------------------------- learning


def test_plain_training_learns_a_separable_problem() -> None:
    x, y = separable(2000, seed=1)
    xv, yv = separable(1000, seed=2)
    model = make_model()
    start = float(BCE(torch.from_numpy(predict(model, x)), torch.from_numpy(y)))
    losses: list[tuple[int, float]] = []
    res = train(
        model,
        BCE,
        x,
        y,
        TrainConfig(epochs=5, batch_size=64, lr=1e-2),
        on_epoch=lambda e, loss: losses.append((e, loss)),
    )
    assert [e for e, _ in losses] == [1, 2, 3, 4, 5] and losses[-1][1] == res.train_loss
    assert res.steps == 5 * 32 and res.epsilon is None and res.accountant_state is None
    assert res.train_loss < 0.3 * start
    assert ((predict(model, xv) > 0) == (yv > 0.5)).mean() > 0.95


def test_dp_training_beats_chance_on_held_out_data() -> None:
    x, y = separable(2000, seed=1)
    xv, yv = separable(1000, seed=2)
    model = make_model()
    cfg = TrainConfig(epochs=5, batch_size=64, lr=1e-2, dp=DPConfig(target_epsilon=4.0, accountant="rdp"))
    res = train(model, BCE, x, y, cfg)
    assert res.epsilon is not None and res.epsilon <= 4.0
    assert ((predict(model, xv) > 0) == (yv > 0.5)).mean() > 0.8


def test_autoencoder_target_is_x_and_predict_shapes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.ReLU(), torch.nn.Linear(3, 8))
    res = train(model, torch.nn.MSELoss(), X, X, dp_cfg(noise_multiplier=1.0))
    assert np.isfinite(res.train_loss)
    assert predict(model, X[:10]).shape == (10, 8)
    assert predict(make_model(), X[:10]).shape == (10,)
    assert predict(make_model(), X[:0]).shape == (0,)
    assert predict(make_model(), X, batch_size=7).dtype == np.float32


# --------------------------------------------------------------------------------- validation


def _bad(**changes: object) -> tuple[TrainConfig, np.ndarray, np.ndarray]:
    x, y = X[:100].copy(), Y[:100].copy()
    dp_fields = {"target_epsilon", "noise_multiplier", "max_grad_norm", "delta", "accountant"}
    dp = {"noise_multiplier": 1.0} | {k: v for k, v in changes.items() if k in dp_fields}
    cfg = TrainConfig(**{k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}, dp=DPConfig(**dp))  # type: ignore[arg-type]
    if "x" in changes:
        x = changes["x"]  # type: ignore[assignment]
    if "y" in changes:
        y = changes["y"]  # type: ignore[assignment]
    return cfg, x, y


NAN_X = X[:100].copy()
NAN_X[3, 2] = np.nan


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "target_epsilon"),
        ({"noise_multiplier": None}, "target_epsilon"),
        ({"target_epsilon": 0.0, "noise_multiplier": None}, "target_epsilon"),
        ({"target_epsilon": -2.0, "noise_multiplier": None}, "target_epsilon"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"accountant": "moments"}, "accountant"),
        ({"device": "tpu"}, "device"),
        ({"y": Y[:99]}, "y"),
        ({"x": X[:0], "y": Y[:0]}, "x"),
        ({"x": NAN_X}, "x"),
        ({"x": X[:100, 0]}, "x"),
    ],
)
def test_invalid_settings_name_the_setting(changes: dict, setting: str) -> None:
    cfg, x, y = _bad(**changes)
    with pytest.raises(ConfigError) as info:
        train(make_model(), BCE, x, y, cfg)
    assert info.value.setting == setting and str(info.value).startswith(setting)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        train(make_model(), BCE, X, Y, TrainConfig(epochs=1, device="cuda"))
    assert resolve_device("auto") == torch.device("cpu")


def test_model_opacus_cannot_train_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ConfigError, match="model"):
        train(model, BCE, X, Y, dp_cfg(noise_multiplier=1.0))

"""studies.vanishing_exploding: the textbook numbers against NumPy, and a --quick run."""
import json

import numpy as np
import pytest
import xarray as xr

import analysis
import dynamics
from studies import vanishing_exploding as ve


def closed_form(w, steps):
    """h_t and |dh_T/dh_0| = prod_(t=1..T) |w (1 - h_t^2)| in plain NumPy, T = 0..steps."""
    h = [np.tanh(1.0)]
    for _ in range(steps):
        h.append(np.tanh(w * h[-1]))
    h = np.array(h)
    slopes = np.abs(w * (1.0 - h[1:] ** 2))
    return h, np.concatenate([[1.0], np.cumprod(slopes)])


@pytest.fixture(scope="module")
def pulse():
    return ve.pulse_gradients(ve.PULSE_WEIGHTS, ve.PULSE_STEPS)


def test_pulse_gradients_equal_the_closed_form(pulse):
    gradient, state = pulse
    for i, w in enumerate(ve.PULSE_WEIGHTS):
        h, expected = closed_form(w, ve.PULSE_STEPS)
        # the kernels' tanh, 1 - 2 / (exp(2x) + 1), is accurate to ~1e-16 absolute but not
        # relative near 0 (w = 0.5 decays to 6e-19, which it flushes to 0); the slopes
        # 1 - h^2, and so the gradients, keep full relative accuracy all the same
        np.testing.assert_allclose(state[i], h, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gradient[i], expected, rtol=1e-12, atol=0)
        assert gradient[i, 1] == pytest.approx(w * (1 - np.tanh(w * np.tanh(1.0)) ** 2), rel=1e-12)


def test_pulse_tags(pulse):
    gradient = pulse[0]
    at_1 = [ve.tag(g) for g in gradient[:, 1]]
    at_60 = [ve.tag(g) for g in gradient[:, 60]]
    # one step after the pulse every slope is a fair fraction of 1 (0.43, 0.58, 0.58) ...
    assert at_1 == ["ok", "ok", "ok"]
    # ... but after 60 steps all three have vanished: 7e-19, 4e-4 and, for w = 1.1, 2e-6
    assert at_60 == ["VANISH", "VANISH", "VANISH"]
    assert gradient[2, 60] == pytest.approx(2.0647500e-6, rel=1e-6)
    assert ve.tag(1e3) == "EXPLODE" and ve.tag(np.nan) == "VANISH"


def test_fixed_point_explains_why_w_above_one_vanishes():
    h, slope = ve.fixed_point(1.1)
    assert 0.5 < h < 0.51
    assert np.tanh(1.1 * h) == pytest.approx(h, abs=1e-15)
    assert slope == pytest.approx(1.1 * (1 - h ** 2), rel=1e-15) and slope < 1
    # the trajectory really settles there: the late slopes approach the fixed-point slope
    h_t, _ = closed_form(1.1, 200)
    assert h_t[-1] == pytest.approx(h, abs=1e-12)
    assert ve.fixed_point(0.9) == (0.0, 0.9) and ve.fixed_point(-1.1)[0] == pytest.approx(h)


def test_unclipped_adjoint_matches_the_toolkit():
    rnn = dynamics.RNN.init(3, 5, init="gaussian", gain=1.3, seed=1)
    x = np.random.default_rng(0).normal(size=(12, 2, 3))
    v = np.random.default_rng(1).normal(size=(2, 5))
    jac = analysis.state_jacobians(rnn, x).values
    ours = ve.log_adjoint_norms(jac, v, 10)
    theirs = analysis.gradient_norm_vs_lag(rnn, x, max_lag=10, grad_final=v)
    np.testing.assert_allclose(ours, theirs.log_gradient_norm.sel(norm="adjoint"), atol=1e-10)
    clipped = np.exp(ve.log_adjoint_norms(jac, 3 * v, 10, clip=0.5))
    assert (clipped[:, 1:] <= 0.5).all()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vanishing_exploding")
    ds = ve.main(["--quick", "--out", str(out), "--seed", "3"])
    return out, ds


def test_quick_run_writes_a_complete_dataset(quick_run):
    out, ds = quick_run
    path = out / "vanishing_exploding.nc"
    assert path.is_file() and (out / "vanishing_exploding.png").stat().st_size > 0
    with xr.open_dataset(path, engine="h5netcdf") as back:
        for name, variable in {**back.data_vars, **back.coords}.items():
            assert variable.attrs.get("long_name") and variable.attrs.get("units"), name
        assert back.attrs["seed"] == "3" and '"quick": true' in back.attrs["config"]
        assert back.adjoint_norm.dims == ("matrix", "activation", "spectral_norm", "clipping",
                                          "lag")
        assert back.gated_jacobian_norm.dims == ("cell", "lag")
        np.testing.assert_allclose(back.pulse_gradient, ds.pulse_gradient)


def test_quick_run_curves(quick_run):
    ds = quick_run[1]
    clip = json.loads(ds.attrs["config"])["clip"]
    clipped = ds.adjoint_norm.sel(clipping="per_step")
    assert np.isfinite(clipped).all() and (clipped <= clip).all()
    # the spectral-norm bound ||W^l|| <= ||W||^l, with equality for orthogonal W
    lag = ds.lag.values
    linear = ds.jacobian_norm.sel(activation="linear", spectral_norm=0.5)
    assert (linear <= 0.5 ** lag * (1 + 1e-9)).all()
    np.testing.assert_allclose(linear.sel(matrix="orthogonal"), 0.5 ** lag, rtol=1e-9)
    unclipped = ds.adjoint_norm.sel(activation="linear", spectral_norm=0.5, clipping="none")
    assert (unclipped <= 0.5 ** lag * (1 + 1e-9)).all()
    # clipping caps explosion but never revives a vanishing gradient
    assert (clipped <= ds.adjoint_norm.sel(clipping="none") * (1 + 1e-9)).all()
    exploding = ds.jacobian_norm.sel(matrix="orthogonal", activation="linear", spectral_norm=1.5)
    assert float(exploding[-1]) > 1e3


@pytest.mark.parametrize("argv", [["--spectral-norms", "0"], ["--spectral-norms=-1,0.5"],
                                  ["--units", "0"], ["--clip", "0"]])
def test_bad_arguments_exit_with_a_message(argv, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ve.main(["--quick", "--out", str(tmp_path)] + argv)
    assert "error" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

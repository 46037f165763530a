"""The identity-initialisation study: files and attrs, reproducibility of every number from
the documented seeds, resuming, and what a short run must already show."""
import json

import numpy as np
import pytest
import xarray as xr

import analysis
import dynamics
from dynamics.optim import Adam
from dynamics.tasks import adding_problem, minibatches
from studies import identity_init as study
from studies._common import check_attrs

SMALL = ["--lengths", "8,12", "--seeds", "2", "--steps", "60", "--units", "8", "--batch", "8",
         "--lr", "0.01"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity_init")
    return out, study.main(SMALL + ["--out", str(out)])


def test_run_writes_dataset_and_figure(small):
    out, returned = small
    assert (out / "identity_init.png").stat().st_size > 0
    with xr.open_dataset(out / "identity_init.nc", engine="h5netcdf") as ds:
        ds.load()
    check_attrs(ds)  # long_name and units on every variable and coordinate
    assert ds.grad_norm.dims == ("init", "lag")
    assert ds.lyapunov_max.dims == ("init", "seed")
    assert ds.loss.dims == ("init", "seq_len", "seed", "step")
    assert ds.final_mse.dims == ("init", "seq_len", "seed")
    assert ds.init.values.tolist() == list(study.INITS)
    assert ds.seq_len.values.tolist() == [8, 12] and ds.sizes["step"] == 60
    assert ds.sizes["lag"] == 12
    assert json.loads(ds.attrs["config"])["units"] == 8
    assert set(json.loads(ds.init.attrs["description"])) == set(study.INITS)
    for key in ("package_version", "numba_version", "dtype", "seed", "created"):
        assert key in ds.attrs
    assert not ds.diverged.any()
    xr.testing.assert_allclose(ds, returned)


def test_every_number_comes_from_the_documented_seeds(small):
    ds = small[1]
    init, seq_len, index = "lstm_fb1", 12, list(study.INITS).index("lstm_fb1")
    seeds = [np.random.SeedSequence(0, spawn_key=(1, index, s)) for s in range(2)]
    member = dynamics.LSTM.init(2, 8, init="uniform", forget_bias=1.0, seed=seeds[1])
    np.testing.assert_array_equal(study.network(init, 8, 2, 0, "float64").member(1).weight_hh,
                                  member.weight_hh)
    data = minibatches(adding_problem, seed=np.random.SeedSequence(0, spawn_key=(2, seq_len)),
                       seq_len=seq_len, batch=8)
    run = dynamics.train(study.network(init, 8, 2, 0, "float64"), data, steps=60, readout=1,
                         optimizer=Adam(0.01), clip=1.0,
                         seed=np.random.SeedSequence(0, spawn_key=(5,)))
    np.testing.assert_array_equal(ds.loss.sel(init=init, seq_len=seq_len), run.history.loss)
    x_test, y_test = adding_problem(seq_len, study.TEST_BATCH,
                                    np.random.SeedSequence(0, spawn_key=(3, seq_len)))
    np.testing.assert_allclose(ds.final_mse.sel(init=init, seq_len=seq_len),
                               dynamics.evaluate(run.model, run.readout, x_test, y_test),
                               rtol=1e-12)
    x, _ = adding_problem(12, study.ANALYSIS_BATCH, np.random.SeedSequence(0, spawn_key=(4,)))
    lyap = analysis.lyapunov_spectrum(study.network(init, 8, 2, 0, "float64"), x,
                                      n_exponents=1, burn_in=12 // 5,
                                      seed=np.random.SeedSequence(0, spawn_key=(6,)))
    np.testing.assert_allclose(ds.lyapunov_max.sel(init=init),
                               lyap.lyapunov_max.mean("batch"), rtol=1e-12)
    norms = analysis.gradient_norm_vs_lag(study.network(init, 8, 2, 0, "float64"), x,
                                          max_lag=11, products=False)
    log_adjoint = norms.log_gradient_norm.sel(norm="adjoint")   # the geometric mean
    np.testing.assert_allclose(ds.grad_norm.sel(init=init),
                               np.exp(log_adjoint.mean(("member", "batch"))), rtol=1e-12)


def test_the_irnn_keeps_gradients_that_the_small_gaussian_relu_rnn_loses(small):
    grad = small[1].grad_norm.isel(lag=-1)
    assert grad.sel(init="irnn") > 1e6 * grad.sel(init="relu_gaussian")
    assert grad.sel(init="tanh_g1.5") > grad.sel(init="tanh_g0.9")
    loss = small[1].loss.sel(init="irnn")   # and training moves the loss down
    assert (loss.isel(step=slice(-10, None)).mean() < loss.isel(step=slice(0, 10)).mean())


def test_a_rerun_on_the_same_stores_resumes_and_another_configuration_is_refused(small):
    out, first = small
    again = study.main(SMALL + ["--out", str(out)])  # everything done: read back
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())
    with pytest.raises(SystemExit):
        study.main(SMALL[:-2] + ["--lr", "0.02", "--out", str(out)])


@pytest.mark.parametrize("argv", [["--inits", "irnn,nope"], ["--lengths", "1"],
                                  ["--seeds", "0"], ["--steps", "0"], ["--lr", "0"],
                                  ["--lr", "-1"], ["--clip", "-1"]])
def test_bad_arguments_exit_with_a_message_before_any_store_is_opened(argv, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(argv + ["--out", str(tmp_path)])
    assert "error" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.zarr"))

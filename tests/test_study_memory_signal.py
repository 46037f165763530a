"""The memory-signal study: files and attrs of a --quick run, the physics it must show,
and its gradient against finite differences."""
import json

import numpy as np
import pytest
import xarray as xr

import dynamics

from studies import memory_signal as study
from studies._common import check_attrs


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_signal")
    returned = study.main(["--quick", "--out", str(out)])
    return out, returned


def test_quick_run_writes_dataset_and_figure(quick):
    out, returned = quick
    assert (out / "memory_signal.png").stat().st_size > 0
    with xr.open_dataset(out / "memory_signal.nc", engine="h5netcdf") as ds:
        ds.load()
    check_attrs(ds)  # long_name and units on every variable and coordinate
    assert ds.state_signal.dims == ("cell", "seq_len", "seed")
    assert ds.gradient_signal.dims == ("cell", "seq_len", "seed")
    assert ds.state_half_life.dims == ("cell",)
    assert ds.cell.values.tolist() == list(study.CELLS)
    assert ds.seq_len.values.tolist() == list(study.QUICK_LENGTHS)
    config = json.loads(ds.attrs["config"])
    assert config["seeds"] == ds.sizes["seed"] == 4
    for key in ("package_version", "numba_version", "backend", "dtype", "seed", "created"):
        assert key in ds.attrs
    xr.testing.assert_allclose(ds, returned)


def test_survival_starts_at_one(quick):
    ds = quick[1]
    for name in ("state_signal", "gradient_signal"):
        np.testing.assert_allclose(ds[name].sel(seq_len=1), 1.0, rtol=1e-12)
    assert not ds.diverged.any()


def test_lstm_with_forget_bias_remembers_longer_than_tanh_rnn(quick):
    ds = quick[1]
    last = ds.isel(seq_len=-1).median("seed")
    for name in ("state_signal", "gradient_signal"):
        assert last[name].sel(cell="lstm_fb1") > 10 * last[name].sel(cell="rnn_tanh"), name
        # and the tanh RNN's signal has faded far above rounding
        assert last[name].sel(cell="rnn_tanh") < 0.01, name
    assert last.state_signal.sel(cell="rnn_tanh") > 100 * last.state_floor.sel(cell="rnn_tanh")
    assert ds.state_half_life.sel(cell="lstm_fb1") > ds.state_half_life.sel(cell="rnn_tanh")


def test_members_do_not_depend_on_how_many_seeds_or_cells_run(quick):
    ds = quick[1]
    alone = study.memory_signal(["lstm_fb1"], study.QUICK_LENGTHS, units=32, seeds=2,
                                trials=8)
    for name in ("state_signal", "gradient_signal"):
        np.testing.assert_allclose(alone[name].sel(cell="lstm_fb1"),
                                   ds[name].sel(cell="lstm_fb1", seed=[0, 1]), rtol=1e-12)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_fb1", "gru"])
def test_first_input_gradient_matches_finite_differences(cell):
    model = study.build_ensemble(cell, 3, 5, seeds=2, seed=7)
    x, _, v = study.draw_inputs(3, 5, steps=6, seeds=2, trials=2, noise=0.5, seed=7)

    def loss(x):  # <v, h_T> for each (member, trial)
        return np.einsum("ebh,eh->eb", dynamics.forward(model, x).output[-1], v)

    grad = study.first_input_gradient(model, x, v)
    eps = 1e-6
    numeric = np.empty_like(grad)
    for d in range(3):
        step = np.zeros_like(x)
        step[0, ..., d] = eps
        numeric[..., d] = (loss(x + step) - loss(x - step)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_half_life_is_exact_for_exponential_decay():
    lengths = np.array([1, 2, 5, 10, 20])
    survival = 0.5 ** ((lengths - 1) / 3.7)
    assert study.half_life(survival, lengths) == pytest.approx(4.7)
    assert np.isnan(study.half_life(np.ones(5), lengths))


@pytest.mark.parametrize("kwargs, match", [
    ({"cells": ["lstm"]}, "cells must be"),
    ({"lengths": [5, 2]}, "lengths must be increasing"),
    ({"lengths": [0, 2]}, "lengths must be increasing"),
    ({"seeds": 0}, "seeds must be"),
    ({"signal": 0.0}, "signal > 0"),
    ({"backend": "tpu"}, "backend must be one of"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        study.memory_signal(**{"cells": ["rnn_tanh"], "lengths": [1, 2], "units": 4,
                               **kwargs})

"""What every analysis function shares: the model it accepts, dims and provenance.

Analysis works on one recurrent layer in one direction (a ``dynamics.RNN``, ``LSTM``,
``GRU``, possibly an ensemble, or a one-layer unidirectional ``Network``), whose state
is h (S = H) or, for an LSTM, h and c stacked (S = 2H, h first). Results carry a
``member`` dimension for ensembles only, as ``dynamics.forward`` does.
"""
import datetime
import json

import numba
import numpy as np

import dynamics
from dynamics.cells import Cell
from dynamics.network import Network
from dynamics.validation import FLOAT_DTYPES

#: The state's coordinate labels: "h" units then, for an LSTM, "c" units.
STATE_PARTS = {"lstm": ("h", "c")}


def single_cell(model):
    """``model`` as one cell (an ensemble or not); refuse deeper or bidirectional networks."""
    if isinstance(model, Network):
        if model.num_layers != 1 or model.bidirectional:
            raise ValueError("analysis takes one layer in one direction, got a network with "
                             f"num_layers={model.num_layers}, bidirectional={model.bidirectional}")
        return model.first
    if not isinstance(model, Cell):
        raise TypeError("model must be a dynamics.RNN, LSTM, GRU or a one-layer Network, "
                        f"got {type(model).__name__}")
    return model


def analysis_dtype(dtype):
    """float32 or float64 (analysis defaults to float64), as a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def state_size(cell):
    return 2 * cell.hidden_size if cell.kind == "lstm" else cell.hidden_size


def state_coords(cell):
    """(part, unit) labels of the S state components, as a pandas-free pair of arrays."""
    parts = STATE_PARTS.get(cell.kind, ("h",))
    H = cell.hidden_size
    return np.repeat(parts, H), np.tile(np.arange(H), len(parts))


def item_dims(cell):
    """Leading dims of per-sequence results: ("member", "batch") or ("batch",)."""
    return ("member", "batch") if cell.ensemble_size is not None else ("batch",)


def drop_member(array, cell, axis=0):
    """An array with the member axis E (``axis``) as the user sees it: without E for a
    single network."""
    return array if cell.ensemble_size is not None else np.take(array, 0, axis=axis)


def provenance(function, config, dtype, seed=None, backend="cpu"):
    """Dataset attrs: package and numba versions, backend, dtype, the configuration (as
    JSON: netCDF stores no dicts, bools or None), the base seed and the creation time."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"package": "recurrent-dynamics", "package_version": dynamics.__version__,
            "numba_version": numba.__version__, "backend": backend, "dtype": np.dtype(dtype).name,
            "function": function, "config": json.dumps(config, sort_keys=True, default=str),
            "seed": "none" if seed is None else str(seed), "created": now,
            "history": f"{now} recurrent-dynamics {dynamics.__version__}: {function}"}


def attrs(long_name, units):
    return {"long_name": long_name, "units": units}

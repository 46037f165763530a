"""What every study shares: grid arguments, the common options, and saving results.

Each study is ``python -m studies.<name> [--quick] [--out DIR] ...`` and writes
``DIR/<name>.nc`` (NetCDF through h5netcdf) and ``DIR/<name>.png``.
"""
import argparse
import importlib
import pathlib

import numpy as np

from analysis.sweep import save_netcdf


def run_main(module_name):
    """Run ``studies.<name>.main()`` from the importable module, not from ``__main__``:
    dask then pickles the sweep's functions by reference to ``studies.<name>``, which
    a running cluster's workers can import (they cannot import our ``__main__``)."""
    return importlib.import_module(module_name).main()


def parse_grid(text):
    """'a,b,c' or 'start:stop:num' -> array of floats.

    >>> parse_grid("0.5:2.0:4").tolist(), parse_grid("1,3").tolist()
    ([0.5, 1.0, 1.5, 2.0], [1.0, 3.0])
    """
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            return np.linspace(float(start), float(stop), int(num))
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list or start:stop:num, got {text!r}") from None


def study_parser(description, name):
    """An ArgumentParser with the options every study takes: --out, --quick, --seed,
    --dtype, --backend."""
    parser = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=description)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"),
                        help="folder for the dataset (.nc) and the figure (.png); default out/")
    parser.add_argument("--quick", action="store_true", help="a small, fast version")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                        help="run the networks on the CPU cores or an NVIDIA GPU (numba.cuda)")
    return parser


def chosen_sizes(args, quick, full):
    """The study's sizes: ``quick`` or ``full`` defaults, overridden by given options.

    >>> import argparse
    >>> chosen_sizes(argparse.Namespace(quick=True, units=8, seeds=None), dict(units=4,
    ...              seeds=2), dict(units=64, seeds=4))
    {'units': 8, 'seeds': 2}
    """
    sizes = dict(quick if args.quick else full)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    return sizes


def check_attrs(dataset):
    """Refuse a dataset whose variables or coordinates lack ``long_name`` or ``units``."""
    missing = [name for name, variable in {**dataset.data_vars, **dataset.coords}.items()
               if not {"long_name", "units"} <= set(variable.attrs)]
    if missing:
        raise ValueError(f"variables without long_name/units: {missing}")


def save(dataset, figure, out, name):
    """Write ``out/<name>.nc`` and ``out/<name>.png``; return both paths."""
    check_attrs(dataset)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    netcdf, png = out / f"{name}.nc", out / f"{name}.png"
    save_netcdf(dataset, netcdf)
    figure.savefig(png, dpi=120, bbox_inches="tight")
    return netcdf, png

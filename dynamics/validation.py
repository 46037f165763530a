"""Argument checks shared by the whole toolkit; every message names the argument.

All checks run before any kernel: a kernel is never reached with arrays that could
make it read or write out of bounds.
"""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(name, value):
    """Return ``value`` as a float32/float64 ndarray in native byte order (as big-endian
    data from NetCDF or HDF5 files may not be); refuse every other dtype.

    >>> check_float_array("x", [1.0, 2.0]).dtype, check_float_array("x", np.ones(2, ">f4")).dtype
    (dtype('float64'), dtype('float32'))
    """
    array = np.asarray(value)
    native = array.dtype.newbyteorder("=")
    if native not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {array.dtype}"
                        " (cast it explicitly)")
    return array.astype(native, copy=False)


def format_shape(dims):
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def check_shape(name, array, expected):
    """Check ``array.shape`` against ``expected``, a tuple of ints or names (wildcards).

    >>> check_shape("x", np.zeros((100, 8, 12)), ("T", "B", 16))
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (T, B, 16), got (100, 8, 12)
    """
    ok = array.ndim == len(expected) and all(
        not isinstance(want, int) or got == want for got, want in zip(array.shape, expected))
    if not ok:
        raise ValueError(f"{name} must have shape {format_shape(expected)}, "
                         f"got {format_shape(array.shape)}")
    return array


def check_finite(name, array):
    """Refuse arrays holding nan or inf (used for parameters, not for data)."""
    bad = np.size(array) - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s)")
    return array


def check_positive_int(name, value, minimum=1):
    """Return ``value`` as int if it is an integer >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value

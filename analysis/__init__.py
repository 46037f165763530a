"""Analysis of signal and gradient propagation in recurrent networks, as xarray.

- ``state_jacobians``, ``jacobian_product``: d s_t / d s_(t-1) and products of them;
- ``gradient_norm_vs_lag``: how gradients fade or grow with the lag;
- ``log_singular_values``, ``lyapunov_spectrum``: stable long products and exponents;
- ``weight_spectrum``: eigen- and singular values of W_hh;
- ``analysis.meanfield``: the large-N theory of random networks.
"""
from analysis import meanfield
from analysis.gradients import gradient_norm_vs_lag
from analysis.jacobians import jacobian_product, state_jacobians
from analysis.lyapunov import log_singular_values, lyapunov_spectrum
from analysis.spectra import weight_spectrum

__all__ = ["state_jacobians", "jacobian_product", "gradient_norm_vs_lag",
           "log_singular_values", "lyapunov_spectrum", "weight_spectrum", "meanfield"]

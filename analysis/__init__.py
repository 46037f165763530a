"""Analysis of signal and gradient propagation (Jacobians, spectra, Lyapunov exponents)."""

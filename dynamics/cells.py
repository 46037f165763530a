"""Recurrent cells (one layer, one direction), single networks or ensembles.

Parameters follow ``torch.nn.RNN/LSTM/GRU`` exactly: ``weight_ih (G*H, D)``,
``weight_hh (G*H, H)``, ``bias_ih, bias_hh (G*H,)``, gate order LSTM ``i, f, g, o``,
GRU ``r, z, n``. Arrays with one more leading axis ``E`` make an ensemble of E
independent networks, run together in one kernel launch.

>>> import numpy as np, dynamics
>>> cell = dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.eye(4))
>>> cell.hidden_size, cell.input_size, cell.ensemble_size
(4, 2, None)
>>> dynamics.LSTM.init(2, 8, ensemble=16, seed=0).weight_hh.shape
(16, 32, 8)
"""
import numpy as np

from dynamics import init as initialisers
from dynamics.validation import (check_choice, check_finite, check_float_array,
                                 check_positive_int, check_shape)
from kernels.cells import CELL_CODES, GATES


class Cell:
    """Base of RNN, LSTM and GRU: holds and validates the four parameter arrays.

    The parameters are read-only attributes, checked once when the cell is built (their
    values may be changed in place; a new shape needs a new cell).
    """

    kind = None

    def __init__(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        weight_hh = check_float_array("weight_hh", weight_hh)
        if weight_hh.ndim not in (2, 3):
            raise ValueError("weight_hh must have shape (G*H, H) or (E, G*H, H), "
                             f"got {weight_hh.shape}")
        ensemble = weight_hh.shape[:-2]
        if ensemble and ensemble[0] < 1:
            raise ValueError(f"an ensemble needs at least 1 member, got weight_hh {weight_hh.shape}")
        rows, hidden = weight_hh.shape[-2:]
        if hidden < 1 or rows != self.gates * hidden:
            raise ValueError(f"weight_hh of a {self.kind} cell must have shape "
                             f"({self.gates}*H, H) with H >= 1, got {weight_hh.shape}")
        weight_ih = check_float_array("weight_ih", weight_ih)
        check_shape("weight_ih", weight_ih, (*ensemble, rows, "D"))
        if (bias_ih is None) != (bias_hh is None):
            raise ValueError("bias_ih and bias_hh must be given together or both be None")
        arrays = {"weight_ih": weight_ih, "weight_hh": weight_hh}
        if bias_ih is not None:
            for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
                arrays[name] = check_shape(name, check_float_array(name, bias), (*ensemble, rows))
        dtypes = {a.dtype for a in arrays.values()}
        if len(dtypes) > 1:
            raise TypeError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        for name, array in arrays.items():
            check_finite(name, array)
        self._parameters = arrays

    weight_ih = property(lambda self: self._parameters["weight_ih"])
    weight_hh = property(lambda self: self._parameters["weight_hh"])
    bias_ih = property(lambda self: self._parameters.get("bias_ih"), doc="None without biases")
    bias_hh = property(lambda self: self._parameters.get("bias_hh"), doc="None without biases")
    bias = property(lambda self: "bias_ih" in self._parameters, doc="Whether the cell has biases.")
    gates = property(lambda self: GATES[self.code], doc="G, the number of gates.")
    code = property(lambda self: CELL_CODES[self.kind], doc="The kernels' cell code.")
    hidden_size = property(lambda self: self.weight_hh.shape[-1])
    input_size = property(lambda self: self.weight_ih.shape[-1])
    dtype = property(lambda self: self.weight_hh.dtype)

    @property
    def ensemble_size(self):
        """E for an ensemble, None for a single network."""
        return self.weight_hh.shape[0] if self.weight_hh.ndim == 3 else None

    def parameters(self):
        """The parameters as a dict keyed by torch's names (without layer suffix)."""
        return dict(self._parameters)

    def astype(self, dtype):
        """The same cell with parameters in ``dtype`` (self if already so)."""
        if np.dtype(dtype) == self.dtype:
            return self
        return self._like({k: v.astype(dtype) for k, v in self.parameters().items()})

    def member(self, e):
        """Member ``e`` of an ensemble, as a single network."""
        if self.ensemble_size is None:
            raise ValueError("member() needs an ensemble; this cell is a single network")
        return self._like({k: v[e] for k, v in self.parameters().items()})

    @staticmethod
    def stack(cells):
        """One ensemble of the single networks ``cells``, member e = ``cells[e]`` (the
        inverse of ``member``). They must share class, options, sizes, dtype and bias.

        >>> import dynamics
        >>> cells = [dynamics.GRU.init(2, 3, seed=s) for s in range(4)]
        >>> ensemble = dynamics.Cell.stack(cells)
        >>> ensemble.ensemble_size, bool((ensemble.member(2).weight_hh == cells[2].weight_hh).all())
        (4, True)
        """
        cells = list(cells)
        if not cells or not all(isinstance(c, Cell) and c.ensemble_size is None for c in cells):
            raise ValueError("cells must be a non-empty list of single networks "
                             "(dynamics.RNN, LSTM or GRU without an ensemble axis)")
        first = cells[0]
        shapes = {(type(c), c.kind, c.bias, c.dtype, c.weight_ih.shape, c.weight_hh.shape)
                  for c in cells}
        if len(shapes) != 1:
            raise ValueError("cells must share class, nonlinearity, bias, dtype and sizes, "
                             f"got {len(shapes)} different kinds")
        return first._like({name: np.stack([c.parameters()[name] for c in cells])
                            for name in first.parameters()})

    def _like(self, parameters):
        return type(self)(**parameters, **self._options())

    def _options(self):
        return {}

    def __repr__(self):
        ens = f", ensemble={self.ensemble_size}" if self.ensemble_size else ""
        return (f"{type(self).__name__}({self.kind}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}{ens}, dtype={self.dtype}, bias={self.bias})")

    @classmethod
    def init(cls, input_size, hidden_size, *, init="uniform", gain=1.0, ensemble=None,
             seed=0, dtype="float64", bias=True, **options):
        """Draw a cell from one of the initialisers in ``dynamics.init``.

        ``init`` is "uniform" (torch's default), "gaussian" (W_hh ~ N(0, gain^2/H)),
        "orthogonal" (gain * orthogonal) or "identity" (gain * I, IRNN). Each of the G
        gate blocks of W_hh is drawn separately. W_ih is torch's default uniform in
        every case; biases are torch's uniform for "uniform" and zero otherwise. An
        ensemble's member e draws from the e-th child of ``SeedSequence(seed)``, so it
        does not depend on the ensemble size.
        """
        input_size = check_positive_int("input_size", input_size)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        code = CELL_CODES[cls._kind_for(options)]
        parameters = initialisers.draw(GATES[code], input_size, hidden_size, init=init,
                                       gain=gain, ensemble=ensemble, seed=seed, dtype=dtype,
                                       bias=bias)
        return cls._from_init(parameters, options)

    @classmethod
    def _kind_for(cls, options):
        return cls.kind

    @classmethod
    def _from_init(cls, parameters, options):
        return cls(**parameters, **options)


class RNN(Cell):
    """Vanilla RNN cell ``h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, phi tanh or relu."""

    def __init__(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
        self._nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__(weight_ih, weight_hh, bias_ih, bias_hh)

    nonlinearity = property(lambda self: self._nonlinearity, doc='"tanh" or "relu"')
    kind = property(lambda self: "rnn_" + self.nonlinearity)

    def _options(self):
        return {"nonlinearity": self.nonlinearity}

    @classmethod
    def _kind_for(cls, options):
        return "rnn_" + check_choice("nonlinearity", options.get("nonlinearity", "tanh"),
                                     ("tanh", "relu"))


class LSTM(Cell):
    """LSTM cell, gates ``i, f, g, o``; ``init(..., forget_bias=b)`` sets b_ih[f] = b, b_hh[f] = 0."""

    kind = "lstm"

    @classmethod
    def _from_init(cls, parameters, options):
        forget_bias = options.pop("forget_bias", None)
        if forget_bias is not None:
            if parameters["bias_ih"] is None:
                raise ValueError("forget_bias needs bias=True")
            hidden = parameters["weight_hh"].shape[-1]
            parameters["bias_ih"][..., hidden:2 * hidden] = forget_bias
            parameters["bias_hh"][..., hidden:2 * hidden] = 0.0
        return cls(**parameters, **options)


class GRU(Cell):
    """GRU cell, gates ``r, z, n``, reset gate applied after the hidden matmul (as torch)."""

    kind = "gru"

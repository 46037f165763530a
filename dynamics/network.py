"""Stacked, optionally bidirectional networks of cells, as ``torch.nn.RNN/LSTM/GRU``.

>>> import dynamics
>>> net = dynamics.Network.init("gru", 3, 8, num_layers=2, bidirectional=True)
>>> sorted(net.parameters())[:2], net.layers[1][0].input_size
(['bias_hh_l0', 'bias_hh_l0_reverse'], 16)
"""
import numpy as np

from dynamics.cells import GRU, LSTM, RNN, Cell
from dynamics.init import children
from dynamics.validation import check_choice, check_positive_int

CELL_CLASSES = {"rnn_tanh": RNN, "rnn_relu": RNN, "lstm": LSTM, "gru": GRU}


class Network:
    """``num_layers`` layers of one or two cells (forward, reverse) of one kind.

    Layer l > 0 takes the concatenated outputs of layer l-1's directions as input.
    Every cell must share kind, hidden size, dtype, bias and ensemble size. ``layers``
    is read-only: a tuple of tuples, checked once.
    """

    def __init__(self, layers):
        layers = tuple(tuple(layer) if isinstance(layer, (list, tuple)) else (layer,)
                       for layer in layers)
        if not layers or any(len(layer) not in (1, 2) for layer in layers):
            raise ValueError("layers must be a non-empty list of 1 or 2 cells each")
        if len({len(layer) for layer in layers}) != 1:
            raise ValueError("every layer must have the same number of directions")
        cells = [cell for layer in layers for cell in layer]
        if not all(isinstance(cell, Cell) for cell in cells):
            raise TypeError("layers must hold dynamics.RNN, LSTM or GRU cells")
        first = cells[0]
        for attribute in ("kind", "hidden_size", "dtype", "bias", "ensemble_size"):
            values = {getattr(cell, attribute) for cell in cells}
            if len(values) != 1:
                raise ValueError(f"all cells must share {attribute}, got {sorted(map(str, values))}")
        width = len(layers[0]) * first.hidden_size
        for index, layer in enumerate(layers):
            expected = layers[0][0].input_size if index == 0 else width
            for cell in layer:
                if cell.input_size != expected:
                    raise ValueError(f"layer {index} cells must have input_size {expected}, "
                                     f"got {cell.input_size}")
        self._layers = layers

    layers = property(lambda self: self._layers, doc="((cell,) or (forward, reverse), ...)")
    first = property(lambda self: self.layers[0][0])
    kind = property(lambda self: self.first.kind)
    hidden_size = property(lambda self: self.first.hidden_size)
    input_size = property(lambda self: self.first.input_size)
    dtype = property(lambda self: self.first.dtype)
    bias = property(lambda self: self.first.bias)
    ensemble_size = property(lambda self: self.first.ensemble_size)
    num_layers = property(lambda self: len(self.layers))
    num_directions = property(lambda self: len(self.layers[0]))
    bidirectional = property(lambda self: self.num_directions == 2)

    @staticmethod
    def suffix(layer, direction):
        """torch's parameter-name suffix, e.g. ``_l1_reverse``."""
        return f"_l{layer}" + ("_reverse" if direction else "")

    def named_cells(self):
        """Yield (suffix, layer index, direction, cell) in torch's order."""
        for l, layer in enumerate(self.layers):
            for d, cell in enumerate(layer):
                yield self.suffix(l, d), l, d, cell

    def parameters(self):
        """All parameters keyed by torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``...)."""
        return {name + suffix: array for suffix, _, _, cell in self.named_cells()
                for name, array in cell.parameters().items()}

    def __repr__(self):
        return (f"Network({self.kind}, input_size={self.input_size}, hidden_size="
                f"{self.hidden_size}, num_layers={self.num_layers}, bidirectional="
                f"{self.bidirectional}, ensemble={self.ensemble_size}, dtype={self.dtype})")

    @classmethod
    def init(cls, kind, input_size, hidden_size, num_layers=1, bidirectional=False, *, seed=0,
             **options):
        """Draw every cell with ``Cell.init`` (same options); cell k uses child k of ``seed``."""
        check_choice("kind", kind, tuple(CELL_CLASSES))
        num_layers = check_positive_int("num_layers", num_layers)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise ValueError(f"bidirectional must be True or False, got {bidirectional!r}")
        directions = 2 if bidirectional else 1
        hidden_size = check_positive_int("hidden_size", hidden_size)
        if "nonlinearity" in options:
            raise ValueError(f"nonlinearity is for vanilla RNNs, named by the kind (rnn_tanh "
                             f"or rnn_relu): got kind={kind!r} and "
                             f"nonlinearity={options['nonlinearity']!r}")
        if kind.startswith("rnn_"):
            options["nonlinearity"] = kind[4:]
        cells = iter(children(seed, num_layers * directions))
        layers = []
        for l in range(num_layers):
            size = input_size if l == 0 else directions * hidden_size
            layers.append([CELL_CLASSES[kind].init(size, hidden_size, seed=next(cells),
                                                   **options) for _ in range(directions)])
        return cls(layers)


def as_network(model):
    """A Network for ``model`` (a Network, or a single cell as a 1-layer network)."""
    if isinstance(model, Network):
        return model
    if isinstance(model, Cell):
        return Network([[model]])
    raise TypeError(f"model must be a dynamics.RNN, LSTM, GRU or Network, got {type(model).__name__}")

"""Conversion to and from ``torch.nn.RNN``, ``LSTM`` and ``GRU`` (torch is optional).

Only this module touches torch, and only when one of its functions is called.
"""
import numpy as np

from dynamics.cells import GRU, LSTM, RNN
from dynamics.network import Network, as_network


def from_torch(module):
    """A ``dynamics.Network`` with the weights of a ``torch.nn.RNN/LSTM/GRU``.

    Any ``num_layers``, ``bidirectional`` and ``bias``; ``batch_first`` modules are
    accepted (our arrays stay time-major); ``proj_size`` and ``dropout`` are not.
    The dtype follows the module's (float32 or float64). The weights are copied: training
    the module further does not change the network.

    >>> import torch, numpy as np, dynamics
    >>> m = torch.nn.GRU(3, 4, num_layers=2).double()
    >>> net = dynamics.from_torch(m)
    >>> x = torch.randn(5, 2, 3, dtype=torch.float64)
    >>> bool(np.allclose(dynamics.forward(net, x.numpy()).output, m(x)[0].detach().numpy()))
    True
    """
    import torch

    if isinstance(module, torch.nn.LSTM):
        if module.proj_size:
            raise ValueError("LSTM with proj_size > 0 is not supported")
        make = LSTM
    elif isinstance(module, torch.nn.GRU):
        make = GRU
    elif isinstance(module, torch.nn.RNN):
        make = lambda **p: RNN(**p, nonlinearity=module.nonlinearity)  # noqa: E731
    else:
        raise TypeError(f"module must be torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if module.dropout and module.num_layers > 1:
        raise ValueError("dropout between layers is not supported (set it to 0)")
    state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if module.bias else ())
    layers = []
    for l in range(module.num_layers):
        layers.append([make(**{n: state[n + Network.suffix(l, d)] for n in names})
                       for d in range(2 if module.bidirectional else 1)])
    return Network(layers)


def to_torch_state_dict(model):
    """A state dict (name -> torch.Tensor) that the matching torch module's
    ``load_state_dict`` accepts. Ensembles are refused: torch has no such module.

    >>> import torch, dynamics
    >>> net = dynamics.Network.init("lstm", 3, 4, num_layers=2, bidirectional=True)
    >>> m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    >>> m.load_state_dict(dynamics.to_torch_state_dict(net))
    <All keys matched successfully>
    """
    import torch

    net = as_network(model)
    if net.ensemble_size is not None:
        raise ValueError("an ensemble has no torch counterpart; take net.member(e) cells")
    return {name: torch.from_numpy(np.array(value)) for name, value in net.parameters().items()}

"""Recurrent cells and networks, their initialisers, forward and BPTT.

>>> import numpy as np, dynamics
>>> net = dynamics.Network.init("lstm", 4, 16, num_layers=2)
>>> x = np.zeros((20, 8, 4))
>>> dynamics.forward(net, x).output.shape
(20, 8, 16)
"""
from dynamics import init
from dynamics.cells import GRU, LSTM, RNN, Cell
from dynamics.clipping import clip_grad_norm
from dynamics.network import Network
from dynamics.propagation import ForwardResult, bptt, forward
from dynamics.torch_interop import from_torch, to_torch_state_dict

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "Cell", "Network", "forward", "bptt", "ForwardResult",
           "clip_grad_norm", "from_torch", "to_torch_state_dict", "init"]

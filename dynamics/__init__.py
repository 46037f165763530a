"""Recurrent cells and networks, their initialisers, forward and BPTT.

>>> import numpy as np, dynamics
>>> net = dynamics.Network.init("lstm", 4, 16, num_layers=2)
>>> x = np.zeros((20, 8, 4))
>>> dynamics.forward(net, x).output.shape
(20, 8, 16)
"""
from dynamics import init, optim, tasks
from dynamics.cells import GRU, LSTM, RNN, Cell
from dynamics.clipping import clip_grad_norm, grad_norm
from dynamics.network import Network
from dynamics.propagation import ForwardResult, backward, bptt, forward
from dynamics.readout import Readout
from dynamics.torch_interop import from_torch, to_torch_state_dict
from dynamics.training import Training, evaluate, train

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "Cell", "Network", "forward", "bptt", "backward", "ForwardResult",
           "clip_grad_norm", "grad_norm", "from_torch", "to_torch_state_dict", "init", "optim",
           "tasks", "Readout", "train", "evaluate", "Training"]

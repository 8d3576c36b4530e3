"""How the systems move: steppers, the registry, Brownian increments, backends and ``solve``."""

from .backends import BACKENDS, NumbaBackend, NumpyBackend, TorchBackend, get_backend
from .brownian import BrownianIncrements
from .controller import PIController
from .registry import STEPPERS, Stepper, get_stepper, register
from .solution import Solution
from .solve import solve
from ._numba_notice import install_compile_notice

install_compile_notice()  # one line on stderr before a kernel compiles (cold numba cache)

__all__ = [
    "solve",
    "Solution",
    "STEPPERS",
    "Stepper",
    "get_stepper",
    "register",
    "BrownianIncrements",
    "PIController",
    "BACKENDS",
    "get_backend",
    "NumpyBackend",
    "NumbaBackend",
    "TorchBackend",
]

"""attractorlab: train, run and dissect Equilibrium Reasoners."""

__version__ = "0.1.0"

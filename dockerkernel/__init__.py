"""dockerkernel: Jupyter kernels in Docker images, chosen like any other kernel."""

__version__ = "0.1.0"

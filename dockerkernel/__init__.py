"""dockerkernel: Jupyter kernels in Docker images, chosen like any other kernel."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension that removes orphaned kernel containers (see serverext.py)."""
    return [{"module": "dockerkernel.serverext"}]

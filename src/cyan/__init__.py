"""Cyan: a self-hosted device cloud for Particle Gen 2 devices (Spark Core, Photon, P1)."""

__version__ = "0.1.0"

__all__ = ["__version__"]

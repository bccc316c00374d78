"""vigil: real-time clinical deterioration monitoring on Kafka."""

__all__ = ["__version__"]
__version__ = "0.1.0"

"""The streaming worker: Kafka I/O (``engine``), per-batch processing (``batch``), Faust host (``app``)."""

__all__: list[str] = []

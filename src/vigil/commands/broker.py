"""``vigil broker``: the embedded Kafka-protocol broker (Tansu) on loopback, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import time

import click

__all__ = ["broker"]


@click.command()
@click.option("--port", type=int, default=0, help="Loopback port (0 = a free one).")
def broker(port: int) -> None:
    """Start the embedded Kafka-protocol broker (Tansu) and print its address; Ctrl-C stops it."""
    from vigil.broker import EmbeddedBroker

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))  # before the address is printed
    b = EmbeddedBroker(port=port or None).start()
    click.echo(b.bootstrap, nl=True)
    sys.stdout.flush()
    try:
        while not stop["now"]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()

"""Edge ingest for bedside-monitor and lab feeds (docs/ingest.md).

* :mod:`vigil.ingest.mllp` — MLLP de-framing; :mod:`vigil.ingest.hl7_oru` — ORU^R01 -> events (python-hl7);
  :mod:`vigil.ingest.ack` — HL7 ACKs; :mod:`vigil.ingest.server_hl7` — the asyncio MLLP listener.
* :mod:`vigil.ingest.fhir` — FHIR R4 Observation -> events (fhir.resources); :mod:`vigil.ingest.fhir_rest` —
  CapabilityStatement, content negotiation, dead-letter allow-list; :mod:`vigil.ingest.server_fhir` — the
  aiohttp server.
* :mod:`vigil.ingest.security` — TLS contexts, hashed bearer tokens, the partial-message memory budget, the
  development-key refusal.
* :mod:`vigil.ingest.events` — shared: pseudonyms, event times, one validated event per measurement (the same
  code tables and decoder as the replay and the worker); :mod:`vigil.ingest.publish` — acks=all producer and
  dead letters; :mod:`vigil.tools.ingest_bench` — ``python -m vigil.tools.ingest_bench``.

Nothing is imported here: importing the package does no work.
"""

__all__: list[str] = []

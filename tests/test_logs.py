"""Structured logging (vigil.logs): one format for every logger, trace ids where there are requests (the FHIR
listener echoes X-Request-Id; a value that is not a plain token is replaced, never logged)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

import aiohttp
import pytest

from vigil.ingest.server_fhir import FhirServer
from vigil.logs import StderrHandler, logging_config, setup_logging, trace


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_one_format_for_vigil_faust_and_libraries(fmt: str) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("INFO", fmt)  # the CLI's set-up (adds one handler; never closes others, e.g. pytest's)
        root.handlers[:] = [h for h in root.handlers if isinstance(h, StderrHandler)]  # only ours, for the count
        with contextlib.redirect_stderr(stream):  # the handler writes to the stderr of the moment of emit
            with trace("t-1"):
                for name in ("vigil.worker", "faust.worker", "mode.services", "aiohttp.access"):
                    logging.getLogger(name).info("hello from %s", name)
            logging.getLogger("aiokafka").info("quiet below WARNING")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    if fmt == "json":
        recs = [json.loads(ln) for ln in lines]
        assert [r["logger"] for r in recs] == ["vigil.worker", "faust.worker", "mode.services", "aiohttp.access"]
        assert {r["trace_id"] for r in recs} == {"t-1"} and all(r["level"] == "INFO" for r in recs)
    else:
        assert all(" INFO " in ln and ln.endswith("[trace=t-1]") for ln in lines)


def test_fhir_listener_echoes_a_request_id_and_replaces_an_unsafe_one(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env()

    async def main() -> list[str]:
        server = await FhirServer(s).start()
        url = f"http://127.0.0.1:{server.port}/fhir/Observation"
        got = []
        try:
            async with aiohttp.ClientSession() as http:
                for rid in ("req-42.a", "has space", None):
                    headers = {"Content-Type": "application/fhir+json", **({"X-Request-Id": rid} if rid else {})}
                    async with http.post(url, data=b"{not json", headers=headers) as r:
                        assert r.status == 400
                        got.append(r.headers["X-Request-Id"])
        finally:
            await server.stop()
        return got

    echoed, replaced, fresh = asyncio.run(main())
    assert echoed == "req-42.a"
    assert len(replaced) == 32 and replaced != "has space" and len(fresh) == 32 and fresh != replaced


def test_the_faust_config_is_one_stderr_handler_with_the_chosen_formatter() -> None:
    cfg = logging_config("debug", "json")
    assert cfg["root"] == {"level": "DEBUG", "handlers": ["default"]}
    assert cfg["handlers"]["default"]["()"] is StderrHandler
    assert cfg["formatters"]["vigil"]["()"].__name__ == "JsonFormatter"
    assert cfg["loggers"]["aiokafka"]["level"] == "WARNING"  # chatty clients stay at WARNING or above
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        logging_config("INFO", "xml")

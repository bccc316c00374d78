"""Settings: environment and file, secrets never printed, security options passed to the clients."""

from __future__ import annotations

import pytest

from vigil.config import load_settings


def test_environment_file_and_override_precedence(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("scoring:\n  mode: interval\n  min_interval_s: 30\ngroup_id: from-file\n")
    monkeypatch.setenv("VIGIL_SCORING__MIN_INTERVAL_S", "15")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    s = load_settings(cfg, group_id="from-code")
    assert s.scoring.mode == "interval"  # file
    assert s.scoring.min_interval_s == 15  # environment beats file
    assert s.group_id == "from-code"  # explicit override beats both
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"


def test_sasl_options_pass_through_and_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VIGIL_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("VIGIL_KAFKA__SASL_USERNAME", "vigil")
    monkeypatch.setenv("VIGIL_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("VIGIL_PSEUDONYM_KEY", "very-secret-key")
    s = load_settings(None)
    kw = s.kafka.client_kwargs()
    assert kw["security_protocol"] == "SASL_PLAINTEXT" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "vigil" and kw["sasl_plain_password"] == "hunter2"
    shown = repr(s) + str(s.redacted())
    assert "hunter2" not in shown and "very-secret-key" not in shown
    assert s.pseudonym_key.get_secret_value() == "very-secret-key"


def test_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_SCORING__MODE", "sometimes")
    with pytest.raises(ValueError, match="mode"):
        load_settings(None)

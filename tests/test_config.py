"""Settings: environment and file, secrets never printed, security options passed to the clients."""

from __future__ import annotations

import json

import pytest

from vigil.config import Settings, SettingsError, load_settings
from vigil.settings_check import unknown_env


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


def test_unknown_key_in_the_file_is_refused_with_its_path_and_the_nearest_name(tmp_path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("alerts:\n  model_risk:\n    raise_att: 0.9\n")  # the typo of the issue: ran with the default
    with pytest.raises(SettingsError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "alerts.model_risk.raise_att (did you mean alerts.model_risk.raise_at?)" in msg
    assert str(cfg) in msg and "\n" not in msg


def test_unknown_key_in_a_list_item_and_a_json_file(tmp_path) -> None:
    cfg = tmp_path / "vigil.json"
    cfg.write_text('{"demand": {"resources": [{"name": "x", "need": "sepsis_onset", "capcity": 3}]}}')
    with pytest.raises(SettingsError, match=r"demand\.resources\[0\]\.capcity \(did you mean "
                                            r"demand\.resources\[0\]\.capacity\?\)"):
        load_settings(cfg)


def test_unknown_environment_variables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_SCORING__MODEE", "interval")
    monkeypatch.setenv("VIGIL_GRUOP_ID", "g")
    with pytest.raises(SettingsError) as err:
        load_settings(None)
    msg = str(err.value)
    assert "VIGIL_SCORING__MODEE: scoring.modee (did you mean scoring.mode?)" in msg
    assert "VIGIL_GRUOP_ID: gruop_id (did you mean group_id?)" in msg
    monkeypatch.delenv("VIGIL_SCORING__MODEE")
    with pytest.raises(ValueError, match=r"VIGIL_GRUOP_ID: gruop_id \(did you mean group_id\?\)"):
        Settings()  # constructed directly, too


def test_unknown_override_and_unknown_keyword_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"scoring\.mod \(did you mean scoring\.mode\?\)"):
        load_settings(None, scoring={"mod": "row"})
    with pytest.raises(ValueError, match=r"unknown setting topic_prefx \(did you mean topic_prefix\?\)"):
        Settings(topic_prefx="x")


def test_override_rules_name_real_alert_types_and_fields(tmp_path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("alerts:\n  overrides:\n    W3:\n      news2_emergency: {enabld: true}\n")
    with pytest.raises(SettingsError, match=r"overrides\.W3\.news2_emergency\.enabld: no such rule field "
                                            r"\(did you mean enabled\?\)"):
        load_settings(cfg)
    cfg.write_text("alerts:\n  overrides:\n    W3:\n      news2_emergncy: {enabled: true}\n")
    with pytest.raises(SettingsError, match=r"news2_emergncy: no such alert type \(did you mean news2_emergency\?\)"):
        load_settings(cfg)


def test_every_declared_field_is_accepted_from_file_and_environment(tmp_path, monkeypatch) -> None:
    # Strictness is generic: a file holding every field of every nested model (their defaults) loads.
    full = Settings().model_dump(mode="json", exclude={"pseudonym_key": True, "kafka": {"sasl_password"},
                                                       "webhook": {"secret"}})
    cfg = tmp_path / "full.json"
    cfg.write_text(json.dumps(full))
    assert load_settings(cfg).model_dump(mode="json") == Settings().model_dump(mode="json")
    for section, fields in full.items():
        if isinstance(fields, dict):
            for name in fields:
                assert unknown_env({f"VIGIL_{section}__{name}".upper(): "1"}, Settings) == []


def test_partial_rule_override_keeps_the_rule_defaults_across_sources(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("alerts:\n  news2_emergency:\n    enabled: true\n  model_risk:\n    persistence: 2\n")
    monkeypatch.setenv("VIGIL_ALERTS__MODEL_RISK__RAISE_AT", "0.7")
    s = load_settings(cfg, alerts={"model_risk": {"refractory_h": 24}})
    assert s.alerts.news2_emergency.enabled is True and s.alerts.news2_emergency.raise_at == 7  # default kept
    assert (s.alerts.model_risk.persistence, s.alerts.model_risk.raise_at, s.alerts.model_risk.refractory_h,
            s.alerts.model_risk.escalate_by) == (2, 0.7, 24, 0.25)  # file, env, override, default


def test_kafka_bootstrap_servers_is_the_lowest_source(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    assert load_settings(None).kafka.bootstrap_servers == "10.0.0.1:9092"
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("kafka: {bootstrap_servers: 'file:9092'}\n")
    assert load_settings(cfg).kafka.bootstrap_servers == "file:9092"
    monkeypatch.setenv("VIGIL_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    assert load_settings(cfg).kafka.bootstrap_servers == "env:9092"
    assert load_settings(cfg, kafka={"bootstrap_servers": "arg:9092"}).kafka.bootstrap_servers == "arg:9092"


def test_invalid_value_is_one_line_and_never_shows_a_secret(tmp_path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("kafka:\n  sasl_password: [not, a, string, hunter2]\nlog_level: LOUD\n")
    with pytest.raises(SettingsError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "hunter2" not in msg
    assert "kafka.sasl_password" in msg and "log_level" in msg and "'LOUD'" in msg


def test_settings_file_that_is_not_a_mapping(tmp_path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="must hold a mapping of settings, not list"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml")

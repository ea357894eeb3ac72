"""Service settings: ``SPQUANT_*`` parsing, overrides, validation and immutability, and the model and engine they
select (no model loaded, no server)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.inference.bundled import BUNDLED_EXPORT, BUNDLED_MODEL
from service.main import serving_model
from service.settings import ENV_PREFIX, Settings

VARIABLES = [ENV_PREFIX + name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No SPQUANT_<FIELD> from the developer's shell: ``Settings()`` reads the process environment."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_defaults():
    settings = Settings()
    assert settings == Settings.from_env({})
    assert settings.model is None and settings.api_key is None and settings.integer
    assert (settings.host, settings.port, settings.max_sessions) == ("127.0.0.1", 8000, 64)
    assert (settings.idle_timeout_s, settings.score_threshold) == (60.0, 0.25)
    assert (settings.max_request_bytes, settings.max_message_bytes) == (64 << 20, 8 << 20)
    assert (settings.max_events_per_request, settings.max_windows) == (5_000_000, 12_000)
    assert (settings.max_batch, settings.threads, settings.torch_threads) == (16, 2, 1)


def test_settings_from_environment(tmp_path):
    env = {"SPQUANT_MODEL": str(tmp_path / "m.pt"), "SPQUANT_PORT": "9000", "SPQUANT_IDLE_TIMEOUT_S": "2.5",
           "SPQUANT_API_KEY": "k", "SPQUANT_MAX_SESSIONS": ""}
    settings = Settings.from_env(env, port=None, host="0.0.0.0")
    assert settings.model == tmp_path / "m.pt" and settings.port == 9000 and settings.idle_timeout_s == 2.5
    assert settings.api_key == "k" and settings.host == "0.0.0.0" and settings.max_sessions == 64
    with pytest.raises(ValueError, match="SPQUANT_PORT"):
        Settings.from_env({"SPQUANT_PORT": "eighty"})
    with pytest.raises(ValueError, match="max_sessions"):
        Settings.from_env({"SPQUANT_MAX_SESSIONS": "0"})
    assert Settings.from_env({}).integer and not Settings.from_env({"SPQUANT_INTEGER": "Off"}).integer
    with pytest.raises(ValueError, match="SPQUANT_INTEGER"):
        Settings.from_env({"SPQUANT_INTEGER": "maybe"})
    assert Settings.from_env({}).runtime == "auto"
    assert [Settings.from_env({"SPQUANT_RUNTIME": v}).runtime for v in ("numpy", "torch")] == ["numpy", "torch"]
    with pytest.raises(ValueError, match="SPQUANT_RUNTIME"):
        Settings.from_env({"SPQUANT_RUNTIME": "onnx"})


def test_each_type_parses(tmp_path):
    settings = Settings.from_env({
        "SPQUANT_MODEL": str(tmp_path / "m.spq"), "SPQUANT_HOST": "::1", "SPQUANT_MAX_BATCH": "4",
        "SPQUANT_SCORE_THRESHOLD": "0.5", "SPQUANT_INTEGER": "0", "SPQUANT_API_KEY": "secret key",
    })
    assert isinstance(settings.model, Path) and settings.model == tmp_path / "m.spq"
    assert settings.host == "::1" and settings.api_key == "secret key"
    assert settings.max_batch == 4 and isinstance(settings.max_batch, int)
    assert settings.score_threshold == 0.5 and settings.integer is False


@pytest.mark.parametrize(("raw", "value"), [
    ("1", True), ("true", True), ("True", True), ("yes", True), ("ON", True),
    ("0", False), ("false", False), ("FALSE", False), ("no", False), ("off", False),
])
def test_boolean_spellings(raw, value):
    assert Settings.from_env({"SPQUANT_INTEGER": raw}).integer is value


def test_empty_values_are_unset():
    env = dict.fromkeys(VARIABLES, "")
    assert Settings.from_env(env) == Settings()
    assert Settings.from_env(env).model is None and Settings.from_env(env).api_key is None


def test_overrides_win_and_none_overrides_are_ignored(tmp_path):
    env = {"SPQUANT_PORT": "9000", "SPQUANT_HOST": "10.0.0.1", "SPQUANT_MODEL": "env.pt"}
    settings = Settings.from_env(env, port=9100, host=None, model=tmp_path / "cli.pt", threads=None)
    assert settings.port == 9100 and settings.host == "10.0.0.1" and settings.model == tmp_path / "cli.pt"
    assert settings.threads == 2


def test_from_env_reads_the_given_mapping_only(monkeypatch):
    monkeypatch.setenv("SPQUANT_PORT", "9200")
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env().port == 9200 and Settings().port == 9200


@pytest.mark.parametrize(("variable", "raw"), [
    ("SPQUANT_PORT", "eighty"), ("SPQUANT_PORT", "80.5"), ("SPQUANT_IDLE_TIMEOUT_S", "soon"),
    ("SPQUANT_SCORE_THRESHOLD", "high"), ("SPQUANT_INTEGER", "maybe"),
])
def test_unparsable_values_name_the_variable(variable, raw):
    with pytest.raises(ValueError, match=variable) as caught:
        Settings.from_env({variable: raw})
    assert type(caught.value) is ValueError and repr(raw) in str(caught.value)


@pytest.mark.parametrize(("variable", "raw"), [
    ("SPQUANT_PORT", "0"), ("SPQUANT_MAX_SESSIONS", "-1"), ("SPQUANT_MAX_REQUEST_BYTES", "0"),
    ("SPQUANT_MAX_EVENTS_PER_REQUEST", "0"), ("SPQUANT_MAX_MESSAGE_BYTES", "0"), ("SPQUANT_MAX_WINDOWS", "0"),
    ("SPQUANT_MAX_BATCH", "0"), ("SPQUANT_THREADS", "0"), ("SPQUANT_TORCH_THREADS", "0"),
    ("SPQUANT_IDLE_TIMEOUT_S", "0"), ("SPQUANT_IDLE_TIMEOUT_S", "-2.5"),
    ("SPQUANT_SCORE_THRESHOLD", "-0.1"), ("SPQUANT_SCORE_THRESHOLD", "1.5"), ("SPQUANT_SCORE_THRESHOLD", "nan"),
])
def test_out_of_range_values_are_refused(variable, raw):
    field = variable.removeprefix(ENV_PREFIX).lower()
    with pytest.raises(ValueError, match=f"{variable}.*{field}"):
        Settings.from_env({variable: raw})
    with pytest.raises(ValidationError, match=field):  # a ValueError too
        Settings(**{field: raw})


def test_score_threshold_bounds_are_inclusive():
    assert Settings(score_threshold=0.0).score_threshold == 0.0
    assert Settings(score_threshold=1.0).score_threshold == 1.0


def test_several_errors_are_all_reported():
    with pytest.raises(ValueError, match=r"SPQUANT_PORT.*SPQUANT_THREADS"):
        Settings.from_env({"SPQUANT_PORT": "x", "SPQUANT_THREADS": "0"})


def test_bad_override_is_named():
    with pytest.raises(ValueError, match="setting port=0"):
        Settings.from_env({}, port=0)


def test_unknown_keywords_are_refused():
    with pytest.raises(ValidationError, match="max_session"):
        Settings(max_session=3)
    with pytest.raises(ValueError, match="unknown setting prot"):
        Settings.from_env({}, prot=9000)


def test_unrelated_spquant_variables_are_ignored(monkeypatch):
    # Other tools share the prefix (the tests' own SPQUANT_CHROMIUM, SPQUANT_REAL_FIXTURES).
    monkeypatch.setenv("SPQUANT_FOO", "bar")
    monkeypatch.setenv("SPQUANT_CHROMIUM", "/usr/bin/chromium")
    assert Settings() == Settings.from_env() == Settings.from_env({"SPQUANT_FOO": "bar"})


def test_settings_are_immutable():
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1
    assert settings.port == 8000
    assert hash(settings) == hash(Settings())


def test_auto_serves_exported_models_on_numpy_and_checkpoints_on_torch(tmp_path):
    assert serving_model(Settings()) == (BUNDLED_EXPORT, "numpy")  # the bundled model, as its export
    assert serving_model(Settings(model=BUNDLED_EXPORT)) == (BUNDLED_EXPORT, "numpy")
    assert serving_model(Settings(model=BUNDLED_MODEL)) == (BUNDLED_MODEL, "auto")  # a checkpoint needs torch
    assert serving_model(Settings(integer=False)) == (BUNDLED_MODEL, "auto")  # the fake-quant model: torch
    assert serving_model(Settings(runtime="torch")) == (BUNDLED_MODEL, "torch")
    assert serving_model(Settings(runtime="numpy")) == (BUNDLED_EXPORT, "numpy")
    missing = tmp_path / "missing.spq"
    assert serving_model(Settings(model=missing)) == (missing, "auto")  # load_model says it is missing

"""Service configuration: a TOML file, then ``CLEANROOM_*`` environment variables,
then command-line options, each overriding the one before.

A bad setting is one :class:`ConfigurationError` whose message is one line per
problem joined on one line: the setting, where it came from (the option, the
variable or the file) and what is wrong. It never echoes the value (a database
URL or the metrics token may hold a secret) and carries no pydantic link. A
``CLEANROOM_*`` variable that is not a setting but one letter or two away from
one is refused as the typo it most likely is; other ``CLEANROOM_*`` variables
belong to the command line and the tests and are left alone.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from cleanroom.errors import InvalidInputError

ENV_PREFIX = "CLEANROOM_"
# variables the command line, the SDK and the tests read: never a service typo
_NOT_SETTINGS = frozenset(
    {"keystore", "passphrase", "service", "service_key", "room", "log_level", "metrics"}
)


class ConfigurationError(InvalidInputError):
    """A setting is unknown, of the wrong type or out of range; the message is one
    line naming each bad setting and where it came from. ``cleanroom serve`` exits
    with :attr:`exit_code` (a usage error)."""

    exit_code = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    data_dir: Path = Field(
        default=Path("cleanroom-data"),
        description="SQLite ledger, blobs and the service key live here.",
    )
    database_url: str | None = Field(
        default=None, description="postgresql://... to keep the ledger there."
    )
    database_schema: str = Field(
        default="cleanroom",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema holding the ledger tables.",
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8321, ge=0, le=65535, description="Port to listen on (0: any).")
    max_skew_s: int = Field(
        default=300, ge=5, le=600, description="Accepted clock difference for request signatures."
    )
    max_upload_bytes: int = Field(
        default=64 << 30, ge=1, description="Largest dataset ciphertext accepted."
    )
    max_body_bytes: int = Field(
        default=4 << 20,
        ge=1024,
        description="Largest request body on every route but the two streaming uploads.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Time a request body may take, plus one second per min_body_rate bytes.",
    )
    min_body_rate: int = Field(
        default=64 << 10, ge=1, description="Slowest accepted average body rate, bytes/s."
    )
    keep_alive_s: int = Field(
        default=5, ge=1, le=300, description="An idle keep-alive connection is closed after this."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request line and headers must arrive within this long of the "
        "connection opening or of the previous answer, else the connection is closed.",
    )
    tree_head_max_entries: int = Field(default=256, ge=1)
    tree_head_max_delay_ms: int = Field(default=1_000, ge=0)
    enclave_platform: Literal["insecure-virtual", "configfs-tsm"] = Field(
        default="insecure-virtual",
        description="How job enclaves attest. insecure-virtual gives no hardware protection; "
        "rooms refuse it unless their contract allows it.",
    )
    key_broker: bool = Field(
        default=True,
        description="Run the attested key broker (its own process, on enclave_platform) for "
        "owners who deposit keys instead of running a key agent.",
    )
    job_parallelism: int = Field(default=2, ge=1, le=64, description="Jobs run at once.")
    job_time_limit_s: float = Field(default=600.0, gt=0, description="Query time limit per job.")
    member_quota_bytes: int = Field(
        default=256 << 30,
        ge=1,
        description="Dataset ciphertext one member may store in one room.",
    )
    room_creators: list[str] | None = Field(
        default=None,
        description="Fingerprints of the parties this service lets create rooms "
        "(default: any party with a valid identity).",
    )
    rooms_per_creator_per_hour: int = Field(
        default=20, ge=1, le=10_000, description="Rooms one party may create in an hour."
    )
    job_threads: int | None = Field(
        default=None, ge=1, le=256, description="DuckDB threads per job (default: all cores)."
    )
    job_queue_per_room: int = Field(
        default=8, ge=1, le=1000, description="Jobs one room may have waiting to run."
    )
    job_release_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a job waits for data owners' key agents to release its inputs.",
    )
    job_memory_limit: str = Field(
        default="4GB", pattern=r"^[0-9]+(\.[0-9]+)?\s*[KMGT]i?B$", description="Memory per job."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines on standard error: text (key=value) or json (one object a line).",
    )
    access_log: bool = Field(default=True, description="Log one line per request.")
    forwarded_allow_ips: list[str] = Field(
        default=[],
        description="Reverse proxies whose X-Forwarded-For/-Proto are believed (the client "
        "address in the access log); empty (the default): none, not even loopback.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Bearer token that GET /metrics requires; unset: /metrics answers 404.",
    )
    metrics_per_room: bool = Field(
        default=False,
        description="Also export each room's ledger size, labelled with the room id.",
    )


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (TOML), overridden by the environment, then ``overrides``
    (None: not given); :class:`ConfigurationError` names each bad setting."""
    given = {k: v for k, v in overrides.items() if v is not None}
    in_file: Mapping[str, Any] = {}
    if config is not None:
        try:
            in_file = tomllib.loads(config.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(f"configuration file {config} does not exist") from exc
        except OSError as exc:
            raise ConfigurationError(
                f"configuration file {config} cannot be read: {exc.strerror}"
            ) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"configuration file {config} is not valid TOML: {exc}"
            ) from exc
    typos = env_typos(os.environ)
    if typos:
        raise ConfigurationError("invalid service configuration: " + "; ".join(typos))

    class _Layered(Settings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", toml_file=config)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    try:
        return _Layered(**given)
    except SettingsError as exc:  # a value the source could not even parse (a list as JSON)
        raise ConfigurationError(
            f"invalid service configuration: {str(exc).splitlines()[0][:200]}"
        ) from None
    except ValidationError as exc:
        problems = [_problem(e, given, os.environ, config, in_file) for e in _errors(exc)]
        raise ConfigurationError(
            "invalid service configuration: " + "; ".join(dict.fromkeys(problems))
        ) from None  # the pydantic trace adds nothing but its links


def env_typos(environ: Mapping[str, str]) -> list[str]:
    """``CLEANROOM_*`` variables that are no setting but close to one (a typo)."""
    found = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name in Settings.model_fields or name in _NOT_SETTINGS:
            continue
        close = _close(name)
        if close is not None:
            found.append(f"{variable} is not a setting (did you mean {ENV_PREFIX}{close.upper()}?)")
    return found


def _close(name: str) -> str | None:
    matches = difflib.get_close_matches(name, list(Settings.model_fields), n=1, cutoff=0.75)
    return matches[0] if matches else None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        dict(e) for e in exc.errors(include_url=False, include_input=False, include_context=True)
    ]


def _problem(
    error: Mapping[str, Any],
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    config: Path | None,
    in_file: Mapping[str, Any],
) -> str:
    """One bad setting in words: ``name (source): what is wrong``."""
    loc = [str(part) for part in error.get("loc", ())]
    name = loc[0] if loc else "?"
    where = name + "".join(f"[{part}]" for part in loc[1:])
    if error.get("type") == "extra_forbidden":
        close = _close(name)
        hint = f" (did you mean {close}?)" if close is not None else ""
        origin = f" in {config}" if name in in_file else ""
        return f"{name}{origin} is not a setting{hint}"
    return f"{where} ({_source(name, given, environ, config)}): {_what(error)}"


def _source(
    name: str, given: Mapping[str, Any], environ: Mapping[str, str], config: Path | None
) -> str:
    if name in given:
        return _OPTIONS.get(name, f"--{name.replace('_', '-')}")
    variable = f"{ENV_PREFIX}{name.upper()}"
    if any(v.upper() == variable for v in environ):
        return variable
    return f"in {config}" if config is not None else "default"


_OPTIONS = {"database_url": "--database"}  # cleanroom serve's options not named as settings
_WHAT = {
    "int_parsing": "not a whole number",
    "int_from_float": "not a whole number",
    "float_parsing": "not a number",
    "bool_parsing": "not true or false",
    "list_type": "not a list (in an environment variable, a JSON list)",
    "string_type": "not a string",
    "json_invalid": "not valid JSON (a list is written as JSON in an environment variable)",
}


def _what(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    context = error.get("ctx") or {}
    if kind in _WHAT:
        return _WHAT[kind]
    if kind in ("too_short", "string_too_short"):
        return f"must be at least {context.get('min_length')} characters long"
    if kind == "string_pattern_mismatch":
        return f"must match {context.get('pattern')}"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(context.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    message = str(error.get("msg") or "is not valid")
    if message.startswith("Input should be"):
        return "must be" + message.removeprefix("Input should be")
    return message[0].lower() + message[1:]

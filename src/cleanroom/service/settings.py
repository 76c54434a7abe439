"""Service configuration: a TOML file, then ``CLEANROOM_*`` environment variables,
then command-line options, each overriding the one before."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cleanroom.errors import DeserializationError, StorageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEANROOM_", extra="forbid")

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


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (TOML), overridden by the environment, then ``overrides``."""
    if config is not None:
        try:
            tomllib.loads(config.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StorageError(f"configuration file {config} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DeserializationError(
                f"configuration file {config} is not valid TOML: {exc}"
            ) from exc

    class _Layered(Settings):
        model_config = SettingsConfigDict(env_prefix="CLEANROOM_", extra="forbid", toml_file=config)

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
        return _Layered(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise DeserializationError(f"invalid service configuration: {exc}") from exc

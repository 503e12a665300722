"""Property tests of the service's request bodies: the pydantic request models directly, and a
few generated requests against a real ``bentoml serve``.

Any body is either a valid request or a validation error whose 400 body serialises (the fast
path sends ``exc.errors(...)`` as JSON): never another exception, never a 500. Bodies built
from a model's own JSON schema validate with their values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from outcomes import Recorder
from propgen import INJECTIONS, broken_variant, examples, snapshot, tally
from pydantic import BaseModel, ValidationError, field_validator
from pydantic_core import to_json

from seqrec.config import Workspace

try:  # the request models' module (the service was split into seqrec.serving.*)
    from seqrec.serving import schemas as api
except ImportError:  # pragma: no cover - before the split
    from seqrec import service as api  # type: ignore[no-redef]

pytestmark = pytest.mark.property

REQUESTS: list[type[BaseModel]] = [
    api.RecommendRequest,
    api.RecommendBatchRequest,
    api.EventsRequest,
    api.PredictRequest,
    api.ReloadRequest,
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def shaped_bodies(draw: Any, model: type[BaseModel]) -> dict[str, Any]:
    """A JSON object with the model's field names (some left out) holding random JSON values,
    maybe with an unknown field."""
    names = list(model.model_fields)
    body = {name: draw(JSON) for name in draw(st.lists(st.sampled_from(names), unique=True))}
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(JSON)
    return body


def error_body(exc: ValidationError) -> bytes:
    """The 400 body the service sends for ``exc`` (see seqrec.serving.fastpath._fast)."""
    return to_json(
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        }
    )


def validate(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    """``model`` from ``raw``, or None after checking the validation error's 400 body."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        body = json.loads(error_body(exc))
        assert body["detail"], "a validation error with no detail"
        return None


@examples(50)
@given(data=st.data(), model=st.sampled_from(REQUESTS))
def test_random_json_bodies_are_requests_or_validation_errors(
    data: st.DataObject, model: type[BaseModel], outcome: Recorder
) -> None:
    body = data.draw(st.one_of(JSON, shaped_bodies(model)))
    got = validate(model, json.dumps(body).encode())
    event("valid" if got is not None else "400")
    tally(outcome, "api")


@examples(50)
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[" * 5000,
                b'{"user_id": "\\ud800"}',
                b'{"user_id": "u", "k": 1e999}',
                b'{"user_id": "u", "k": NaN}',
                b'{"user_id": "u", "k": ' + b"9" * 5000 + b"}",
                b'{"user_id": "u", "user_id": "v"}',
                b'{"events": [{"item_id": "i", "timestamp": -Infinity}]}',
                b"\xef\xbb\xbf{}",
            ]
        ),
    ),
    model=st.sampled_from(REQUESTS),
)
def test_any_bytes_are_requests_or_validation_errors(
    raw: bytes, model: type[BaseModel], outcome: Recorder
) -> None:
    validate(model, raw)
    tally(outcome, "api")


def test_the_request_check_catches_a_validator_that_lets_an_attribute_error_out(
    outcome: Recorder,
) -> None:
    """A request model whose validator assumes a string: any other JSON type escapes as an
    AttributeError (a 500 in the service), not a 400."""

    class StripsUserId(api.RecommendRequest):
        @field_validator("user_id", mode="before")
        @classmethod
        def _strip(cls, value: Any) -> Any:
            return value.strip()

    raw = b'{"user_id": 5}'
    assert validate(api.RecommendRequest, raw) is None  # a 400
    with pytest.raises(AttributeError) as err:
        validate(StripsUserId, raw)
    broken_variant(
        outcome,
        "a request model whose validator lets an AttributeError out (a 500)",
        f"AttributeError: {err.value}",
    )


def _from_schema(spec: dict[str, Any], defs: dict[str, Any]) -> Any:
    """Values a JSON schema (as pydantic writes it for the request models) accepts."""
    if "$ref" in spec:
        return _from_schema(defs[spec["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in spec:
        return st.one_of(*(_from_schema(s, defs) for s in spec["anyOf"]))
    kind = spec.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(spec.get("minimum", -(2**53)), spec.get("maximum", 2**53))
    if kind == "number":
        return st.floats(spec.get("minimum"), spec.get("maximum"), allow_nan=False)
    if kind == "string":
        return st.text(
            st.characters(blacklist_categories=("Cs",)),
            min_size=spec.get("minLength", 0),
            max_size=min(spec.get("maxLength", 20), 20),
        )
    if kind == "array":
        return st.lists(
            _from_schema(spec["items"], defs),
            min_size=spec.get("minItems", 0),
            max_size=min(spec.get("maxItems", 3), 3),
        )
    if kind == "object":
        required = set(spec.get("required", ()))
        props = spec["properties"]
        optional = [k for k in props if k not in required]
        chosen = st.lists(st.sampled_from(optional), unique=True) if optional else st.just([])
        return chosen.flatmap(
            lambda keys: st.fixed_dictionaries(
                {k: _from_schema(props[k], defs) for k in [*required, *keys]}
            )
        )
    raise AssertionError(f"no generator for {spec}")


@examples(50)
@given(data=st.data(), model=st.sampled_from(REQUESTS))
def test_bodies_from_the_request_schema_validate_with_their_values(
    data: st.DataObject, model: type[BaseModel], outcome: Recorder
) -> None:
    schema = model.model_json_schema()
    body = data.draw(_from_schema(schema, schema.get("$defs", {})))
    got = model.model_validate_json(json.dumps(body).encode())
    assert got.model_dump(exclude_unset=True) == body
    tally(outcome, "api")


# --------------------------------------------------------------------------------------------
# Against a real server: no body gives a 500, injected ids are only ever ids


@pytest.fixture(scope="module")
def server(trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``bentoml serve`` of the trained workspace's gpt2 (tests/test_service.py's helpers)."""
    import sys
    from pathlib import Path

    import test_service
    from test_service import free_port, serve_env, serving

    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    env = serve_env(SEQREC_PROJECT=str(trained_ws.root), SEQREC_MODEL="gpt2")
    log = tmp_path_factory.mktemp("serve-prop") / "bentoml.log"
    # a property run shares the machine with the rest of the suite: allow a slow start
    ready_s, test_service.READY_TIMEOUT_S = test_service.READY_TIMEOUT_S, 300.0
    try:
        with serving([*cmd, "--port", str(free_port())], env, log) as srv:
            yield srv
    finally:
        test_service.READY_TIMEOUT_S = ready_s


ENDPOINTS = {
    "/recommend": api.RecommendRequest,
    "/recommend_batch": api.RecommendBatchRequest,
    "/recommend_from_events": api.EventsRequest,
    "/predict": api.PredictRequest,
}


@pytest.mark.integration
@examples(30)
@given(data=st.data(), path=st.sampled_from(sorted(ENDPOINTS)))
def test_served_endpoints_answer_generated_bodies_without_a_500(
    server: Any, data: st.DataObject, path: str, outcome: Recorder
) -> None:
    import httpx

    model = ENDPOINTS[path]
    schema = model.model_json_schema()
    body = data.draw(
        st.one_of(JSON, shaped_bodies(model), _from_schema(schema, schema.get("$defs", {})))
    )
    raw = json.dumps(body).encode()
    r = httpx.post(
        f"{server.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    event(f"HTTP {r.status_code}")
    assert r.status_code != 500, r.text
    valid = validate(model, raw) is not None
    if not valid:
        assert r.status_code == 400, r.text
        assert "error" in r.json()
    tally(outcome, "api")


@pytest.mark.integration
def test_injected_ids_in_requests_are_only_ids(
    server: Any, trained_ws: Workspace, outcome: Recorder
) -> None:
    """User and item ids that look like SQL reach no SQL as text: the answers are ordinary
    (popularity for an unknown user) and the events database is unchanged."""
    from seqrec.data.schema import make_engine

    engine = make_engine(trained_ws.events_url)
    before = snapshot(engine)
    for bad in INJECTIONS:
        r = server.post({"user_id": bad, "exclude_items": [bad]})
        assert r.status_code == 200, r.text
        assert r.json()["fallback"] is True
        r = server.post({"user_ids": [bad, bad + "2"], "k": 3}, path="/recommend_batch")
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2
        r = server.post(
            {"events": [{"item_id": bad, "event_type": bad}]}, path="/recommend_from_events"
        )
        assert r.status_code == 200, r.text
        assert r.json()["unknown_items"] == 1
    assert snapshot(engine) == before
    engine.dispose()
    tally(outcome, "injection", cases=3 * len(INJECTIONS))

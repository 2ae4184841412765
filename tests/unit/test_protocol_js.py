"""The page's protocol module (server/static/protocol.js, run by node) agrees with the Python
schema (ichigo_stream/messages.py) on every message type, every field, its JSON type and
whether it must be there.

Everything here is derived from the Python dataclasses (dataclasses.fields and type hints), not
from a list written by hand: a field added on one side only fails these tests.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from es_modules import run_with_node
from system_tools import require_tool

from ichigo_stream.errors import ClientError, ProtocolError
from ichigo_stream.messages import (
    NULL_MEANS,
    SERVER_MESSAGES,
    Flush,
    Start,
    Stop,
    parse_client_message,
    parse_server_message,
)
from ichigo_stream.protocol import VAD_FIELDS, StartOptions
from ichigo_stream.segmentation import VadOptions

KINDS = {int: "integer", float: "number", str: "string", bool: "boolean"}
WRONG = {  # values of another JSON type than each kind (1.5: JavaScript sees 1.0 as an integer)
    "integer": ["1", 1.5, True],
    "number": ["1.5", False],
    "string": [7, ["s"]],
    "boolean": [1, "true"],
    "array": [{}, "1,2"],
    "object": [[], "x"],
}

# -- the Python side's schema, in protocol.js's shape ---------------------------------------------


def _non_none(hint: Any) -> tuple[Any, bool]:
    args = get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def _spec(hint: Any) -> dict[str, Any]:
    if get_origin(hint) is tuple:
        return {"kind": "array", "items": KINDS[get_args(hint)[0]]}
    if dataclasses.is_dataclass(hint):
        return {"kind": "object", "fields": server_schema(hint)}
    if get_origin(hint) is Literal:
        return {"kind": KINDS[type(get_args(hint)[0])]}
    return {"kind": KINDS[hint]}


def server_schema(cls: type) -> dict[str, Any]:
    """A server message's (or nested object's) fields: required unless typed X | None."""
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint, optional = _non_none(hints[f.name])
        spec = {**_spec(hint), "required": not optional}
        if NULL_MEANS in f.metadata:
            spec["unlimited"] = True
        out[f.name] = spec
    return out


def start_schema() -> dict[str, Any]:
    """The start message's fields: all optional; null where the default is null, and for vad
    (null: the defaults). Its vad object has the protocol's VAD fields, not cut_search_s."""
    assert set(VAD_FIELDS) == {f.name for f in dataclasses.fields(VadOptions)} - {"cut_search_s"}
    vad_hints = get_type_hints(VadOptions)
    vad = {name: {**_spec(vad_hints[name]), "required": False} for name in VAD_FIELDS}
    hints = get_type_hints(StartOptions)
    out = {}
    for f in dataclasses.fields(StartOptions):
        hint, _ = _non_none(hints[f.name])
        spec = {"kind": "object", "fields": vad} if f.name == "vad" else _spec(hint)
        spec["required"] = False
        if f.default is None or f.name == "vad":
            spec["nullable"] = True
        out[f.name] = spec
    return out


# -- examples, derived from the schema ----------------------------------------------------------

SAMPLES = {int: 3, float: 1.25, str: "s1", bool: True}


def example(cls: type, optional: bool, unlimited: bool = False) -> Any:
    """An instance with a value in every field; `optional`: also in the X | None ones."""
    hints = get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint, nullable = _non_none(hints[f.name])
        if nullable and not optional:
            values[f.name] = None
        elif NULL_MEANS in f.metadata and unlimited:
            values[f.name] = f.metadata[NULL_MEANS]
        elif get_origin(hint) is tuple:
            item = SAMPLES[get_args(hint)[0]]
            values[f.name] = (item, item)
        elif dataclasses.is_dataclass(hint):
            values[f.name] = example(hint, optional, unlimited)
        else:
            values[f.name] = SAMPLES[hint]
    return cls(**values)


def server_examples() -> Iterator[Any]:
    for cls in SERVER_MESSAGES.values():
        yield example(cls, optional=True)
        yield example(cls, optional=False, unlimited=True)


def plain(message: Any) -> dict[str, Any]:
    """What protocol.js must read a message into: its fields, none of the None ones, infinity
    (no limit) as the driver writes it."""

    def value(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: value(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if getattr(v, f.name) is not None}  # fmt: skip
        if isinstance(v, tuple):
            return [value(x) for x in v]
        return "Infinity" if isinstance(v, float) and math.isinf(v) else v

    return {"type": message.type, **value(message)}


def mutations(schema: dict[str, Any], obj: dict[str, Any], path: tuple[str, ...] = ()):
    """(path, mutated wire object, valid?) for each field: dropped, null, of a wrong type."""
    for name, spec in schema.items():
        where = (*path, name)
        yield (*where, "dropped"), _set(obj, where, None, drop=True), not spec["required"]
        null_ok = not spec["required"] or spec.get("unlimited", False)
        yield (*where, "null"), _set(obj, where, None), null_ok
        for wrong in WRONG[spec["kind"]]:
            yield (*where, repr(wrong)), _set(obj, where, wrong), False
        if spec["kind"] == "array":
            yield (*where, "item"), _set(obj, where, [WRONG[spec["items"]][0]]), False
        if spec["kind"] == "object":
            yield from mutations(spec["fields"], obj, where)


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any, drop: bool = False) -> str:
    out = copy.deepcopy(obj)
    inner = out
    for key in path[:-1]:
        inner = inner[key]
    if drop:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value
    return json.dumps(out)


# -- node -------------------------------------------------------------------------------------

DRIVER = """
import * as protocol from "./protocol.mjs";
import { readFileSync } from "node:fs";

const input = JSON.parse(readFileSync(0, "utf8"));
const outcome = (fn) => {
  try {
    return { ok: fn() };
  } catch (error) {
    return { error: error.name, message: error.message };
  }
};
const output = {
  schema: { server: protocol.SERVER_MESSAGES, start: protocol.START_OPTIONS },
  server: input.server.map((text) => outcome(() => protocol.parseServerMessage(text))),
  starts: input.starts.map((options) => outcome(() => protocol.startMessage(options))),
  flush: protocol.flushMessage(),
  stop: protocol.stopMessage(),
};
// JSON has no infinity: show it as the string the Python side expects.
process.stdout.write(JSON.stringify(output, (key, value) =>
  typeof value === "number" && !Number.isFinite(value) ? String(value) : value));
"""


@pytest.fixture(scope="module")
def node() -> str:
    return require_tool("node", why="to test server/static/protocol.js against the Python schema")


def run_node(node: str, tmp_path: Path, server: list[str], starts: list[Any]) -> dict[str, Any]:
    data = {"server": server, "starts": starts}
    return run_with_node(node, tmp_path, {"protocol.mjs": "protocol.js"}, DRIVER, data)


# -- the tests --------------------------------------------------------------------------------


def test_both_sides_have_the_same_schema(node: str, tmp_path: Path) -> None:
    js = run_node(node, tmp_path, [], [])["schema"]
    python = {kind: server_schema(cls) for kind, cls in SERVER_MESSAGES.items()}
    assert js["server"] == python
    assert js["start"] == start_schema()
    # the same order too: messages read on both sides list their fields alike
    for kind, cls in SERVER_MESSAGES.items():
        assert list(js["server"][kind]) == [f.name for f in dataclasses.fields(cls)]


def test_node_reads_every_server_message_as_python_writes_it(node: str, tmp_path: Path) -> None:
    examples = list(server_examples())
    assert {type(m) for m in examples} == set(SERVER_MESSAGES.values())
    texts = [m.to_json() for m in examples]
    texts.append('{"type":"progress","done":0.5}')  # a type from a newer server: ignored
    extra = {**json.loads(texts[0]), "future": 1}  # fields from a newer server: ignored
    texts.append(json.dumps(extra))
    got = run_node(node, tmp_path, texts, [])["server"]
    for message, text, outcome in zip(examples, texts, got, strict=False):
        assert parse_server_message(text) == message  # Python reads its own output back
        assert outcome == {"ok": plain(message)}, text
    assert got[-2] == {"ok": None} and parse_server_message(texts[-2]) is None
    assert got[-1] == {"ok": plain(examples[0])} and parse_server_message(texts[-1]) == examples[0]


def test_malformed_server_messages_are_refused_on_both_sides(node: str, tmp_path: Path) -> None:
    cases = []
    for cls in SERVER_MESSAGES.values():
        full = json.loads(example(cls, optional=True).to_json())
        cases += [((cls.type, *path), *rest) for path, *rest in mutations(server_schema(cls), full)]
    cases += [(("not json",), "{", False), (("array",), "[1]", False)]
    assert len(cases) > 150  # the sanity of the generator: every field, several ways
    got = run_node(node, tmp_path, [text for _, text, _ in cases], [])["server"]
    for (path, text, valid), outcome in zip(cases, got, strict=True):
        where = ".".join(map(str, path))
        if valid:
            assert "ok" in outcome, (where, outcome)
            # both sides read the same: absent and null optional fields are simply not there
            assert outcome["ok"] == plain(parse_server_message(text)), where
        else:
            assert outcome.get("error") == "MessageError", (where, outcome)
            with pytest.raises(ClientError):
                parse_server_message(text)
                pytest.fail(f"Python accepted {where}: {text}")


def _wire_start(options: StartOptions) -> dict[str, Any]:
    return {k: v for k, v in Start(options).to_dict().items() if k != "type"}


def test_node_builds_client_messages_python_reads(node: str, tmp_path: Path) -> None:
    every = StartOptions(
        sample_rate=44100,
        encoding="pcm_f32le",
        channels=2,
        partials=True,
        partial_interval_ms=250,
        text=True,
        language="vi",
        llm_format="ichigo-rle",
        vad=VadOptions(
            aggressiveness=3,
            min_silence_ms=700,
            tail_ms=150,
            preroll_ms=100,
            frame_ms=20,
            max_segment_s=12.5,
        ),
        offset=61.25,
    )
    # every field differs from its default, so a field node drops cannot pass unnoticed
    for f in dataclasses.fields(StartOptions):
        assert getattr(every, f.name) != f.default or f.name == "vad", f.name
    for name in VAD_FIELDS:
        assert getattr(every.vad, name) != getattr(VadOptions(), name), name
    starts = [
        _wire_start(every),  # every option, as the Python side writes them
        {},
        {"sample_rate": 48000, "partials": False},
        {"language": None, "llm_format": None, "vad": None},
        {"vad": {"tail_ms": 100}},
    ]
    expected = [
        every,
        StartOptions(),
        StartOptions(sample_rate=48000),
        StartOptions(),
        StartOptions(vad=VadOptions(tail_ms=100)),
    ]
    out = run_node(node, tmp_path, [], starts)
    for options, outcome, want in zip(starts, out["starts"], expected, strict=True):
        assert "ok" in outcome, (options, outcome)
        assert parse_client_message(outcome["ok"]) == Start(want), options
        assert json.loads(outcome["ok"]) == {"type": "start", **options}  # only what was given
    assert parse_client_message(out["flush"]) == Flush() and out["flush"] == Flush().to_json()
    assert parse_client_message(out["stop"]) == Stop() and out["stop"] == Stop().to_json()


def test_wrong_start_options_are_refused_on_both_sides(node: str, tmp_path: Path) -> None:
    cases = []
    for name, spec in start_schema().items():
        for wrong in WRONG[spec["kind"]]:
            cases.append({name: wrong})
        if not spec.get("nullable"):
            cases.append({name: None})
    for name, spec in start_schema()["vad"]["fields"].items():
        cases += [{"vad": {name: wrong}} for wrong in WRONG[spec["kind"]]]
        cases.append({"vad": {name: None}})
    cases.append({"sampleRate": 16000})  # a typo: node refuses it, the server would ignore it
    out = run_node(node, tmp_path, [], cases)["starts"]
    for options, outcome in zip(cases, out, strict=True):
        assert outcome.get("error") == "TypeError", (options, outcome)
        if "sampleRate" in options:
            continue
        with pytest.raises(ProtocolError) as refused:
            parse_client_message(json.dumps({"type": "start", **options}))
        assert refused.value.code == "bad_message", options

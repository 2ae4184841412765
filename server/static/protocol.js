// Streaming protocol v1 for the page: builds the client's messages, reads and checks the
// server's. A mirror of ichigo_stream/messages.py, the schema's home: tests/unit/test_protocol_js.py
// runs this module under node against the Python side, message by message and field by field.
// No DOM here (it runs in node too); docs/protocol.md is the specification.
//
// Server messages are read into plain objects with the wire's type and field names. Like the
// Python client: strict about the JSON type of every field it knows, blind to fields and
// message types it does not know (newer servers may add them). One difference JavaScript
// cannot avoid: JSON.parse makes 1.0 and 1 the same number, so an integer written as 1.0
// passes here and not in Python.

export const PROTOCOL_VERSION = 1;
export const SAMPLE_RATE = 16000; // the timeline's rate: every time is samples / 16000

/** A server message that is not JSON, not an object, or a known type with a bad field. */
export class MessageError extends Error {
  constructor(message) {
    super(message);
    this.name = "MessageError";
  }
}

// -- the schema ----------------------------------------------------------------------------
// A field: its JSON kind, whether it must be there, whether null is allowed (start options),
// and `unlimited`: a limit that may be infinite, null on the wire (JSON has no infinity),
// Infinity here. Arrays name the kind of their items; objects list their fields.

const field = (kind, extra = {}) => Object.freeze({ kind, required: true, ...extra });
const integer = field("integer");
const number = field("number");
const string = field("string");
const boolean = field("boolean");
const limit = field("number", { unlimited: true });
const arrayOf = (items) => field("array", { items });
const object = (fields) => field("object", { fields: Object.freeze(fields) });
const optional = (spec) => Object.freeze({ ...spec, required: false });
const nullable = (spec) => Object.freeze({ ...spec, nullable: true });

const MODEL = object({
  name: string,
  sha256: string,
  codebook_size: integer,
  mask_token: integer,
  token_rate: integer,
  whisper: string,
});

const LIMITS = object({
  max_message_bytes: integer,
  max_realtime: limit,
  realtime_burst_s: limit,
  max_session_s: limit,
  idle_timeout_s: limit,
  max_pending_segments: integer,
  max_windows_per_s: limit,
  windows_burst: limit,
  max_messages_per_s: limit,
});

const CAPABILITIES = object({
  text: boolean,
  partials: boolean,
  min_sample_rate: integer,
  max_sample_rate: integer,
  channels: arrayOf("integer"),
  encodings: arrayOf("string"),
  llm_formats: arrayOf("string"),
  limits: LIMITS,
});

/** Server -> client: each message type's fields (besides "type"). */
export const SERVER_MESSAGES = Object.freeze({
  ready: Object.freeze({
    protocol: integer,
    session: string,
    model: MODEL,
    sample_rate: integer,
    capabilities: CAPABILITIES,
  }),
  speech_start: Object.freeze({ segment: integer, start: number }),
  partial: Object.freeze({
    segment: integer,
    start: number,
    end: number,
    tokens: arrayOf("integer"),
    text: optional(string),
  }),
  segment: Object.freeze({
    segment: integer,
    start: number,
    end: number,
    tokens: arrayOf("integer"),
    text: optional(string),
    llm: optional(string),
    endpoint_ms: number,
  }),
  error: Object.freeze({
    code: string,
    message: string,
    segment: optional(integer),
    retry_after_ms: optional(integer),
  }),
  done: Object.freeze({ segments: integer, audio_seconds: number }),
});

const VAD = object({
  aggressiveness: optional(integer),
  min_silence_ms: optional(integer),
  tail_ms: optional(integer),
  preroll_ms: optional(integer),
  frame_ms: optional(integer),
  max_segment_s: optional(number),
});

/** Client -> server: the start message's fields, every one optional (the server has defaults). */
export const START_OPTIONS = Object.freeze({
  sample_rate: optional(integer),
  encoding: optional(string),
  channels: optional(integer),
  partials: optional(boolean),
  partial_interval_ms: optional(integer),
  text: optional(boolean),
  language: optional(nullable(string)),
  llm_format: optional(nullable(string)),
  vad: optional(nullable(VAD)), // null: the defaults
  offset: optional(number),
});

// -- client -> server ----------------------------------------------------------------------

/** The start message (JSON text) with these options: wire names, e.g. { sample_rate: 16000 }.
 * Throws TypeError on an unknown option or a value of the wrong type: a bug in the caller. */
export function startMessage(options = {}) {
  return JSON.stringify({ type: "start", ...checkOptions(START_OPTIONS, options, "start") });
}

export function flushMessage() {
  return JSON.stringify({ type: "flush" });
}

export function stopMessage() {
  return JSON.stringify({ type: "stop" });
}

function checkOptions(fields, options, where) {
  for (const name of Object.keys(options)) {
    if (!Object.hasOwn(fields, name)) throw new TypeError(`${where}: unknown option ${name}`);
  }
  const out = {};
  for (const [name, spec] of Object.entries(fields)) {
    const value = options[name];
    if (value === undefined) continue;
    const at = `${where}.${name}`;
    if (value === null && spec.nullable) out[name] = null;
    else if (spec.kind === "object") {
      out[name] = checkOptions(spec.fields, asObject(value, at, TypeError), at);
    } else out[name] = checkValue(spec, value, at, TypeError);
  }
  return out;
}

// -- server -> client ----------------------------------------------------------------------

/** One text message from the server -> a plain object ({ type, ...fields }), or null for a
 * type this page does not know. Throws MessageError when it is malformed. */
export function parseServerMessage(text) {
  const head = String(text).slice(0, 200);
  let obj;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new MessageError(`the server sent a message that is not JSON: ${head}`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new MessageError(`the server sent a message that is not an object: ${head}`);
  }
  const type = obj.type;
  if (typeof type !== "string" || !Object.hasOwn(SERVER_MESSAGES, type)) return null;
  try {
    return { type, ...readFields(SERVER_MESSAGES[type], obj, type) };
  } catch (error) {
    if (error instanceof MessageError) {
      error.message = `malformed ${type} message from the server: ${error.message}`;
    }
    throw error;
  }
}

function readFields(fields, obj, where) {
  const out = {};
  for (const [name, spec] of Object.entries(fields)) {
    const at = `${where}.${name}`;
    const value = Object.hasOwn(obj, name) ? obj[name] : undefined;
    if (value === undefined || (value === null && !spec.required)) {
      if (spec.required) throw new MessageError(`${at} is missing`);
      continue; // an optional field: absent (null too) means "not there"
    }
    if (value === null && spec.unlimited) out[name] = Infinity;
    else if (spec.kind === "object") out[name] = readFields(spec.fields, asObject(value, at), at);
    else out[name] = checkValue(spec, value, at, MessageError);
  }
  return out;
}

function asObject(value, at, Fail = MessageError) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Fail(`${at} must be an object, got ${show(value)}`);
  }
  return value;
}

const CHECKS = {
  integer: Number.isInteger,
  number: (v) => typeof v === "number" && Number.isFinite(v),
  string: (v) => typeof v === "string",
  boolean: (v) => typeof v === "boolean",
};
const NAMES = {
  integer: "an integer",
  number: "a finite number",
  string: "a string",
  boolean: "a boolean",
};

function checkValue(spec, value, at, Fail) {
  if (spec.kind === "array") {
    if (!Array.isArray(value)) throw new Fail(`${at} must be an array, got ${show(value)}`);
    value.forEach((item, k) => checkValue({ kind: spec.items }, item, `${at}[${k}]`, Fail));
    return [...value];
  }
  if (!CHECKS[spec.kind](value)) {
    throw new Fail(`${at} must be ${NAMES[spec.kind]}, got ${show(value)}`);
  }
  return value;
}

function show(value) {
  const text = JSON.stringify(value);
  return (text === undefined ? String(value) : text).slice(0, 60);
}

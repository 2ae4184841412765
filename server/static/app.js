// ichigo-stream page: microphone -> AudioWorklet (16 kHz PCM16) -> WebSocket protocol v1 -> UI.
// Plain ES module, no build step, nothing fetched from anywhere but the serving host.

import { LLM_FORMATS, formatTokens } from "./llm-format.js";
import {
  MessageError,
  SAMPLE_RATE, // what the worklet sends, and the protocol's timeline rate
  parseServerMessage,
  startMessage,
  stopMessage,
} from "./protocol.js";

const CHUNK_MS = 40; // PCM chunk length posted by the worklet and sent per message
const GOLDEN_ANGLE = 137.50776405003785; // degrees: neighbouring ids get far-apart hues
const STOP_TIMEOUT_MS = 20000; // after stop, wait this long for `done` before closing
const CLOCK_KEEP = 15000; // capture clock entries kept (~10 minutes of 40 ms chunks)
const SLOW_NETWORK_BYTES = 1 << 20; // unsent audio (32 s of PCM16) that earns a warning

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  start: $("start"),
  startLabel: document.querySelector("#start .label"),
  options: $("options"),
  partials: $("opt-partials"),
  text: $("opt-text"),
  llm: $("opt-llm"),
  status: $("status"),
  statusText: $("status-text"),
  error: $("error"),
  errorTitle: $("error-title"),
  errorText: $("error-text"),
  errorClose: $("error-close"),
  level: $("level"),
  levelFill: $("level-fill"),
  levelPeak: $("level-peak"),
  levelDb: $("level-db"),
  vad: $("vad"),
  vadText: $("vad-text"),
  statAudio: $("stat-audio"),
  statTokens: $("stat-tokens"),
  statSegments: $("stat-segments"),
  statLatency: $("stat-latency"),
  strip: $("strip"),
  segments: $("segments"),
  segmentsEmpty: $("segments-empty"),
  captionPanel: $("caption-panel"),
  caption: $("caption"),
  model: $("model"),
  wsUrl: $("ws-url"),
  announce: $("announce"),
};

/** The stream URL: same host and port as the page, ws: for http:, wss: for https:. */
export function streamUrl(loc = location, query = params) {
  const url = new URL("/v1/stream", loc.href);
  url.protocol = loc.protocol === "https:" ? "wss:" : "ws:";
  const token = query.get("token");
  if (token) url.searchParams.set("token", token);
  return url.href;
}

// -- options from the URL ----------------------------------------------------------------

function flag(name, fallback) {
  const value = params.get(name);
  if (value === null) return fallback;
  return !["0", "false", "no", "off"].includes(value.toLowerCase());
}

ui.partials.checked = flag("partials", true);
ui.text.checked = flag("text", false);
if (LLM_FORMATS.includes(params.get("llm"))) ui.llm.value = params.get("llm");
ui.wsUrl.textContent = streamUrl().replace(/([?&]token=)[^&]*/, "$1…");

// -- state -----------------------------------------------------------------------------------

let run = null; // the current capture + connection; a new Start makes a new one
let capabilities = null; // what the server can do, from its latest ready (null: not known yet)

/** Whether the server decodes text: assumed until a ready says otherwise. */
function textAvailable() {
  return capabilities === null || capabilities.text;
}

const STATE_LABELS = {
  idle: "Idle",
  connecting: "Connecting…",
  streaming: "Streaming",
  stopping: "Finishing…",
  stopped: "Stopped",
  error: "Error",
};

function setState(r, state, detail) {
  if (r !== run) return;
  r.state = state;
  ui.status.dataset.state = state;
  ui.statusText.textContent = detail ? `${STATE_LABELS[state]} · ${detail}` : STATE_LABELS[state];
  const active = state === "connecting" || state === "streaming" || state === "stopping";
  ui.start.setAttribute("aria-pressed", String(active));
  ui.start.classList.toggle("stop", active);
  ui.startLabel.textContent = active ? "Stop" : "Start";
  ui.start.disabled = state === "stopping";
  ui.options.disabled = active;
  ui.text.disabled = active || !textAvailable();
  document.body.dataset.state = state;
  if (!active) setSpeech(false);
}

function showError(title, text, kind = "error") {
  ui.error.dataset.kind = kind;
  ui.errorTitle.textContent = title;
  ui.errorText.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorTitle.textContent = "";
  ui.errorText.textContent = "";
}

ui.errorClose.addEventListener("click", clearError);

// -- start / stop ----------------------------------------------------------------------------

ui.start.addEventListener("click", () => {
  if (run && ["connecting", "streaming"].includes(run.state)) stop(run);
  else start();
});

function readOptions(withText = true) {
  return {
    partials: ui.partials.checked,
    text: withText && ui.text.checked && textAvailable(),
    llmFormat: ui.llm.value,
  };
}

function newRun(options, refused) {
  return {
    options,
    refused, // the error that refused the previous run's start (it asked for text), or null
    state: "idle",
    ws: null,
    opened: false, // the socket opened
    startSent: false,
    gotDone: false,
    fatal: false, // a fatal error message arrived
    stopRequested: false,
    stopSent: false,
    stream: null,
    ctx: null,
    node: null,
    queue: [], // PCM chunks captured before the socket opened
    captured: 0, // samples captured (= the session timeline, since all are sent in order)
    clock: [], // [captured samples at chunk end, performance.now() at its arrival]
    groups: new Map(), // segment index -> token strip group
    finals: new Set(),
    tokens: 0,
    maskToken: null,
    tokenRate: 25,
    level: -60,
    peak: -60,
    timers: [],
  };
}

async function start(refused = null) {
  clearError();
  resetView();
  const r = (run = newRun(readOptions(refused === null), refused));
  setState(r, "connecting");
  ui.captionPanel.hidden = !r.options.text;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const text = window.isSecureContext
      ? "This browser cannot capture audio (no getUserMedia)."
      : "Browsers allow the microphone only on secure pages: open this page over HTTPS " +
        "(the stream then uses WSS) or from localhost.";
    fail(r, "Microphone unavailable", text);
    return;
  }
  openSocket(r);
  try {
    await openMicrophone(r);
  } catch (error) {
    if (r !== run) return;
    const [title, text] = microphoneError(error);
    fail(r, title, text);
  }
}

function stop(r) {
  if (r.stopRequested) return;
  r.stopRequested = true;
  setState(r, "stopping");
  if (r.node) {
    // The worklet sends what its filter and partial chunk still hold, then "flushed".
    r.node.port.postMessage({ type: "flush" });
    r.timers.push(setTimeout(() => sendStop(r), 500));
  } else {
    sendStop(r);
  }
}

function sendStop(r) {
  if (r.stopSent) return;
  r.stopSent = true;
  closeCapture(r);
  const ws = r.ws;
  if (ws && ws.readyState === WebSocket.OPEN && r.startSent) {
    ws.send(stopMessage());
    r.timers.push(
      setTimeout(() => {
        if (ws.readyState !== WebSocket.CLOSED) ws.close(1000, "no done after stop");
      }, STOP_TIMEOUT_MS),
    );
  } else if (ws) {
    ws.close(1000, "stopped");
  }
}

/** Something went wrong: say so, release the microphone and the connection. */
function fail(r, title, text) {
  if (r !== run) return;
  showError(title, text);
  closeCapture(r);
  if (r.ws && r.ws.readyState <= WebSocket.OPEN) r.ws.close(1000, "client error");
  setState(r, "error");
}

function closeCapture(r) {
  if (r.node) {
    r.node.port.postMessage({ type: "close" });
    r.node.port.onmessage = null;
    r.node.disconnect();
    r.node = null;
  }
  if (r.stream) {
    for (const track of r.stream.getTracks()) track.stop();
    r.stream = null;
  }
  if (r.ctx) {
    r.ctx.close().catch(() => {});
    r.ctx = null;
  }
  showLevel(-Infinity, -Infinity);
}

function finish(r) {
  for (const timer of r.timers) clearTimeout(timer);
  r.timers = [];
  closeCapture(r);
}

// -- microphone ------------------------------------------------------------------------------

async function openMicrophone(r) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      channelCount: 1,
      echoCancellation: false, // the tokenizer wants the voice as it is
      noiseSuppression: false,
      autoGainControl: false,
    },
    video: false,
  });
  if (r !== run || r.stopSent || r.state === "error") {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  r.stream = stream;
  const [track] = stream.getAudioTracks();
  track.addEventListener("ended", () => {
    if (r === run && !r.stopRequested) {
      showError("Microphone stopped", "The microphone was disconnected or taken by another app.");
      stop(r);
    }
  });
  const ctx = new AudioContext({ latencyHint: "interactive" });
  r.ctx = ctx;
  await ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  if (r !== run || !r.ctx) return;
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "ichigo-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { targetRate: SAMPLE_RATE, chunkMs: CHUNK_MS },
  });
  node.port.onmessage = (event) => onWorklet(r, event.data);
  node.onprocessorerror = () =>
    fail(r, "Audio capture failed", "The capture worklet stopped with an error.");
  r.node = node;
  source.connect(node);
  node.connect(ctx.destination); // silent output: keeps the graph pulling the worklet
  if (ctx.state !== "running") {
    ctx.resume().catch(() => {});
    r.timers.push(
      setTimeout(() => {
        if (r === run && r.ctx && r.ctx.state !== "running") {
          showError(
            "Audio is paused",
            "The browser holds audio until you interact with the page: click anywhere to start.",
            "warn",
          );
          document.addEventListener(
            "pointerdown",
            () => {
              if (r.ctx) r.ctx.resume().then(clearError, () => {});
            },
            { once: true },
          );
        }
      }, 1000),
    );
  }
}

function microphoneError(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return [
      "Microphone access denied",
      "Allow this page to use the microphone (the icon in the address bar), then press Start.",
    ];
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return ["No microphone", "No audio input device was found: connect one and press Start."];
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return ["Microphone busy", "The microphone could not be opened: another app may be using it."];
  }
  return ["Audio capture failed", String((error && error.message) || error)];
}

function onWorklet(r, message) {
  if (r !== run) return;
  if (message.type === "audio") {
    const pcm = message.pcm;
    r.captured += pcm.length;
    r.clock.push([r.captured, performance.now()]);
    if (r.clock.length > CLOCK_KEEP) r.clock.splice(0, r.clock.length - CLOCK_KEEP);
    if (r.startSent && r.ws.readyState === WebSocket.OPEN) {
      r.ws.send(pcm.buffer);
      if (r.ws.bufferedAmount > SLOW_NETWORK_BYTES && !r.slowWarned) {
        r.slowWarned = true;
        showError(
          "Slow connection",
          "Audio is queueing up on the way to the server: latency will grow.",
          "warn",
        );
      }
    } else if (!r.stopSent) {
      r.queue.push(pcm.buffer);
    }
    showLevel(toDb(message.rms), toDb(message.peak));
    ui.statAudio.textContent = `${(r.captured / SAMPLE_RATE).toFixed(1)} s`;
  } else if (message.type === "flushed") {
    sendStop(r);
  } else if (message.type === "info") {
    r.inputRate = message.inputRate;
    updateModelLine(r);
  }
}

/** performance.now() at which timeline sample `sample` was captured, from the chunk clock. */
function capturedAt(r, sample) {
  const clock = r.clock;
  if (clock.length === 0) return null;
  let lo = 0;
  let hi = clock.length - 1;
  if (sample > clock[hi][0]) return clock[hi][1];
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (clock[mid][0] >= sample) hi = mid;
    else lo = mid + 1;
  }
  const [end, at] = clock[lo];
  return at - ((end - sample) / SAMPLE_RATE) * 1000;
}

// -- the socket ------------------------------------------------------------------------------

function openSocket(r) {
  let ws;
  try {
    ws = new WebSocket(streamUrl());
  } catch (error) {
    fail(r, "Cannot connect", String(error.message || error));
    return;
  }
  r.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.addEventListener("open", () => {
    if (r !== run) return ws.close(1000, "superseded");
    r.opened = true;
    // An LLM format the server does not render is rendered here from the tokens instead.
    const format = r.options.llmFormat;
    const serverLlm = capabilities === null || capabilities.llm_formats.includes(format);
    ws.send(
      startMessage({
        sample_rate: SAMPLE_RATE,
        encoding: "pcm_s16le",
        partials: r.options.partials,
        text: r.options.text,
        llm_format: serverLlm ? format : null,
      }),
    );
    r.startSent = true;
    for (const chunk of r.queue) ws.send(chunk);
    r.queue = [];
    if (r.stopRequested && !r.stopSent) sendStop(r);
  });
  ws.addEventListener("message", (event) => {
    if (r !== run || typeof event.data !== "string") return;
    let message;
    try {
      message = parseServerMessage(event.data);
    } catch (error) {
      if (!(error instanceof MessageError)) throw error;
      fail(r, "Protocol error", error.message);
      return;
    }
    if (message !== null) onMessage(r, message); // null: a newer server's message, ignored
  });
  ws.addEventListener("close", (event) => onClose(r, event));
}

function onMessage(r, m) {
  switch (m.type) {
    case "ready":
      r.model = m.model;
      r.maskToken = m.model.mask_token;
      r.tokenRate = m.model.token_rate;
      r.session = m.session;
      capabilities = m.capabilities;
      updateModelLine(r);
      if (!r.stopRequested) setState(r, "streaming");
      if (r.refused) explainRefusal(r);
      break;
    case "speech_start":
      setSpeech(true);
      group(r, m.segment, m.start);
      break;
    case "partial":
      if (r.finals.has(m.segment)) break; // stale: the segment is already final
      setSpeech(true);
      renderCells(r, group(r, m.segment, m.start), m.tokens, m.start, false);
      if (r.options.text && m.text) showLiveCaption(m.segment, m.text);
      break;
    case "segment":
      onSegment(r, m);
      break;
    case "error":
      onServerError(r, m);
      break;
    case "done":
      r.gotDone = true;
      closeCapture(r);
      if (!r.stopRequested) {
        const text = "The server finished the session (it may be restarting).";
        showError("Session ended", text, "warn");
      }
      setState(
        r,
        "stopped",
        `${m.segments} segment${m.segments === 1 ? "" : "s"}, ` +
          `${Number(m.audio_seconds).toFixed(1)} s of audio`,
      );
      break;
    default:
      break; // newer servers may send more: ignored
  }
}

const NO_TEXT = "This server runs without --text: captions are off.";

function onServerError(r, m) {
  const text = `${m.message} (${m.code})`;
  if (Number.isInteger(m.segment)) {
    // Non-fatal: one segment failed, the session goes on.
    showError(`Segment ${m.segment + 1} failed`, text, "warn");
    const g = r.groups.get(m.segment);
    if (g) g.el.classList.add("failed");
    return;
  }
  r.fatal = true;
  if (m.code === "unsupported" && r.options.text && capabilities === null) {
    // Most likely a server without --text. Its ready says for sure (capabilities.text), so
    // start again without text and let explainRefusal() read the answer.
    showError("Options refused", "Starting again without text…", "warn");
    const again = r;
    finish(again);
    setTimeout(() => {
      if (run === again) start(m);
    }, 300);
    return;
  }
  showError(`Server error: ${m.code}`, m.message);
}

/** The ready after a refused start: was it text? The server's capabilities tell. */
function explainRefusal(r) {
  if (!capabilities.text) {
    ui.text.checked = false;
    showError("Text is not available", NO_TEXT, "warn");
  } else {
    const refused = r.refused; // not text: something this page sent is unsupported
    fail(r, `Server error: ${refused.code}`, refused.message);
  }
}

function onClose(r, event) {
  if (r !== run) return;
  finish(r);
  if (r.gotDone || (r.stopRequested && !r.fatal)) {
    if (r.state !== "stopped") setState(r, "stopped", r.gotDone ? "" : `closed ${event.code}`);
    return;
  }
  if (r.state === "error") return; // already explained
  if (r.fatal) {
    setState(r, "error", `closed ${event.code}`);
    return;
  }
  let text;
  if (!r.opened) {
    text =
      `Could not connect to ${ui.wsUrl.textContent}. Is the server running` +
      (params.get("token") ? " and is ?token= right?" : ", and does it need ?token=…?");
  } else {
    text = `The connection closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`;
  }
  showError("Disconnected", text);
  setState(r, "error");
}

// -- the token strip and the segments --------------------------------------------------------

function hue(id) {
  return ((id * GOLDEN_ANGLE) % 360).toFixed(1);
}

function resetView() {
  ui.strip.replaceChildren();
  ui.segments.replaceChildren();
  ui.segmentsEmpty.hidden = false;
  ui.caption.textContent = "";
  ui.caption.classList.remove("live");
  ui.announce.textContent = "";
  ui.statTokens.textContent = "0";
  ui.statSegments.textContent = "0";
  ui.statLatency.textContent = "–";
  ui.statAudio.textContent = "0.0 s";
}

/** The strip group of segment `index`: a label and its cells (created on first use). */
function group(r, index, start) {
  let g = r.groups.get(index);
  if (g) return g;
  const el = document.createElement("div");
  el.className = "group pending";
  el.setAttribute("role", "listitem");
  el.dataset.segment = String(index);
  const label = document.createElement("span");
  label.className = "group-label";
  label.textContent = String(index + 1);
  label.title = `segment ${index + 1}, from ${Number(start).toFixed(2)} s`;
  const cells = document.createElement("span");
  cells.className = "cells";
  const summary = document.createElement("span");
  summary.className = "visually-hidden";
  el.append(label, cells, summary);
  g = { el, cells, summary, count: 0 };
  r.groups.set(index, g);
  // Keep groups in segment order even if messages of two segments interleave.
  const next = [...ui.strip.children].find((child) => Number(child.dataset.segment) > index);
  ui.strip.insertBefore(el, next || null);
  return g;
}

function renderCells(r, g, tokens, start, final) {
  const frag = document.createDocumentFragment();
  const rate = r.tokenRate;
  for (let k = 0; k < tokens.length; k++) {
    const id = tokens[k];
    const cell = document.createElement("span");
    cell.className = id === r.maskToken ? "cell mask" : "cell";
    cell.style.setProperty("--h", hue(id));
    cell.title = `token ${id} · ${(start + k / rate).toFixed(2)} s`;
    frag.append(cell);
  }
  g.cells.replaceChildren(frag);
  g.count = tokens.length;
  g.el.classList.remove("pending");
  g.el.classList.toggle("partial", !final);
  g.el.classList.toggle("final", final);
  const index = Number(g.el.dataset.segment) + 1;
  g.summary.textContent = `segment ${index}: ${tokens.length} tokens${final ? "" : " so far"}`;
  ui.strip.scrollTop = ui.strip.scrollHeight;
}

function onSegment(r, m) {
  const arrived = performance.now();
  r.finals.add(m.segment);
  renderCells(r, group(r, m.segment, m.start), m.tokens, m.start, true);
  const openSegments = [...r.groups.keys()].filter((index) => !r.finals.has(index));
  if (openSegments.length === 0) setSpeech(false);
  r.tokens += m.tokens.length;
  ui.statTokens.textContent = String(r.tokens);
  ui.statSegments.textContent = String(r.finals.size);

  // End-of-speech latency: from when the segment's last sample was captured to now.
  const at = capturedAt(r, Math.round(m.end * SAMPLE_RATE));
  const latencyMs = at === null ? null : Math.max(0, arrived - at);
  if (latencyMs !== null) ui.statLatency.textContent = formatMs(latencyMs);

  const llm = typeof m.llm === "string" ? m.llm : formatTokens(m.tokens, r.options.llmFormat);
  ui.segmentsEmpty.hidden = true;
  ui.segments.append(segmentCard(r, m, llm, latencyMs));
  ui.announce.textContent =
    `Segment ${m.segment + 1}: ${m.tokens.length} tokens` +
    (latencyMs === null ? "" : `, latency ${formatMs(latencyMs)}`);
  ui.segments.scrollTop = ui.segments.scrollHeight;
  if (r.options.text && typeof m.text === "string") showFinalCaption(m.segment, m.text);
}

/** A segment's live caption (the partials' agreed text, which only grows): a grey line. */
function showLiveCaption(segment, text) {
  ui.caption.textContent = text;
  ui.caption.classList.add("live");
  ui.caption.dataset.segment = String(segment);
}

/** A segment's final text replaces its live caption, not a later segment's. */
function showFinalCaption(segment, text) {
  const live = ui.caption.classList.contains("live");
  if (live && Number(ui.caption.dataset.segment) > segment) return;
  ui.caption.textContent = text;
  ui.caption.classList.remove("live");
  ui.caption.dataset.segment = String(segment);
}

function segmentCard(r, m, llm, latencyMs) {
  const li = document.createElement("li");
  li.className = "segment";
  li.dataset.segment = String(m.segment);

  const head = document.createElement("div");
  head.className = "segment-head";
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = `#${m.segment + 1}`;
  const span = document.createElement("span");
  span.className = "span";
  span.textContent = `${m.start.toFixed(2)} – ${m.end.toFixed(2)} s`;
  const count = document.createElement("span");
  count.className = "muted";
  count.textContent = `${m.tokens.length} tokens`;
  const latency = document.createElement("span");
  latency.className = "latency";
  latency.title =
    "End-of-speech latency: from the capture of the segment's last sample to this message " +
    "(estimated from the captured-sample clock). " +
    "Server: time from its endpoint decision to sending.";
  const server = Number.isFinite(m.endpoint_ms) ? ` · server ${formatMs(m.endpoint_ms)}` : "";
  latency.textContent = `latency ${latencyMs === null ? "–" : formatMs(latencyMs)}${server}`;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy LLM text";
  copy.setAttribute("aria-label", `Copy the LLM text of segment ${m.segment + 1}`);
  copy.addEventListener("click", () => copyText(llm, copy));
  head.append(badge, span, count, latency, copy);
  li.append(head);

  if (r.options.text) {
    const caption = document.createElement("p");
    caption.className = "segment-text";
    caption.textContent = typeof m.text === "string" && m.text ? m.text : "(no text)";
    li.append(caption);
  }
  const code = document.createElement("code");
  code.className = "llm";
  code.textContent = llm;
  li.append(code);
  return li;
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // No async clipboard (insecure page, or denied): the old way.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied ✓" : "Copy failed";
  button.classList.toggle("done", ok);
  setTimeout(() => {
    button.textContent = label;
    button.classList.remove("done");
  }, 1500);
}

// -- meters ----------------------------------------------------------------------------------

function toDb(amplitude) {
  return amplitude > 0 ? 20 * Math.log10(amplitude) : -Infinity;
}

let levelFrame = 0;
let pendingLevel = [-Infinity, -Infinity];

function showLevel(rmsDb, peakDb) {
  pendingLevel = [rmsDb, peakDb];
  if (!levelFrame) levelFrame = requestAnimationFrame(drawLevel);
}

function drawLevel() {
  levelFrame = 0;
  const [rmsDb, peakDb] = pendingLevel;
  const clamp = (db) => Math.max(-60, Math.min(0, Number.isFinite(db) ? db : -60));
  const rms = clamp(rmsDb);
  const peak = clamp(peakDb);
  ui.levelFill.style.clipPath = `inset(0 ${(100 * -rms) / 60}% 0 0)`;
  ui.levelPeak.style.left = `${((peak + 60) / 60) * 100}%`;
  ui.levelPeak.hidden = peak <= -60;
  ui.level.classList.toggle("hot", peak > -1);
  const audible = Number.isFinite(rmsDb) && rmsDb > -60;
  ui.levelDb.textContent = audible ? `${rmsDb.toFixed(0)} dB` : "–∞ dB";
  ui.level.setAttribute("aria-valuenow", rms.toFixed(0));
  ui.level.setAttribute("aria-valuetext", rms <= -60 ? "silent" : `${rms.toFixed(0)} decibels`);
}

function setSpeech(speech) {
  ui.vad.dataset.speech = String(speech);
  ui.vadText.textContent = speech ? "Speech" : "Silence";
}

function updateModelLine(r) {
  const parts = [];
  if (r.model && r.model.name) parts.push(r.model.name);
  if (r.model && r.model.codebook_size) parts.push(`${r.model.codebook_size} codes`);
  if (r.tokenRate) parts.push(`${r.tokenRate} tok/s`);
  if (r.inputRate) parts.push(`mic ${(r.inputRate / 1000).toFixed(1)} kHz → 16 kHz`);
  ui.model.textContent = parts.join(" · ");
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

window.addEventListener("pagehide", () => {
  if (run && run.ws && run.ws.readyState <= WebSocket.OPEN) run.ws.close(1001, "page closed");
});

if (flag("autostart", false)) start();

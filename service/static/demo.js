// spquant demo: play a recording (Prophesee DAT, or a camera's RAW EVT 2.0 / 3.0) through WS /v1/stream at the
// sensor's pace and draw events and boxes live.
// Page options (query string): api_key=KEY when the server has one (else the page asks), speed=N to play N times
// faster.
"use strict";

const params = new URLSearchParams(location.search);
const KEY_STORE = "spquant.api_key";
let apiKey = params.get("api_key") || sessionStorage.getItem(KEY_STORE) || null;
const speed = Math.max(0.05, Number(params.get("speed")) || 1);
const BOX_COLORS = ["#ff9f40", "#3ddc84", "#c58af9", "#f28b82"];
const MAX_BUFFERED = 1 << 20;  // bytes queued in the socket before the page waits (backpressure)
const MAX_SEND = 1 << 20;  // bytes per message: far below the server's message limit
const DECAY = 0.82;  // per animation frame: older events fade out
const VIEW = [640, 480];  // the canvas never exceeds this: bigger sensors are drawn scaled down
// Sensor geometry implied by the HAL plugin when a RAW header has no geometry (as data/formats/raw.py).
const PLUGIN_GEOMETRY = [["gen41", [1280, 720]], ["imx636", [1280, 720]], ["gen31", [640, 480]],
                         ["gen3", [640, 480]], ["genx320", [320, 320]]];

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx = canvas.getContext("2d");
let current = null;  // the recording being played
let model = null;  // GET /v1/model: classes, the sensor the model was trained for

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").classList.toggle("error", state === "error");
  if (state) document.body.dataset.state = state;
}

// ------------------------------------------------------------------------------------------------ reading files

function readHeader(bytes) {
  // '%' lines as data/formats/header.py reads them: printable ASCII, newline-terminated, up to '% end'.
  const text = new TextDecoder("ascii");
  const lines = [], fields = {};
  let pos = 0;
  while (pos < bytes.length && bytes[pos] === 0x25) {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0 || end - pos >= 4096) break;
    let stop = end;
    while (stop > pos + 1 && bytes[stop - 1] === 0x0d) stop--;
    const body = bytes.subarray(pos + 1, stop);
    if (!body.every((b) => (b >= 32 && b < 127) || b === 9)) break;
    const line = text.decode(body).trim();
    lines.push(line);
    pos = end + 1;
    if (line === "end") break;
    const space = line.search(/\s/);
    const key = (space < 0 ? line : line.slice(0, space)).toLowerCase();
    if (key && !(key in fields)) fields[key] = space < 0 ? "" : line.slice(space).trim();
  }
  return { lines, fields, size: pos };
}

function rawEncoding(fields) {
  const fmt = (fields.format || "").split(";")[0].trim().toUpperCase();
  const version = (fields.evt || "").trim();
  if (["EVT3", "EVT3.0"].includes(fmt) || ["3", "3.0"].includes(version)) return "evt3";
  if (["EVT2", "EVT2.0"].includes(fmt) || ["2", "2.0"].includes(version)) return "evt2";
  if (fmt || version) throw new Error(`unsupported RAW encoding ${fmt || "evt " + version} (EVT 2.0 and 3.0 play)`);
  return null;
}

function rawGeometry(fields) {
  const match = /^\s*(\d+)\s*x\s*(\d+)\s*$/.exec(fields.geometry || "");
  if (match) return [Number(match[1]), Number(match[2])];
  const options = {};
  for (const part of (fields.format || "").split(";").slice(1)) {
    const eq = part.indexOf("=");
    if (eq > 0) options[part.slice(0, eq)] = part.slice(eq + 1);
  }
  if (/^\d+$/.test(options.width || "") && /^\d+$/.test(options.height || "")) {
    return [Number(options.width), Number(options.height)];
  }
  const plugin = (fields.plugin_name || "").toLowerCase();
  const known = PLUGIN_GEOMETRY.find(([name]) => plugin.includes(name));
  return known ? known[1] : null;
}

function events(capacity) {
  return { t: new Float64Array(capacity), x: new Uint16Array(capacity), y: new Uint16Array(capacity),
           p: new Uint8Array(capacity), cut: new Uint32Array(capacity), count: 0 };
}

function push(ev, t, x, y, p, cut) {
  const n = ev.count++;
  ev.t[n] = t; ev.x[n] = x; ev.y[n] = y; ev.p[n] = p; ev.cut[n] = cut;
}

function decodeDat(payload) {
  // 8-byte records: uint32 t; uint32 x | y<<14 | p<<28. cut[i]: payload bytes up to and including event i.
  const count = Math.floor(payload.length / 8);
  const words = new DataView(payload.buffer, payload.byteOffset, count * 8);
  const ev = events(count);
  for (let i = 0; i < count; i++) {
    const data = words.getUint32(8 * i + 4, true);
    push(ev, words.getUint32(8 * i, true), data & 0x3fff, (data >>> 14) & 0x3fff, (data >>> 28) & 1, 8 * (i + 1));
  }
  return ev;
}

function decodeEvt2(payload) {
  // As data/formats/evt2.py: CD words need a TIME_HIGH first; a decreasing TIME_HIGH is a wrap-around.
  const n = payload.length >> 2;
  const words = new DataView(payload.buffer, payload.byteOffset, n * 4);
  const ev = events(n);
  let high = 0, wraps = 0, haveHigh = false;
  for (let i = 0; i < n; i++) {
    const w = words.getUint32(4 * i, true);
    const kind = w >>> 28;
    if (kind <= 1) {
      if (!haveHigh) continue;
      const t = ((wraps * 2 ** 28 + high) * 64) + ((w >>> 22) & 0x3f);
      push(ev, t, (w >>> 11) & 0x7ff, w & 0x7ff, kind, 4 * (i + 1));
    } else if (kind === 0x8) {
      const h = w & 0x0fffffff;
      if (haveHigh && h < high) wraps++;
      high = h;
      haveHigh = true;
    }
  }
  return ev;
}

function decodeEvt3(payload) {
  // As data/formats/evt3.py: ADDR_Y, ADDR_X (one event), VECT_BASE_X + VECT_12 / VECT_8 masks, TIME_LOW, TIME_HIGH.
  const n = payload.length >> 1;
  const words = new DataView(payload.buffer, payload.byteOffset, n * 2);
  let capacity = 0;
  for (let i = 0; i < n; i++) {
    const kind = words.getUint16(2 * i, true) >>> 12;
    capacity += kind === 0x2 ? 1 : kind === 0x4 ? 12 : kind === 0x5 ? 8 : 0;
  }
  const ev = events(capacity);
  let y = 0, baseX = 0, pol = 0, low = 0, high = 0, wraps = 0, haveHigh = false, haveY = false, haveBase = false;
  for (let i = 0; i < n; i++) {
    const w = words.getUint16(2 * i, true);
    const kind = w >>> 12;
    const cut = 2 * (i + 1);
    if (kind === 0x0) {
      y = w & 0x7ff;
      haveY = true;
    } else if (kind === 0x2) {
      if (haveHigh && haveY) push(ev, (wraps * 4096 + high) * 4096 + low, w & 0x7ff, y, (w >>> 11) & 1, cut);
    } else if (kind === 0x3) {
      baseX = w & 0x7ff;
      pol = (w >>> 11) & 1;
      haveBase = true;
    } else if (kind === 0x4 || kind === 0x5) {
      const width = kind === 0x4 ? 12 : 8;
      if (haveHigh && haveY && haveBase) {
        const t = (wraps * 4096 + high) * 4096 + low;
        for (let b = 0; b < width; b++) if ((w >>> b) & 1) push(ev, t, baseX + b, y, pol, cut);
      }
      baseX += width;
    } else if (kind === 0x6) {
      low = w & 0xfff;
    } else if (kind === 0x8) {
      const h = w & 0xfff;
      if (haveHigh && h < high) wraps++;
      high = h;
      haveHigh = true;
    }
  }
  return ev;
}

function parseRecording(buffer, name, fallback) {
  // {format, width, height, sized ("header" | "model"), payload (the bytes the stream gets), events}; the format
  // is read from the content as the server does, the file name only tells a headerless DAT.
  const bytes = new Uint8Array(buffer);
  const header = readHeader(bytes);
  const encoding = header.lines.length ? rawEncoding(header.fields) : null;
  let format, size, offset = header.size;
  if (encoding) {
    format = encoding;
    size = rawGeometry(header.fields);
  } else if (header.lines.length || /\.dat$/i.test(name)) {
    format = "dat";
    const width = parseInt(header.fields.width, 10), height = parseInt(header.fields.height, 10);
    size = width > 0 && height > 0 ? [width, height] : null;
    if (header.lines.length) offset += 2;  // event type and size bytes
  } else {
    throw new Error("not a Prophesee DAT or RAW recording (no '%' header)");
  }
  const payload = bytes.subarray(Math.min(offset, bytes.length));
  const decode = { dat: decodeDat, evt2: decodeEvt2, evt3: decodeEvt3 }[format];
  return { format, width: (size || fallback)[0], height: (size || fallback)[1], sized: size ? "header" : "model",
           payload, events: decode(payload) };
}

// ---------------------------------------------------------------------------------------------------- playing

function streamUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream` +
         (apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "");
}

function play(buffer, name) {
  stop();
  let rec;
  try {
    rec = parseRecording(buffer, name, model ? [model.sensor_width, model.sensor_height] : [304, 240]);
  } catch (error) {
    setStatus(`${name}: ${error.message}`, "error");
    return;
  }
  if (!rec.events.count) { setStatus(`${name}: no events`, "error"); return; }
  const scale = Math.min(1, VIEW[0] / rec.width, VIEW[1] / rec.height);
  canvas.width = Math.max(1, Math.round(rec.width * scale));
  canvas.height = Math.max(1, Math.round(rec.height * scale));
  const image = ctx.createImageData(canvas.width, canvas.height);
  for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
  const ws = new WebSocket(streamUrl());
  ws.binaryType = "arraybuffer";
  const run = { rec, ws, name, image, scale, next: 0, sentBytes: 0, wall0: 0, sent: [], boxes: [], flushing: false,
                frame: 0, stamps: [], latencies: [], server: [], rates: [], shown: [], plays: 0 };
  current = run;
  document.body.dataset.windows = "0";
  document.body.dataset.boxes = "0";
  document.body.dataset.format = rec.format;
  ws.onopen = () => ws.send(JSON.stringify({ type: "config", encoding: rec.format, width: rec.width,
                                             height: rec.height }));
  ws.onmessage = (event) => onMessage(run, JSON.parse(event.data));
  ws.onclose = (event) => {
    if (current !== run) return;
    cancelAnimationFrame(run.frame);
    if (document.body.dataset.state !== "error" && document.body.dataset.state !== "done") {
      setStatus(`stream closed (${event.code}) ${event.reason}`, event.code === 1000 ? "done" : "error");
    }
  };
  setStatus(`connecting… ${name}`, "loading");
}

function start(run) {
  run.next = 0;
  run.sentBytes = 0;
  run.sent = [];
  run.flushing = false;
  run.wall0 = performance.now();
  const { rec } = run;
  const sized = rec.sized === "model" ? ", the model's sensor: the file names none" : "";
  setStatus(`playing ${run.name} (${rec.format.toUpperCase()}, ${rec.width}×${rec.height}${sized}, ` +
            `${rec.events.count.toLocaleString()} events${speed !== 1 ? `, ${speed}× speed` : ""})`, "playing");
  run.frame = requestAnimationFrame((now) => frame(run, now));
}

function onMessage(run, message) {
  if (current !== run) return;
  if (message.type === "detections") {
    const now = performance.now();
    const done = run.sent.findIndex((s) => s.lastT >= message.t_end);  // the message that completed the window
    if (done >= 0) {
      run.latencies.push(now - run.sent[done].wall);
      run.sent.splice(0, done);
    }
    if (typeof message.latency_ms === "number") run.server.push(message.latency_ms);
    if (typeof message.firing_rate === "number") run.rates.push(message.firing_rate);
    run.boxes = message.detections;
    run.stamps.push(now);
    document.body.dataset.windows = String(Number(document.body.dataset.windows) + 1);
    document.body.dataset.boxes = String(Number(document.body.dataset.boxes) + message.detections.length);
    if (run.flushing) render(run, now);  // the animation has stopped: the last windows still get drawn
  } else if (message.type === "ack" && message.command === "config") {
    start(run);
  } else if (message.type === "ack" && message.command === "flush") {
    run.plays += 1;
    document.body.dataset.plays = String(run.plays);
    if ($("loop").checked) {
      run.ws.send(JSON.stringify({ type: "reset" }));
    } else {
      setStatus(`finished ${run.name}`, "done");
      run.ws.close(1000);
    }
  } else if (message.type === "ack" && message.command === "reset") {
    start(run);
  } else if (message.type === "error") {
    setStatus(`server: ${message.detail}`, "error");
  }
}

function send(run, end) {
  // The recording's own bytes, cut anywhere: the server's decoders carry partial records and words across messages.
  while (run.sentBytes < end) {
    const stop = Math.min(end, run.sentBytes + MAX_SEND);
    run.ws.send(run.rec.payload.subarray(run.sentBytes, stop));
    run.sentBytes = stop;
  }
}

function frame(run, now) {
  if (current !== run || run.flushing) return;
  const ev = run.rec.events;
  if (run.ws.bufferedAmount < MAX_BUFFERED) {
    const tNow = ev.t[0] + (now - run.wall0) * 1000 * speed;  // sensor time in µs
    let j = run.next;
    while (j < ev.count && ev.t[j] <= tNow) j++;
    while (j > 0 && j < ev.count && ev.cut[j] === ev.cut[j - 1]) j++;  // a vector word's events go together
    if (j > run.next) {
      send(run, ev.cut[j - 1]);
      run.sent.push({ wall: now, lastT: ev.t[j - 1] });
      run.shown.push([now, j - run.next]);
      drawEvents(run, run.next, j);
      run.next = j;
    }
    if (j >= ev.count) {
      send(run, run.rec.payload.length);  // words after the last event (time stamps) too
      run.flushing = true;
      run.sent.push({ wall: now, lastT: Infinity });  // the flush completes the last window
      run.ws.send(JSON.stringify({ type: "flush" }));
    }
  }
  render(run, now);
  if (!run.flushing) run.frame = requestAnimationFrame((t) => frame(run, t));
}

function drawEvents(run, from, to) {
  const { x, y, p } = run.rec.events;
  const data = run.image.data;
  const { scale } = run;
  const width = run.image.width;
  for (let i = from; i < to; i++) {
    const o = 4 * (Math.floor(y[i] * scale) * width + Math.floor(x[i] * scale));
    if (p[i]) { data[o] = 255; data[o + 1] = 255; data[o + 2] = 255; }
    else { data[o] = 77; data[o + 1] = 141; data[o + 2] = 255; }
  }
}

function median(values) {
  const recent = values.slice(-50).sort((a, b) => a - b);
  return recent.length ? recent[recent.length >> 1] : null;
}

function render(run, now) {
  ctx.putImageData(run.image, 0, 0);
  const data = run.image.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] *= DECAY; data[i + 1] *= DECAY; data[i + 2] *= DECAY;
  }
  const s = run.scale;
  ctx.lineWidth = Math.max(1, canvas.width / 300);
  ctx.font = `${Math.max(8, Math.round(canvas.width / 30))}px system-ui, sans-serif`;
  for (const box of run.boxes) {
    const color = BOX_COLORS[box.class_id % BOX_COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(box.x * s, box.y * s, box.w * s, box.h * s);
    ctx.fillStyle = color;
    ctx.fillText(`${box.class_name} ${box.score.toFixed(2)}`, box.x * s + 2, Math.max(10, box.y * s - 2));
  }
  const { shown } = run;
  while (run.stamps.length && now - run.stamps[0] > 1000) run.stamps.shift();
  while (shown.length && now - shown[0][0] > 1000) shown.shift();
  const latency = median(run.latencies), server = median(run.server), rate = median(run.rates);
  $("fps").textContent = run.stamps.length;
  $("latency").textContent = latency === null ? "–" : latency.toFixed(0);
  $("server").textContent = server === null ? "–" : server.toFixed(1);
  $("firing").parentElement.hidden = rate === null;  // only when the server reports the network's firing rate
  if (rate !== null) $("firing").textContent = `${(100 * rate).toFixed(2)} %`;
  $("windows").textContent = document.body.dataset.windows;
  $("boxes").textContent = run.boxes.length;
  $("rate").textContent = shown.reduce((sum, e) => sum + e[1], 0).toLocaleString();
}

function stop() {
  if (!current) return;
  const run = current;
  current = null;
  cancelAnimationFrame(run.frame);
  if (run.ws.readyState <= WebSocket.OPEN) run.ws.close(1000);
  setStatus("stopped", "stopped");
}

async function playSample() {
  setStatus("loading the sample recording…", "loading");
  const response = await fetch("/demo/sample.dat");
  if (!response.ok) { setStatus(`could not load the sample (${response.status})`, "error"); return; }
  play(await response.arrayBuffer(), "street_td.dat (synthetic sample)");
}

async function playFile(file) {
  play(await file.arrayBuffer(), file.name);
}

// ------------------------------------------------------------------------------------------------ the API key

function askForKey(message) {
  $("keyform").hidden = false;
  $("apikey").focus();
  setStatus(message, "key");
}

$("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("apikey").value.trim();
  if (!key) return;
  apiKey = key;
  sessionStorage.setItem(KEY_STORE, key);  // this tab only: kept across reloads, gone with the tab
  init();
});

async function init() {
  const response = await fetch("/v1/model", apiKey ? { headers: { "X-API-Key": apiKey } } : {});
  if (response.status === 401) {
    askForKey(apiKey ? "the server refused this API key: enter the right one" : "this server needs an API key");
    return;
  }
  if (!response.ok) { setStatus(`model info unavailable (${response.status})`, "error"); return; }
  $("keyform").hidden = true;
  model = await response.json();
  $("classes").innerHTML = model.classes.map((name, i) =>
    `<i style="background:${BOX_COLORS[i % BOX_COLORS.length]}"></i>${name}`).join("");
  $("sensor").textContent = `${model.sensor_width}×${model.sensor_height}`;
  await playSample();
}

$("play").addEventListener("click", playSample);
$("stop").addEventListener("click", stop);
$("file").addEventListener("change", (event) => event.target.files[0] && playFile(event.target.files[0]));
const stage = $("stage");
stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
stage.addEventListener("drop", (event) => {
  event.preventDefault();
  stage.classList.remove("dragging");
  if (event.dataTransfer.files[0]) playFile(event.dataTransfer.files[0]);
});
window.spquantDemo = { parseRecording };  // for tests: the page's own reader, checked against the server's
init();

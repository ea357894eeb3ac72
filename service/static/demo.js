// spquant demo: play a DAT recording through WS /v1/stream at the sensor's pace and draw events and boxes live.
// Page options (query string): api_key=KEY when the server has one, speed=N to play N times faster.
"use strict";

const params = new URLSearchParams(location.search);
const apiKey = params.get("api_key");
const speed = Math.max(0.05, Number(params.get("speed")) || 1);
const BOX_COLORS = ["#ff9f40", "#3ddc84", "#c58af9", "#f28b82"];
const MAX_BUFFERED = 1 << 20;  // bytes queued in the socket before the page waits (backpressure)
const DECAY = 0.82;  // per animation frame: older events fade out

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx = canvas.getContext("2d");
let current = null;  // the recording being played

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").classList.toggle("error", state === "error");
  if (state) document.body.dataset.state = state;
}

function parseDat(buffer) {
  // '%' header lines (Width/Height optional; Gen1 304x240 otherwise), then event type + size bytes, then records.
  const bytes = new Uint8Array(buffer);
  const text = new TextDecoder("ascii");
  let pos = 0, width = 304, height = 240, header = false;
  while (pos < bytes.length && bytes[pos] === 0x25) {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) break;
    const [key, value] = text.decode(bytes.subarray(pos + 1, end)).trim().split(/\s+/);
    if (/^width$/i.test(key)) width = parseInt(value, 10) || width;
    if (/^height$/i.test(key)) height = parseInt(value, 10) || height;
    pos = end + 1;
    header = true;
  }
  if (header) pos += 2;
  const count = Math.floor((bytes.length - pos) / 8);
  const records = new Uint32Array(buffer.slice(pos, pos + count * 8));  // [t, x | y<<14 | p<<28] pairs
  return { width, height, records, count };
}

function play(buffer, name) {
  stop();
  if (/\.raw$/i.test(name)) {
    setStatus("the demo page plays .dat recordings; send .raw files to POST /v1/detect or stream them with " +
              "{\"type\": \"config\", \"encoding\": \"evt3\"}", "error");
    return;
  }
  const rec = parseDat(buffer);
  if (!rec.count) { setStatus(`${name}: no events`, "error"); return; }
  canvas.width = rec.width;
  canvas.height = rec.height;
  const image = ctx.createImageData(rec.width, rec.height);
  for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream` +
              (apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "");
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const run = { rec, ws, name, image, next: 0, wall0: 0, sent: [], boxes: [], flushing: false, frame: 0,
                stamps: [], latencies: [], events: [], plays: 0 };
  current = run;
  document.body.dataset.windows = "0";
  document.body.dataset.boxes = "0";
  ws.onopen = () => ws.send(JSON.stringify({ type: "config", encoding: "dat", width: rec.width, height: rec.height }));
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
  run.sent = [];
  run.flushing = false;
  run.wall0 = performance.now();
  setStatus(`playing ${run.name} (${run.rec.width}×${run.rec.height}, ${run.rec.count} events` +
            `${speed !== 1 ? `, ${speed}× speed` : ""})`, "playing");
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
    run.boxes = message.detections;
    run.stamps.push(now);
    document.body.dataset.windows = String(Number(document.body.dataset.windows) + 1);
    document.body.dataset.boxes = String(Number(document.body.dataset.boxes) + message.detections.length);
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

function frame(run, now) {
  if (current !== run || run.flushing) return;
  const { records, count } = run.rec;
  if (run.ws.bufferedAmount < MAX_BUFFERED) {
    const tNow = records[0] + (now - run.wall0) * 1000 * speed;  // sensor time in µs
    let j = run.next;
    while (j < count && records[2 * j] <= tNow) j++;
    if (j > run.next) {
      run.ws.send(records.subarray(2 * run.next, 2 * j));
      run.sent.push({ wall: now, lastT: records[2 * (j - 1)] });
      run.events.push([now, j - run.next]);
      drawEvents(run, run.next, j);
      run.next = j;
    }
    if (j >= count) {
      run.flushing = true;
      run.sent.push({ wall: now, lastT: Infinity });  // the flush completes the last window
      run.ws.send(JSON.stringify({ type: "flush" }));
    }
  }
  render(run, now);
  if (!run.flushing) run.frame = requestAnimationFrame((t) => frame(run, t));
}

function drawEvents(run, from, to) {
  const { records } = run.rec;
  const data = run.image.data;
  const width = run.rec.width;
  for (let i = from; i < to; i++) {
    const word = records[2 * i + 1];
    const o = 4 * ((word >>> 14 & 0x3fff) * width + (word & 0x3fff));
    if (word >>> 28 & 1) { data[o] = 255; data[o + 1] = 255; data[o + 2] = 255; }
    else { data[o] = 77; data[o + 1] = 141; data[o + 2] = 255; }
  }
}

function render(run, now) {
  ctx.putImageData(run.image, 0, 0);
  const data = run.image.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] *= DECAY; data[i + 1] *= DECAY; data[i + 2] *= DECAY;
  }
  ctx.lineWidth = Math.max(1, run.rec.width / 300);
  ctx.font = `${Math.max(8, Math.round(run.rec.width / 30))}px system-ui, sans-serif`;
  for (const box of run.boxes) {
    const color = BOX_COLORS[box.class_id % BOX_COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    ctx.fillStyle = color;
    ctx.fillText(`${box.class_name} ${box.score.toFixed(2)}`, box.x + 2, Math.max(10, box.y - 2));
  }
  while (run.stamps.length && now - run.stamps[0] > 1000) run.stamps.shift();
  while (run.events.length && now - run.events[0][0] > 1000) run.events.shift();
  const recent = run.latencies.slice(-50).sort((a, b) => a - b);
  $("fps").textContent = run.stamps.length;
  $("latency").textContent = recent.length ? recent[recent.length >> 1].toFixed(0) : "–";
  $("windows").textContent = document.body.dataset.windows;
  $("boxes").textContent = run.boxes.length;
  $("rate").textContent = run.events.reduce((sum, e) => sum + e[1], 0).toLocaleString();
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

async function init() {
  const response = await fetch("/v1/model", apiKey ? { headers: { "X-API-Key": apiKey } } : {});
  if (!response.ok) {
    setStatus(response.status === 401 ? "this server needs an API key: open /?api_key=KEY"
                                      : `model info unavailable (${response.status})`, "error");
    return;
  }
  const { classes } = await response.json();
  $("classes").innerHTML = classes.map((name, i) =>
    `<i style="background:${BOX_COLORS[i % BOX_COLORS.length]}"></i>${name}`).join("");
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
init();

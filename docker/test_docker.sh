#!/usr/bin/env bash
# `make test-docker`: build the image from the unchanged docker/Dockerfile, run it, and check it end to end.
#
#   1. engine: `docker` when one answers (`docker info`), else podman (Debian's podman/buildah/runc/debootstrap are
#      apt-installed when missing; root needed). With podman and no `python:3.11-slim` image (no registry reachable
#      here), a stand-in is built by debootstrap (Debian bookworm's Python 3.11) and imported under that name.
#   2. build docker/Dockerfile with the repository root as context: torch from the local CPU wheel when one lies in
#      /opt/wheels or $SPQUANT_TORCH_WHEEL (copied into docker/wheels/, TORCH_SOURCE=wheel), else from PyTorch's CPU
#      index (the Dockerfile's default); every other dependency from PyPI.
#   3. run it hardened as docker/compose.yaml does (read-only root, tmpfs /tmp, all capabilities dropped, 2 CPUs,
#      2 GiB), with a model mounted read-only at /models (SPQUANT_MODEL=/models/spquant-n.pt) and a recordings
#      folder at /recordings; wait for /healthz and the image's HEALTHCHECK; one REST detection (multipart upload
#      of data/samples/street_td.dat); one WebSocket stream of the sample's DAT records at the sensor's pace
#      (checks: one message per window, in order, the first pass equal to the REST answer); container memory under
#      the stream; `spquant predict` with the bundled model in a second container writing to /recordings.
#   4. clean up: containers, the test image and the wheels copied into docker/wheels/. Kept: the stand-in base
#      image `localhost/python:3.11-slim` (a 1-minute debootstrap; SPQUANT_DOCKER_REMOVE_BASE=1 removes it too)
#      and, with a real docker engine, its build cache.
#
# Settings (environment): SPQUANT_DOCKER_KEEP_IMAGE=1 keeps the image (and podman's layer cache: faster reruns);
# SPQUANT_DOCKER_REMOVE_BASE=1; SPQUANT_TORCH_WHEEL=/path/torch-*.whl; SPQUANT_STREAM_REPEAT (3 passes of the 3 s
# sample); PYTHON (the host Python with `websockets`, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE
TAG=spquant:test-docker
CTR=spquant-test-docker-$$
SAMPLE=data/samples/street_td.dat
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
TORCHVISION_VERSION=$(sed -n 's/^ *"torchvision==\([^"]*\)".*/\1/p' pyproject.toml)
WORK=$(mktemp -d /tmp/spquant-docker.XXXXXX)
COPIED_WHEELS=()
quiet_podman() { podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
log() { printf '\n== %s\n' "$*"; }
die() { printf 'test-docker: FAILED: %s\n' "$*" >&2; exit 1; }

# --- engine -------------------------------------------------------------------------------------------------------
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
  CLI=(docker)
  BUILD=(docker build)
  RUN_EXTRA=()
else
  ENGINE=podman
  missing=()
  for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "no docker engine and no ${missing[*]}; install podman buildah runc debootstrap"
    log "installing podman buildah runc debootstrap (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap busybox-static >/dev/null
  fi
  # This machine: cgroup v1 + v2 hybrid, no CAP_SYS_RESOURCE, no systemd (research/ecosystem.md §8). Without
  # systemd podman cannot schedule the HEALTHCHECK timer and says so on every run/rm (harmless: filtered below;
  # the check itself is run with `podman healthcheck run`).
  CLI=(quiet_podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
  BUILD=("${CLI[@]}" build --isolation=chroot --format docker)
  RUN_EXTRA=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if [ "${SPQUANT_DOCKER_KEEP_IMAGE:-0}" != 1 ]; then BUILD+=(--layers=false); fi
fi
echo "engine: $ENGINE ($("${CLI[@]}" --version))"

cleanup() {
  local rc=$?
  set +e
  for name in "$CTR" "$CTR-predict"; do "${CLI[@]}" rm -f "$name" >/dev/null 2>&1; done
  if [ "${SPQUANT_DOCKER_KEEP_IMAGE:-0}" != 1 ]; then "${CLI[@]}" rmi -f "$TAG" >/dev/null 2>&1; fi
  if [ "${SPQUANT_DOCKER_REMOVE_BASE:-0}" = 1 ] && [ "$ENGINE" = podman ]; then
    "${CLI[@]}" rmi -f localhost/python:3.11-slim >/dev/null 2>&1
  fi
  for wheel in "${COPIED_WHEELS[@]}"; do rm -f "$wheel"; done
  rm -rf "$WORK"
  if ((rc)); then echo "test-docker: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

# --- base image (podman only): a stand-in for python:3.11-slim --------------------------------------------------------
if [ "$ENGINE" = podman ] && ! "${CLI[@]}" image exists python:3.11-slim; then
  log "no python:3.11-slim image: building a stand-in with debootstrap (Debian bookworm, Python 3.11)"
  t0=$SECONDS
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  rootfs=$WORK/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  ln -sf python3 "$rootfs/usr/bin/python"
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  # Builds reach PyPI through this machine's TLS-intercepting egress: its CA bundle must be trusted inside.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rootfs" -c . | "${CLI[@]}" import --quiet \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - python:3.11-slim >/dev/null
  rm -rf "$rootfs"
  echo "stand-in base built in $((SECONDS - t0)) s"
fi

# --- build --------------------------------------------------------------------------------------------------------------
torch_wheel=${SPQUANT_TORCH_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)}
build_args=()
if [ -n "$torch_wheel" ] && [ -f "$torch_wheel" ]; then
  build_args+=(--build-arg TORCH_SOURCE=wheel)
  vision_wheel=$(ls /opt/pypi-more/files/torchvision-"$TORCHVISION_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  for wheel in "$torch_wheel" $vision_wheel; do
    target=docker/wheels/$(basename "$wheel")
    if [ ! -e "$target" ]; then
      cp -l "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target"
      COPIED_WHEELS+=("$target")
    fi
  done
  echo "torch: local wheel $(basename "$torch_wheel") (TORCH_SOURCE=wheel)"
else
  echo "torch: PyTorch's CPU index (TORCH_SOURCE=index)"
fi
log "building $TAG from docker/Dockerfile"
t0=$SECONDS
"${BUILD[@]}" -f docker/Dockerfile -t "$TAG" "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; die "image build failed"; }
BUILD_S=$((SECONDS - t0))
grep -E '^torch [0-9]|^model ' "$WORK/build.log" || true
IMAGE_BYTES=$("${CLI[@]}" image inspect --format '{{.Size}}' "$TAG")
BASE_BYTES=$("${CLI[@]}" image inspect --format '{{.Size}}' python:3.11-slim 2>/dev/null || echo 0)
echo "built in ${BUILD_S} s; image $((IMAGE_BYTES / 1000000)) MB (base $((BASE_BYTES / 1000000)) MB)"
"${CLI[@]}" run --rm "${RUN_EXTRA[@]}" --entrypoint sh "$TAG" -c \
  'id; cuda=$(grep -iE "^(nvidia-|triton|cuda-)" /opt/venv/spquant-freeze.txt | grep -iv "^nvidia-ml-py=" | tr "\n" " ");
   echo "CUDA wheels in the image: ${cuda:-none}";
   grep -i "^nvidia-ml-py=" /opt/venv/spquant-freeze.txt | sed "s/$/ (pure-Python NVML bindings, an ultralytics dependency)/";
   grep -iE "^(torch|torchvision|ultralytics-opencv-headless|spquant)==" /opt/venv/spquant-freeze.txt | tr "\n" " "; echo;
   command -v gcc cc pip || echo "no compiler, no pip on PATH"; du -sh /opt/venv' \
  || die "cannot run a shell in the image"

# --- run ----------------------------------------------------------------------------------------------------------------
mkdir -p "$WORK/models" "$WORK/recordings"
cp models/weights/spquant-n.pt "$WORK/models/" && chmod a+r "$WORK/models/spquant-n.pt"
cp "$SAMPLE" "$WORK/recordings/" && chmod a+r "$WORK/recordings/$(basename "$SAMPLE")"
chmod 777 "$WORK/recordings"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HARDEN=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --cpus 2 --memory 2g)
log "running $TAG on 127.0.0.1:$PORT"
t0=$SECONDS
"${CLI[@]}" run -d --name "$CTR" "${RUN_EXTRA[@]}" "${HARDEN[@]}" -p "127.0.0.1:$PORT:8000" \
  -v "$WORK/models:/models:ro" -v "$WORK/recordings:/recordings" -e SPQUANT_MODEL=/models/spquant-n.pt \
  "$TAG" >/dev/null || die "container did not start"
URL=http://127.0.0.1:$PORT
for _ in $(seq 180); do
  if "$PY" -c "import sys, urllib.request as r; r.urlopen('$URL/healthz', timeout=2)" 2>/dev/null; then break; fi
  if [ "$("${CLI[@]}" inspect --format '{{.State.Running}}' "$CTR")" != true ]; then
    "${CLI[@]}" logs "$CTR" | tail -n 40; die "container exited"
  fi
  sleep 1
done
READY_S=$((SECONDS - t0))
"$PY" -c "import urllib.request as r; print('GET /healthz', r.urlopen('$URL/healthz', timeout=5).read().decode())" \
  || { "${CLI[@]}" logs "$CTR" | tail -n 40; die "/healthz did not answer within 180 s"; }
echo "healthy $READY_S s after start"
if [ "$ENGINE" = podman ]; then
  "${CLI[@]}" healthcheck run "$CTR" >/dev/null && echo "image HEALTHCHECK: healthy" || die "image HEALTHCHECK failed"
else
  for _ in $(seq 90); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$CTR")
    [ "$status" = healthy ] && break
    sleep 1
  done
  echo "image HEALTHCHECK: $status"; [ "$status" = healthy ] || die "HEALTHCHECK status $status"
fi

mem_now() {  # the engine's view of the container's memory, in MiB (podman/docker stats)
  "${CLI[@]}" stats --no-stream --format '{{.MemUsage}}' "$CTR" 2>/dev/null | head -n1 | "$PY" -c '
import re, sys
m = re.match(r"\s*([\d.]+)\s*([kKMG]i?B|B)", sys.stdin.read())
scale = {"B": 2**-20, "kB": 1e3 / 2**20, "KiB": 2**-10, "KB": 1e3 / 2**20, "MB": 1e6 / 2**20, "MiB": 1,
         "GB": 1e9 / 2**20, "GiB": 1024}
print(f"{float(m[1]) * scale[m[2]]:.0f}" if m else "nan")'
}
MEM_IDLE=$(mem_now)

log "REST detection and WebSocket stream"
( while :; do mem_now >>"$WORK/mem.txt"; sleep 0.5; done ) &
SAMPLER=$!
"$PY" - "$URL" "$SAMPLE" "${SPQUANT_STREAM_REPEAT:-3}" <<'PY' | tee "$WORK/client.txt" \
  || { kill "$SAMPLER"; "${CLI[@]}" logs "$CTR" 2>&1 | tail -n 40; die "REST/stream checks failed"; }
import json, sys, threading, time, urllib.request
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

url, sample, repeat = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

# One REST detection: multipart upload of the .dat (field `file`).
boundary = "spquant-test-docker"
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{sample.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n").encode() + sample.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(f"{url}/v1/detect", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
t0 = time.perf_counter()
rest = json.load(urllib.request.urlopen(request, timeout=300))
rest_s = time.perf_counter() - t0
n_boxes = sum(len(w["detections"]) for w in rest["windows"])
assert rest["events"] > 0 and rest["windows"] and n_boxes > 0, rest
classes = sorted({d["class_name"] for w in rest["windows"] for d in w["detections"]})
print(f"POST /v1/detect: {rest['events']} events, {len(rest['windows'])} windows, {n_boxes} boxes {classes}, "
      f"{rest_s:.2f} s")

# The sample's DAT records (after the % header and the 2 type/size bytes), repeated with shifted timestamps.
raw = sample.read_bytes()
pos, header = 0, {}
while raw[pos:pos + 1] == b"%":
    end = raw.index(b"\n", pos) + 1
    words = raw[pos + 1:end].decode(errors="replace").split()
    if len(words) == 2 and words[0] in ("Width", "Height"):
        header[words[0].lower()] = int(words[1])
    pos = end
records = np.frombuffer(raw[pos + 2:], dtype=[("t", "<u4"), ("w", "<u4")])
window = rest["window_us"]
span = (int(records["t"][-1]) // window + 1) * window
passes = []
for k in range(repeat):
    shifted = records.copy()
    shifted["t"] += k * span
    passes.append(shifted)
stream = np.concatenate(passes)
data = stream.tobytes()
# Messages of 10 ms of sensor time, each boundary moved 3 bytes so records are split across messages.
ends = np.searchsorted(stream["t"], np.arange(10_000, repeat * span + 10_000, 10_000))
cuts = [0] + [min(int(e) * 8 + 3, len(data)) for e in ends[:-1]] + [len(data)]

received, done = [], threading.Event()
errors = []

def reader(ws):
    try:
        while True:
            msg = json.loads(ws.recv(timeout=120))
            if msg["type"] == "detections":
                received.append((time.perf_counter(), msg))
            elif msg["type"] == "error":
                errors.append(msg)
                return
            elif msg["type"] == "ack" and msg["command"] == "close":
                return
    except Exception as exc:  # noqa: BLE001 -- reported below
        errors.append(repr(exc))
    finally:
        done.set()

with connect(f"{url.replace('http', 'ws', 1)}/v1/stream", max_size=None, open_timeout=30) as ws:
    ws.send(json.dumps({"type": "config", "encoding": "dat", **header}))
    ack = json.loads(ws.recv(timeout=30))
    assert ack["type"] == "ack", ack
    thread = threading.Thread(target=reader, args=(ws,), daemon=True)
    thread.start()
    start = time.perf_counter()
    sent_at = {}
    for i in range(len(cuts) - 1):
        t_sensor = (i + 1) * 10_000  # sensor time covered once this message is sent
        delay = start + t_sensor / 1e6 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if cuts[i + 1] > cuts[i]:
            ws.send(data[cuts[i]:cuts[i + 1]])
        sent_at[t_sensor] = time.perf_counter()
    ws.send(json.dumps({"type": "close"}))
    done.wait(300)
assert not errors, errors
wins = [m for _, m in received]
assert wins, "no detection messages"
for a, b in zip(wins, wins[1:], strict=False):
    assert b["t_start"] == a["t_end"] and a["t_end"] - a["t_start"] == window, (a["t_start"], b["t_start"])
assert wins[0]["t_start"] == rest["windows"][0]["t_start"], (wins[0]["t_start"], rest["windows"][0]["t_start"])
assert wins[-1]["t_end"] >= int(stream["t"][-1]), (wins[-1]["t_end"], int(stream["t"][-1]))
first = wins[:len(rest["windows"])]

def same(a, b):
    return len(a) == len(b) and all(
        x["class_id"] == y["class_id"] and all(abs(x[k] - y[k]) < 1e-3 for k in ("x", "y", "w", "h", "score"))
        for x, y in zip(a, b, strict=True))

mismatch = [w["t_start"] for w, r in zip(first, rest["windows"], strict=True) if not same(w["detections"], r["detections"])]
assert not mismatch, f"stream and REST differ in windows starting at {mismatch[:5]}"
# Latency: from the moment the message completing a window was sent to that window's answer.
lat = []
for t, m in received:
    done_at = sent_at.get(((m["t_end"] + 9_999) // 10_000) * 10_000)
    if done_at is not None and t >= done_at:
        lat.append(t - done_at)
lat = np.array(lat) * 1e3
stream_boxes = sum(len(w["detections"]) for w in wins)
print(f"WS /v1/stream: {len(data)} bytes in {len(cuts) - 1} messages at the sensor's pace ({repeat} x "
      f"{span / 1e6:g} s), {len(wins)} windows in order, {stream_boxes} boxes; first pass identical to REST; "
      f"latency per window median {np.median(lat):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
      f"max {lat.max():.0f} ms; {time.perf_counter() - start:.1f} s wall")
PY
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
MEM_PEAK=$(sort -g "$WORK/mem.txt" | grep -v nan | tail -n1)
STATUS=$("${CLI[@]}" exec "$CTR" cat /proc/1/status)
kib() { awk -v k="$1" '$1 == k":" {printf "%.0f", $2 / 1024}' <<<"$STATUS"; }
HWM=$(kib VmHWM)
MEM_AFTER=$(mem_now)
# The cgroup's own peak since the container started (podman: cgroup v1 max_usage_in_bytes or v2 memory.peak).
CG_PEAK=n/a
cgpath=$("${CLI[@]}" inspect --format '{{.State.CgroupPath}}' "$CTR" 2>/dev/null || true)
for f in "/sys/fs/cgroup/memory$cgpath/memory.max_usage_in_bytes" "/sys/fs/cgroup$cgpath/memory.peak"; do
  if [ -n "$cgpath" ] && [ -r "$f" ]; then CG_PEAK=$(( $(cat "$f") / 1048576 )); break; fi
done
echo "container memory (${ENGINE} stats): idle ${MEM_IDLE} MiB, under the stream peak ${MEM_PEAK} MiB" \
  "($(wc -l <"$WORK/mem.txt") samples), after it ${MEM_AFTER} MiB; cgroup peak since start ${CG_PEAK} MiB"
echo "server process: peak RSS (VmHWM) ${HWM} MiB; now $(kib RssAnon) MiB anonymous + $(kib RssFile) MiB file-backed" \
  "(shared libraries: page cache, charged to whichever cgroup first read them)"

log "spquant predict with the bundled model, writing to the /recordings volume"
"${CLI[@]}" run --rm --name "$CTR-predict" "${RUN_EXTRA[@]}" "${HARDEN[@]}" -v "$WORK/recordings:/recordings" "$TAG" \
  spquant predict "/recordings/$(basename "$SAMPLE")" --out /recordings/dets.npy | tail -n 2
[ -s "$WORK/recordings/dets.npy" ] || die "spquant predict wrote nothing to /recordings"
"$PY" -c "import numpy as np; d = np.load('$WORK/recordings/dets.npy'); print('predict:', len(d), 'boxes in', '$WORK/recordings/dets.npy'.rsplit('/', 1)[1])"

"${CLI[@]}" logs "$CTR" 2>&1 | grep -ciE 'traceback|error' | sed 's/^/server log lines with traceback|error: /' || true
log "summary"
cat <<EOF
engine            $ENGINE
build             ${BUILD_S} s ($([ ${#build_args[@]} -gt 0 ] && echo "torch from local wheel" || echo "torch from CPU index"))
image             $((IMAGE_BYTES / 1000000)) MB ($("$PY" -c "print(f'{$IMAGE_BYTES / 2**30:.2f}')") GiB), base $((BASE_BYTES / 1000000)) MB
health            /healthz ok ${READY_S} s after start; HEALTHCHECK healthy
REST              $(sed -n 's/^POST \/v1\/detect: //p' "$WORK/client.txt")
stream            $(sed -n 's/^WS \/v1\/stream: //p' "$WORK/client.txt")
memory            container idle ${MEM_IDLE} MiB; under the stream peak ${MEM_PEAK} MiB (cgroup peak ${CG_PEAK} MiB);
                  server process peak RSS ${HWM} MiB incl. shared libraries
EOF
echo "test-docker: passed"

#!/usr/bin/env bash
# `make test-docker`: build images from the unchanged docker/Dockerfile, run each hardened, and check it end to end.
#
# Images (SPQUANT_DOCKER_TARGETS, comma-separated, run in this order; default edge-amd64,edge-arm64):
#   full        the default target (`.[train,serve]`, CPU torch) for linux/amd64, serving the checkpoint
#               spquant-n.pt mounted at /models (SPQUANT_MODEL=/models/spquant-n.pt).
#   edge-amd64  `--target edge` (`.[serve]`, no torch) for linux/amd64, serving its bundled spquant-n.spq.
#   edge-arm64  the same for linux/arm64, run under qemu user emulation where the host is not arm64 (slow: about a
#               minute to start, Python compiling its imports under qemu, and minutes for the REST check).
# Checks on every image: /healthz and the image's HEALTHCHECK; one REST detection (multipart upload of
# data/samples/street_td.dat). Images native to the host (amd64 here) also: one WebSocket stream of the sample's DAT
# records at the sensor's pace (one message per window, in order, the first pass equal to the REST answer); container
# memory under the stream; `spquant predict` in a second container (edge: with a .spq mounted at /models) writing to
# /recordings. arm64: the REST answer must equal the amd64 one's (edge-amd64's, else full's): same windows, classes,
# boxes and scores to 1e-3.
#
#   1. engine: `docker` when one answers (`docker info`; `docker build --platform` needs BuildKit and, for arm64 on
#      another host, QEMU binfmt handlers), else podman (Debian's podman/buildah/runc/debootstrap, and
#      qemu-user-static for arm64, are apt-installed when missing; root needed). For a foreign architecture the
#      qemu binfmt handler is registered when missing (binfmt_misc mounted first).
#   2. base (podman only; no registry is reachable here): a stand-in for python:3.11-slim per architecture, built by
#      debootstrap (Debian bookworm's Python 3.11; arm64 through qemu, 4-6 min) as
#      localhost/python-standin:3.11-slim-ARCH, and the manifest list localhost/python:3.11-slim of those, so that an
#      unchanged `FROM python:3.11-slim` resolves per --platform. The host's CA bundle goes in (its TLS-intercepting
#      egress).
#   3. build each image (its seconds and size, and its compressed size with podman: what a registry pull moves).
#      full: torch from the local CPU wheel when one lies in /opt/wheels or $SPQUANT_TORCH_WHEEL (copied into
#      docker/wheels/, TORCH_SOURCE=wheel), else from PyTorch's CPU index; every other dependency from PyPI.
#   4. run it as docker/compose.yaml does (read-only root, tmpfs /tmp, all capabilities dropped, 2 CPUs, 2 GiB),
#      with /models (read-only) and /recordings mounted, and check it.
#   5. update benchmarks/results/docker_edge.json (per image tested: platform, sizes (image, compressed, base,
#      venv), its numpy/numba/llvmlite versions, build/healthy/REST seconds, boxes, stream latency, memory, the
#      inference engine, arm64's equality with amd64, the date, git commit and container engine; images not tested
#      keep their last figures) and print a summary.
#   6. clean up: containers, the test images and the wheels copied into docker/wheels/. Kept: the stand-in bases
#      (SPQUANT_DOCKER_REMOVE_BASE=1 removes them too) and, with a real docker engine, its build cache.
#
# Settings (environment): SPQUANT_DOCKER_TARGETS; SPQUANT_DOCKER_KEEP_IMAGE=1 keeps the images (and podman's layer
# cache: faster reruns; build times then are not a clean build's); SPQUANT_DOCKER_REMOVE_BASE=1;
# SPQUANT_DOCKER_EMULATED_TIMEOUT (seconds an emulated image may take to become healthy and to answer the REST
# request, each; default 2400); SPQUANT_TORCH_WHEEL=/path/torch-*.whl; SPQUANT_STREAM_REPEAT (3 passes of the 3 s
# sample); PYTHON (the host Python with numpy and `websockets`, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE
SAMPLE=data/samples/street_td.dat
RESULTS=benchmarks/results/docker_edge.json
EMULATED_TIMEOUT=${SPQUANT_DOCKER_EMULATED_TIMEOUT:-2400}
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
TORCHVISION_VERSION=$(sed -n 's/^ *"torchvision==\([^"]*\)".*/\1/p' pyproject.toml)
WORK=$(mktemp -d /tmp/spquant-docker.XXXXXX)
COPIED_WHEELS=()
CONTAINERS=()
TAGS=()
quiet_podman() { podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
log() { printf '\n== %s\n' "$*"; }
die() { printf 'test-docker: FAILED: %s\n' "$*" >&2; exit 1; }

TARGETS=()
IFS=, read -r -a requested <<<"${SPQUANT_DOCKER_TARGETS:-edge-amd64,edge-arm64}"
for known in full edge-amd64 edge-arm64; do
  for name in "${requested[@]}"; do [ "$name" = "$known" ] && TARGETS+=("$known") && break; done
done
for name in "${requested[@]}"; do
  case $name in full | edge-amd64 | edge-arm64) ;; *) die "unknown image '$name' in SPQUANT_DOCKER_TARGETS" ;; esac
done
((${#TARGETS[@]})) || die "SPQUANT_DOCKER_TARGETS names no image (full, edge-amd64, edge-arm64)"
arch_of() { [ "$1" = edge-arm64 ] && echo arm64 || echo amd64; }
case $(uname -m) in x86_64) HOST_ARCH=amd64 ;; aarch64 | arm64) HOST_ARCH=arm64 ;; *) HOST_ARCH=$(uname -m) ;; esac
ARCHES=$(for t in "${TARGETS[@]}"; do arch_of "$t"; done | sort -u | tr '\n' ' ')
echo "images: ${TARGETS[*]} (host: $HOST_ARCH)"

# --- engine ---------------------------------------------------------------------------------------------------------
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
  CLI=(docker)
  BUILD=(docker build)
  RUN_EXTRA=()
else
  ENGINE=podman
  missing=()
  for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [[ " $ARCHES" == *" arm64 "* ]] && [ "$HOST_ARCH" != arm64 ] && ! command -v qemu-aarch64-static >/dev/null; then
    missing+=(qemu-user-static)
  fi
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "no docker engine and no ${missing[*]}; install podman buildah runc debootstrap qemu-user-static"
    log "installing podman buildah runc debootstrap qemu-user-static (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap busybox-static \
      qemu-user-static binfmt-support >/dev/null
  fi
  # This machine: cgroup v1 + v2 hybrid, no CAP_SYS_RESOURCE, no systemd (research/ecosystem.md §8). Without
  # systemd podman cannot schedule the HEALTHCHECK timer and says so on every run/rm (harmless: filtered below;
  # the check itself is run with `podman healthcheck run`).
  CLI=(quiet_podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
  BUILD=("${CLI[@]}" build --isolation=chroot --format docker)
  RUN_EXTRA=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if [ "${SPQUANT_DOCKER_KEEP_IMAGE:-0}" != 1 ]; then BUILD+=(--layers=false); fi
fi
ENGINE_VERSION=$("${CLI[@]}" --version)
echo "engine: $ENGINE ($ENGINE_VERSION)"

cleanup() {
  local rc=$?
  set +e
  for name in "${CONTAINERS[@]}"; do "${CLI[@]}" rm -f "$name" >/dev/null 2>&1; done
  if [ "${SPQUANT_DOCKER_KEEP_IMAGE:-0}" != 1 ]; then
    for tag in "${TAGS[@]}"; do "${CLI[@]}" rmi -f "$tag" >/dev/null 2>&1; done
  fi
  if [ "${SPQUANT_DOCKER_REMOVE_BASE:-0}" = 1 ] && [ "$ENGINE" = podman ]; then
    "${CLI[@]}" manifest rm localhost/python:3.11-slim >/dev/null 2>&1
    for arch in amd64 arm64; do "${CLI[@]}" rmi -f "localhost/python-standin:3.11-slim-$arch" >/dev/null 2>&1; done
  fi
  for wheel in "${COPIED_WHEELS[@]}"; do rm -f "$wheel"; done
  rm -rf "$WORK"
  if ((rc)); then echo "test-docker: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

# --- emulation: a qemu binfmt handler for each foreign architecture --------------------------------------------------
for arch in $ARCHES; do
  [ "$arch" = "$HOST_ARCH" ] && continue
  qemu=$([ "$arch" = arm64 ] && echo aarch64 || echo x86_64)
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    [ "$(id -u)" = 0 ] || die "binfmt_misc is not mounted (as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/qemu-$qemu" 2>/dev/null; then
    [ "$(id -u)" = 0 ] || die "no qemu-$qemu binfmt handler (as root: update-binfmts --enable qemu-$qemu)"
    update-binfmts --enable "qemu-$qemu" || die "cannot register the qemu-$qemu binfmt handler"
  fi
  # F (fix binary): the kernel holds the interpreter open, so it also runs inside containers and chroots.
  grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/qemu-$qemu" \
    || die "the qemu-$qemu binfmt handler lacks the F flag (use qemu-user-static's)"
  echo "emulation: $arch through $(sed -n 's/^interpreter //p' "/proc/sys/fs/binfmt_misc/qemu-$qemu")"
done

# --- base images (podman only): stand-ins for python:3.11-slim ------------------------------------------------------
if [ "$ENGINE" = podman ]; then
  base=localhost/python:3.11-slim
  if "${CLI[@]}" image exists "$base" && ! "${CLI[@]}" manifest exists "$base"; then
    # A single-architecture stand-in (earlier versions of this script): kept as that architecture's.
    arch=$("${CLI[@]}" image inspect --format '{{.Architecture}}' "$base")
    "${CLI[@]}" image exists "localhost/python-standin:3.11-slim-$arch" \
      || "${CLI[@]}" tag "$base" "localhost/python-standin:3.11-slim-$arch"
    "${CLI[@]}" untag "$base"
  fi
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  for arch in $ARCHES; do
    standin=localhost/python-standin:3.11-slim-$arch
    "${CLI[@]}" image exists "$standin" && continue
    log "no python:3.11-slim for $arch: building a stand-in with debootstrap (Debian bookworm, Python 3.11)"
    t0=$SECONDS
    rootfs=$WORK/rootfs-$arch
    debootstrap --arch="$arch" --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
      bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap-$arch.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap-$arch.log"; die "debootstrap ($arch) failed"; }
    ln -sf python3 "$rootfs/usr/bin/python"
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    # Builds reach PyPI through this machine's TLS-intercepting egress: its CA bundle must be trusted inside.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | "${CLI[@]}" import --quiet --os linux --arch "$arch" \
      --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      - "$standin" >/dev/null
    rm -rf "$rootfs"
    echo "stand-in base ($arch) built in $((SECONDS - t0)) s"
  done
  # The list holds every stand-in present, so an unchanged `FROM python:3.11-slim` resolves for each --platform.
  "${CLI[@]}" manifest exists "$base" && "${CLI[@]}" manifest rm "$base" >/dev/null
  "${CLI[@]}" manifest create "$base" >/dev/null
  for arch in amd64 arm64; do
    if "${CLI[@]}" image exists "localhost/python-standin:3.11-slim-$arch"; then
      "${CLI[@]}" manifest add "$base" "containers-storage:localhost/python-standin:3.11-slim-$arch" >/dev/null
    fi
  done
fi
base_bytes() {
  local ref=python:3.11-slim
  [ "$ENGINE" = podman ] && ref=localhost/python-standin:3.11-slim-$1
  "${CLI[@]}" image inspect --format '{{.Size}}' "$ref" 2>/dev/null || echo 0
}

# --- the host-side client: REST, stream and comparison checks -------------------------------------------------------
cat >"$WORK/client.py" <<'PY'
"""rest URL SAMPLE OUT | stream URL SAMPLE REST REPEAT OUT | compare REFERENCE ANSWER OUT"""
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def rest(url, sample, out, timeout):
    """One REST detection: multipart upload of the .dat (field `file`)."""
    sample = Path(sample)
    boundary = "spquant-test-docker"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{sample.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + sample.read_bytes()
    body += f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/v1/detect", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    answer = json.load(urllib.request.urlopen(request, timeout=float(timeout)))
    seconds = time.perf_counter() - t0
    boxes = sum(len(w["detections"]) for w in answer["windows"])
    assert answer["events"] > 0 and answer["windows"] and boxes > 0, answer
    model = json.load(urllib.request.urlopen(f"{url}/v1/model", timeout=60))
    classes = sorted({d["class_name"] for w in answer["windows"] for d in w["detections"]})
    print(f"POST /v1/detect: {answer['events']} events, {len(answer['windows'])} windows, {boxes} boxes {classes}, "
          f"{seconds:.2f} s (engine {model['runtime']}, {Path(model['path']).name})")
    Path(out).write_text(json.dumps({"answer": answer, "seconds": seconds, "boxes": boxes,
                                     "runtime": model["runtime"], "model": model["path"]}))


def same(a, b):
    return len(a) == len(b) and all(
        x["class_id"] == y["class_id"] and all(abs(x[k] - y[k]) < 1e-3 for k in ("x", "y", "w", "h", "score"))
        for x, y in zip(a, b, strict=True))


def compare(reference, candidate, out):
    """Whether two REST answers agree: the same windows, and in each the same boxes to 1e-3."""
    ref, got = (json.loads(Path(p).read_text())["answer"] for p in (reference, candidate))
    spans = [(w["t_start"], w["t_end"]) for w in ref["windows"]]
    equal = spans == [(w["t_start"], w["t_end"]) for w in got["windows"]] and ref["events"] == got["events"]
    differ = [] if not equal else [r["t_start"] for r, g in zip(ref["windows"], got["windows"], strict=True)
                                   if not same(r["detections"], g["detections"])]
    diff = 0.0
    for r, g in zip(ref["windows"], got["windows"], strict=False):
        if len(r["detections"]) == len(g["detections"]):
            for x, y in zip(r["detections"], g["detections"], strict=True):
                diff = max(diff, *(abs(x[k] - y[k]) for k in ("x", "y", "w", "h", "score")))
    equal = equal and not differ
    Path(out).write_text(json.dumps({"equal": equal, "max_abs_diff": diff, "differing_windows": differ[:10]}))
    print(f"answer {'equals' if equal else 'DIFFERS FROM'} the reference (largest box/score difference {diff:.2g}"
          + (f"; windows starting at {differ[:5]} differ)" if differ else ")"))


def stream(url, sample, rest_file, repeat, out):
    """The sample's DAT records at the sensor's pace, repeated with shifted timestamps, over /v1/stream."""
    from websockets.sync.client import connect

    sample, repeat = Path(sample), int(repeat)
    rest_answer = json.loads(Path(rest_file).read_text())["answer"]
    raw = sample.read_bytes()
    pos, header = 0, {}
    while raw[pos:pos + 1] == b"%":  # the % header, then 2 type/size bytes
        end = raw.index(b"\n", pos) + 1
        words = raw[pos + 1:end].decode(errors="replace").split()
        if len(words) == 2 and words[0] in ("Width", "Height"):
            header[words[0].lower()] = int(words[1])
        pos = end
    records = np.frombuffer(raw[pos + 2:], dtype=[("t", "<u4"), ("w", "<u4")])
    window = rest_answer["window_us"]
    span = (int(records["t"][-1]) // window + 1) * window
    passes = []
    for k in range(repeat):
        shifted = records.copy()
        shifted["t"] += k * span
        passes.append(shifted)
    events = np.concatenate(passes)
    data = events.tobytes()
    # Messages of 10 ms of sensor time, each boundary moved 3 bytes so records are split across messages.
    ends = np.searchsorted(events["t"], np.arange(10_000, repeat * span + 10_000, 10_000))
    cuts = [0] + [min(int(e) * 8 + 3, len(data)) for e in ends[:-1]] + [len(data)]

    received, done, errors = [], threading.Event(), []

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
        threading.Thread(target=reader, args=(ws,), daemon=True).start()
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
    wall = time.perf_counter() - start
    assert not errors, errors
    wins = [m for _, m in received]
    assert wins, "no detection messages"
    for a, b in zip(wins, wins[1:], strict=False):
        assert b["t_start"] == a["t_end"] and a["t_end"] - a["t_start"] == window, (a["t_start"], b["t_start"])
    assert wins[0]["t_start"] == rest_answer["windows"][0]["t_start"], wins[0]["t_start"]
    assert wins[-1]["t_end"] >= int(events["t"][-1]), (wins[-1]["t_end"], int(events["t"][-1]))
    first = wins[:len(rest_answer["windows"])]
    mismatch = [w["t_start"] for w, r in zip(first, rest_answer["windows"], strict=True)
                if not same(w["detections"], r["detections"])]
    assert not mismatch, f"stream and REST differ in windows starting at {mismatch[:5]}"
    # Latency: from the moment the message completing a window was sent to that window's answer.
    lat = []
    for t, m in received:
        done_at = sent_at.get(((m["t_end"] + 9_999) // 10_000) * 10_000)
        if done_at is not None and t >= done_at:
            lat.append(t - done_at)
    lat = np.array(lat) * 1e3
    boxes = sum(len(w["detections"]) for w in wins)
    stats = {"messages": len(cuts) - 1, "bytes": len(data), "sensor_s": repeat * span / 1e6, "windows": len(wins),
             "boxes": boxes, "latency_ms_median": float(np.median(lat)),
             "latency_ms_p95": float(np.percentile(lat, 95)), "latency_ms_max": float(lat.max()), "wall_s": wall}
    Path(out).write_text(json.dumps(stats))
    print(f"WS /v1/stream: {len(data)} bytes in {len(cuts) - 1} messages at the sensor's pace ({repeat} x "
          f"{span / 1e6:g} s), {len(wins)} windows in order, {boxes} boxes; first pass identical to REST; "
          f"latency per window median {stats['latency_ms_median']:.0f} ms, p95 {stats['latency_ms_p95']:.0f} ms, "
          f"max {stats['latency_ms_max']:.0f} ms; {wall:.1f} s wall")


if __name__ == "__main__":
    {"rest": rest, "stream": stream, "compare": compare}[sys.argv[1]](*sys.argv[2:])
PY

# --- build, run and check each image --------------------------------------------------------------------------------
mkdir -p "$WORK/models" "$WORK/recordings" "$WORK/results"
cp models/weights/spquant-n.pt models/weights/spquant-n.spq "$WORK/models/"
cp "$SAMPLE" "$WORK/recordings/"
chmod a+r "$WORK"/models/* "$WORK"/recordings/*
chmod 777 "$WORK/recordings"
HARDEN=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --cpus 2 --memory 2g)
FAILED=()

mem_now() {  # the engine's view of container $1's memory, in MiB (podman/docker stats)
  "${CLI[@]}" stats --no-stream --format '{{.MemUsage}}' "$1" 2>/dev/null | head -n1 | "$PY" -c '
import re, sys
m = re.match(r"\s*([\d.]+)\s*([kKMG]i?B|B)", sys.stdin.read())
scale = {"B": 2**-20, "kB": 1e3 / 2**20, "KiB": 2**-10, "KB": 1e3 / 2**20, "MB": 1e6 / 2**20, "MiB": 1,
         "GB": 1e9 / 2**20, "GiB": 1024}
print(f"{float(m[1]) * scale[m[2]]:.0f}" if m else "nan")'
}

number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]] && echo "$1" || echo null; }  # for the JSON: nan/empty -> null

test_image() {
  local target=$1 arch stage tag ctr timeout emulated platform_run build_args=() serve_env=() predict_model=()
  arch=$(arch_of "$target")
  stage=$([ "$target" = full ] && echo full || echo edge)
  tag=spquant:test-docker-$target
  ctr=spquant-test-docker-$target-$$
  TAGS+=("$tag")
  emulated=$([ "$arch" = "$HOST_ARCH" ] && echo false || echo true)
  timeout=$([ "$emulated" = true ] && echo "$EMULATED_TIMEOUT" || echo 180)
  platform_run=(--platform "linux/$arch")
  local out=$WORK/results/$target
  mkdir -p "$out"

  if [ "$target" = full ]; then
    local torch_wheel vision_wheel wheel dest
    torch_wheel=${SPQUANT_TORCH_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)}
    if [ -n "$torch_wheel" ] && [ -f "$torch_wheel" ]; then
      build_args+=(--build-arg TORCH_SOURCE=wheel)
      vision_wheel=$(ls /opt/pypi-more/files/torchvision-"$TORCHVISION_VERSION"-*.whl 2>/dev/null | head -n1 || true)
      for wheel in "$torch_wheel" $vision_wheel; do
        dest=docker/wheels/$(basename "$wheel")
        if [ ! -e "$dest" ]; then
          cp -l "$wheel" "$dest" 2>/dev/null || cp "$wheel" "$dest"
          COPIED_WHEELS+=("$dest")
        fi
      done
      echo "torch: local wheel $(basename "$torch_wheel") (TORCH_SOURCE=wheel)"
    else
      echo "torch: PyTorch's CPU index (TORCH_SOURCE=index)"
    fi
    serve_env=(-e SPQUANT_MODEL=/models/spquant-n.pt)
  else
    predict_model=(--model /models/spquant-n.spq)
  fi

  log "$target: building $tag (--target $stage, linux/$arch$([ "$emulated" = true ] && echo ', emulated'))"
  local t0=$SECONDS
  "${BUILD[@]}" -f docker/Dockerfile --platform "linux/$arch" --target "$stage" -t "$tag" "${build_args[@]}" . \
    >"$out/build.log" 2>&1 || { tail -n 40 "$out/build.log"; die "$target: image build failed"; }
  local build_s=$((SECONDS - t0)) size compressed=null
  grep -E '^torch [0-9]|^model ' "$out/build.log" || true
  size=$("${CLI[@]}" image inspect --format '{{.Size}}' "$tag")
  [ "$("${CLI[@]}" image inspect --format '{{.Architecture}}' "$tag")" = "$arch" ] || die "$target: not an $arch image"
  if [ "$ENGINE" = podman ]; then  # gzip-compressed layers, as a registry stores and serves them
    "${CLI[@]}" save --quiet --format docker-dir --compress -o "$WORK/save-$target" "$tag"
    compressed=$(du -cb "$WORK/save-$target"/* | tail -n1 | cut -f1)
    rm -rf "$WORK/save-$target"
  fi
  echo "built in ${build_s} s; image $((size / 1000000)) MB$([ "$compressed" != null ] && echo ", $((compressed / 1000000)) MB compressed") (base $(($(base_bytes "$arch") / 1000000)) MB)"
  "${CLI[@]}" run --rm "${RUN_EXTRA[@]}" "${platform_run[@]}" --entrypoint sh "$tag" -c \
    'id; uname -m; cuda=$(grep -iE "^(nvidia-|triton|cuda-)" /opt/venv/spquant-freeze.txt | grep -iv "^nvidia-ml-py=" | tr "\n" " ");
     echo "CUDA wheels in the image: ${cuda:-none}";
     grep -iE "^(torch|torchvision|ultralytics-opencv-headless|opencv-python-headless|polars|numba|llvmlite|numpy|spquant)==" /opt/venv/spquant-freeze.txt | tr "\n" " "; echo;
     command -v gcc cc pip || echo "no compiler, no pip on PATH"; du -sh /opt/venv' \
    || die "$target: cannot run a shell in the image"
  # The venv's bytes and versions for the JSON (the image is the base plus, almost only, this venv).
  local venv_bytes versions
  venv_bytes=$("${CLI[@]}" run --rm "${RUN_EXTRA[@]}" "${platform_run[@]}" --entrypoint du "$tag" -sb /opt/venv | cut -f1)
  versions=$("${CLI[@]}" run --rm "${RUN_EXTRA[@]}" "${platform_run[@]}" --entrypoint cat "$tag" \
    /opt/venv/spquant-freeze.txt | "$PY" -c 'import json, sys
pins = dict(line.strip().lower().split("==", 1) for line in sys.stdin if "==" in line)
print(json.dumps({k: pins[k] for k in ("numpy", "numba", "llvmlite", "torch") if k in pins}))')

  local port url ready_s
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  log "$target: running $tag on 127.0.0.1:$port"
  CONTAINERS+=("$ctr")
  # Time to healthy: from `run` to the first 200 of /healthz, polled every 0.2 s (plus a container check), to 0.1 s.
  t0=$SECONDS
  local start_ns
  start_ns=$(date +%s%N)
  "${CLI[@]}" run -d --name "$ctr" "${RUN_EXTRA[@]}" "${platform_run[@]}" "${HARDEN[@]}" -p "127.0.0.1:$port:8000" \
    -v "$WORK/models:/models:ro" -v "$WORK/recordings:/recordings" "${serve_env[@]}" "$tag" >/dev/null \
    || die "$target: container did not start"
  until "$PY" -c "import urllib.request as r; r.urlopen('$url/healthz', timeout=2)" 2>/dev/null; do
    if [ "$("${CLI[@]}" inspect --format '{{.State.Running}}' "$ctr")" != true ]; then
      "${CLI[@]}" logs "$ctr" | tail -n 40; die "$target: container exited"
    fi
    if ((SECONDS - t0 > timeout)); then "${CLI[@]}" logs "$ctr" | tail -n 40; die "$target: not healthy within $timeout s"; fi
    sleep 0.2
  done
  ready_s=$("$PY" -c "print(round(($(date +%s%N) - $start_ns) / 1e9, 1))")
  "$PY" -c "import urllib.request as r; print('GET /healthz', r.urlopen('$url/healthz', timeout=5).read().decode())"
  echo "healthy $ready_s s after start"
  if [ "$ENGINE" = podman ]; then
    "${CLI[@]}" healthcheck run "$ctr" >/dev/null && echo "image HEALTHCHECK: healthy" || die "$target: image HEALTHCHECK failed"
  else
    local status
    for _ in $(seq 90); do
      status=$(docker inspect --format '{{.State.Health.Status}}' "$ctr")
      [ "$status" = healthy ] && break
      sleep 1
    done
    echo "image HEALTHCHECK: $status"; [ "$status" = healthy ] || die "$target: HEALTHCHECK status $status"
  fi

  log "$target: REST detection$([ "$emulated" = false ] && echo ' and WebSocket stream')"
  "$PY" "$WORK/client.py" rest "$url" "$SAMPLE" "$out/rest.json" "$timeout" \
    || { "${CLI[@]}" logs "$ctr" 2>&1 | tail -n 40; die "$target: REST check failed"; }
  local mem_idle=null mem_peak=null hwm=null predict_boxes=null
  if [ "$emulated" = false ]; then
    mem_idle=$(mem_now "$ctr")
    (while :; do mem_now "$ctr" >>"$out/mem.txt"; sleep 0.5; done) &
    local sampler=$!
    "$PY" "$WORK/client.py" stream "$url" "$SAMPLE" "$out/rest.json" "${SPQUANT_STREAM_REPEAT:-3}" "$out/stream.json" \
      || { kill "$sampler"; "${CLI[@]}" logs "$ctr" 2>&1 | tail -n 40; die "$target: stream check failed"; }
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    mem_peak=$(grep -v nan "$out/mem.txt" | sort -g | tail -n1 || true)
    hwm=$("${CLI[@]}" exec "$ctr" cat /proc/1/status | awk '$1 == "VmHWM:" {printf "%.0f", $2 / 1024}')
    mem_idle=$(number "$mem_idle") mem_peak=$(number "$mem_peak") hwm=$(number "$hwm")
    echo "container memory (${ENGINE} stats): idle ${mem_idle} MiB, under the stream peak ${mem_peak} MiB;" \
      "server process peak RSS (VmHWM) ${hwm} MiB incl. shared libraries"

    log "$target: spquant predict ${predict_model[*]:-(the bundled model)}, writing to the /recordings volume"
    CONTAINERS+=("$ctr-predict")
    "${CLI[@]}" run --rm --name "$ctr-predict" "${RUN_EXTRA[@]}" "${platform_run[@]}" "${HARDEN[@]}" \
      -v "$WORK/models:/models:ro" -v "$WORK/recordings:/recordings" "$tag" \
      spquant predict "/recordings/$(basename "$SAMPLE")" "${predict_model[@]}" --out "/recordings/dets-$target.npy" \
      2>"$out/predict.err" || { tail -n 20 "$out/predict.err"; die "$target: spquant predict failed"; }
    [ -s "$WORK/recordings/dets-$target.npy" ] || die "$target: spquant predict wrote nothing to /recordings"
    predict_boxes=$("$PY" -c "import numpy as np; print(len(np.load('$WORK/recordings/dets-$target.npy')))")
    echo "predict: $predict_boxes boxes in dets-$target.npy"
  fi
  if [ "$arch" = arm64 ]; then
    local reference=
    for candidate in edge-amd64 full; do
      [ -s "$WORK/results/$candidate/rest.json" ] && reference=$candidate && break
    done
    if [ -n "$reference" ]; then
      echo "$reference" >"$out/reference"
      "$PY" "$WORK/client.py" compare "$WORK/results/$reference/rest.json" "$out/rest.json" "$out/compare.json"
      "$PY" -c "import json, sys; sys.exit(not json.load(open('$out/compare.json'))['equal'])" \
        || FAILED+=("$target: REST answer differs from $reference's")
    else
      echo "no amd64 image in SPQUANT_DOCKER_TARGETS: nothing to compare the arm64 answer with"
    fi
  fi
  "${CLI[@]}" logs "$ctr" 2>&1 | grep -ciE 'traceback|error' | sed 's/^/server log lines with traceback|error: /' || true
  "${CLI[@]}" rm -f "$ctr" >/dev/null 2>&1 || true
  cat >"$out/image.json" <<EOF
{"target": "$stage", "platform": "linux/$arch", "emulated": $emulated, "size_bytes": $size,
 "compressed_bytes": $compressed, "base_bytes": $(base_bytes "$arch"), "venv_bytes": $(number "$venv_bytes"),
 "versions": ${versions:-null}, "build_s": $build_s, "healthy_s": $ready_s,
 "memory_mib": {"idle": $mem_idle, "stream_peak": $mem_peak, "server_peak_rss": $hwm}, "predict_boxes": $predict_boxes}
EOF
  if [ "${SPQUANT_DOCKER_KEEP_IMAGE:-0}" != 1 ]; then "${CLI[@]}" rmi -f "$tag" >/dev/null 2>&1 || true; fi
}

for target in "${TARGETS[@]}"; do test_image "$target"; done

# --- summary --------------------------------------------------------------------------------------------------------
log "summary"
"$PY" - "$WORK/results" "$RESULTS" "$ENGINE_VERSION" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "$(git status --porcelain 2>/dev/null | grep -q . && echo true || echo false)" "${TARGETS[@]}" <<'PY'
import datetime, json, os, platform, sys
from pathlib import Path

work, results, engine, commit, dirty, *targets = sys.argv[1:]
run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": commit,
       "git_dirty": dirty == "true", "container_engine": engine,
       "base": "python:3.11-slim" if engine.startswith("Docker") else
               "a debootstrap stand-in for python:3.11-slim (Debian bookworm, Python 3.11)",
       "host": {"platform": platform.platform(), "cpus": os.cpu_count()}}
images = {}
for target in targets:
    d = Path(work) / target
    image = json.loads((d / "image.json").read_text())
    image["memory_mib"] = {k: v for k, v in image["memory_mib"].items() if v is not None} or None
    rest = json.loads((d / "rest.json").read_text())
    image["runtime"] = rest["runtime"]  # the inference engine GET /v1/model names
    image["model"] = rest["model"]
    image["rest"] = {"seconds": rest["seconds"], "events": rest["answer"]["events"],
                     "windows": len(rest["answer"]["windows"]), "boxes": rest["boxes"]}
    if (d / "stream.json").is_file():
        image["stream"] = json.loads((d / "stream.json").read_text())
    if (d / "compare.json").is_file():
        image["equals_amd64"] = {"reference": (d / "reference").read_text().strip(),
                                 **json.loads((d / "compare.json").read_text())}
    images[target] = {k: v for k, v in image.items() if v is not None} | run
# Each image keeps the figures of the last run that tested it (with that run's date and commit).
path = Path(results)
previous = json.loads(path.read_text())["images"] if path.is_file() else {}
summary = {"what": "make test-docker (docker/test_docker.sh): images of docker/Dockerfile built, run hardened "
                   "(read-only root, tmpfs /tmp, no capabilities, 2 CPUs, 2 GiB) and checked",
           "sample": "data/samples/street_td.dat", "images": previous | images}
path.write_text(json.dumps(summary, indent=2) + "\n")


def mb(size):
    return f"{size / 1e6:.0f} MB" if size else "n/a"


print(f"{'image':<11} {'platform':<18} {'size':>7} {'gzip':>7} {'build':>6} {'healthy':>7} {'REST':>7} {'boxes':>5}  "
      "stream per window (median/p95)  engine")
for target, i in images.items():
    s = i.get("stream")
    lat = f"{s['latency_ms_median']:.0f}/{s['latency_ms_p95']:.0f} ms" if s else "-"
    print(f"{target:<11} {i['platform'] + (' (qemu)' if i['emulated'] else ''):<18} {mb(i['size_bytes']):>7} "
          f"{mb(i.get('compressed_bytes')):>7} {i['build_s']:>5}s {i['healthy_s']:>6}s {i['rest']['seconds']:>6.1f}s "
          f"{i['rest']['boxes']:>5}  {lat:<30} {i['runtime']}")
    if i.get("venv_bytes"):
        print(f"{'':<11} base {mb(i.get('base_bytes'))}, venv {mb(i['venv_bytes'])}; "
              + ", ".join(f"{k} {v}" for k, v in (i.get("versions") or {}).items()))
    if "equals_amd64" in i:
        e = i["equals_amd64"]
        print(f"{'':<11} REST answer {'equals' if e['equal'] else 'DIFFERS FROM'} {e['reference']}'s "
              f"(largest difference {e['max_abs_diff']:.2g})")
print(f"written to {results}")
PY
((${#FAILED[@]} == 0)) || die "$(printf '%s; ' "${FAILED[@]}")"
echo "test-docker: passed"

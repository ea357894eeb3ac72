"""Integer export: weight packing, fixed-point scales, the .spq file (round trip, checksum, versions), the CLI."""

import dataclasses
import hashlib
import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from app.cli import main
from models.inference.bundled import BUNDLED_EXPORT, default_model_path
from models.inference.export import export_model, fixed_point, fold
from models.inference.loading import load_model
from models.inference.runtime import Runtime
from models.inference.spq import (
    FORMAT,
    VERSION,
    ExportFormatError,
    decode_metadata,
    encode_metadata,
    pack_codes,
    read_spq,
    stored_nbytes,
    unpack_codes,
    write_spq,
)
from models.networks.checkpoint import CheckpointError, load_detector, save_checkpoint
from models.networks.detector import DetectorConfig, build_detector
from models.networks.quant import QuantConv2d
from tests.conftest import REPO
from tests.helpers import SAMPLE, TINY

PRUNED = REPO / "models" / "weights" / "spquant-n-pruned.pt"  # a 4-bit Detect head


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("spq") / "spquant-n.spq"
    export_model(load_detector(default_model_path()), path)
    return path


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_round_trip_at_every_bit_width(bits):
    top = 2 ** (bits - 1)
    codes = np.random.default_rng(bits).integers(-top + 1, top, size=1001).astype(np.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    assert np.array_equal(unpack_codes(packed, bits, codes.size), codes)
    with pytest.raises(ExportFormatError, match="do not fit"):
        pack_codes(np.array([top], dtype=np.int16), bits)


def test_fixed_point_rounds_like_exact_arithmetic():
    rng = np.random.default_rng(0)
    factor = np.concatenate([rng.uniform(-3, 3, 50) * 10.0 ** rng.integers(-6, 8, 50), [0.0]])
    offset = rng.uniform(-1e8, 1e8, factor.size)
    x = rng.integers(-20_000, 20_000, (200, factor.size))
    maps = fixed_point(factor, offset, np.full(factor.size, 20_000), "test")
    got = (x * maps["multiplier"] + maps["bias"]) >> maps["shift"]  # int64 numpy: exactly the runtime's arithmetic
    exact = x * factor + offset
    # The 31-bit multiplier adds at most |x|·|factor|·2^-31 to the half unit of rounding.
    assert np.all(np.abs(got - exact) <= 0.5 + np.abs(x * factor) * 2.0**-30 + 1e-6)
    wide = fixed_point(np.array([1.0]), np.array([0.0]), np.array([2.0**38]), "wide")  # fewer multiplier bits
    assert wide["multiplier"][0] == 2**21 and 2**38 * wide["multiplier"][0] < 2**61
    with pytest.raises(ExportFormatError, match="dynamic range"):
        fixed_point(np.array([1.0]), np.array([0.0]), np.array([2.0**50]), "too wide")
    with pytest.raises(ExportFormatError, match="non-finite"):
        fixed_point(np.array([np.nan]), np.array([0.0]), np.array([1.0]), "nan")


def test_round_trip_keeps_config_graph_and_tensors(exported):
    meta, tensors = read_spq(exported)
    model = load_detector(default_model_path())
    fresh_meta, fresh_tensors = fold(model)
    assert meta == json.loads(json.dumps(fresh_meta))
    assert DetectorConfig.from_dict(meta["detector"]) == model.config
    assert set(tensors) == set(fresh_tensors)
    for name, value in fresh_tensors.items():
        assert tensors[name].dtype == value.dtype and np.array_equal(tensors[name], value), name
    # conv weights are packed: 4-bit layers take half a byte per weight, the first layer (8-bit) one byte
    stem = model.backbone.stem1.conv_bn.conv.weight
    assert tensors["backbone.stem1.conv_bn.weight"].size == stem.numel()
    conv1 = model.backbone.stages[0][0].conv1.conv.weight
    assert tensors["backbone.stages.0.0.conv1.weight"].size == conv1.numel() // 2
    nodes = {node["name"]: node for node in meta["graph"]}
    assert nodes["backbone.stages.0.0.conv1"]["attrs"]["bits"] == 4
    assert [n["name"] for n in meta["graph"]] == [n.name for n in model.graph]  # the model's graph, node by node


def test_a_fake_quantized_head_is_stored_as_packed_codes_and_scales(tmp_path):
    model = load_detector(PRUNED)
    bits = model.config.head_bits
    assert bits == 4
    meta, tensors = fold(model)
    convs = {f"{n}.weight": m for n, m in model.head.named_modules() if isinstance(m, QuantConv2d)}
    (head,) = [node for node in meta["graph"] if node["kind"] == "detect"]
    head_weights = head["attrs"]["head_weights"]
    assert convs and set(head_weights) == set(convs)
    saved = 0  # bytes below float32 weights
    for key, conv in convs.items():
        n, channels = conv.weight.numel(), conv.weight.shape[0]
        assert head_weights[key] == {"shape": list(conv.weight.shape), "bits": bits}
        packed, scale = tensors[f"head.{key}"], tensors[f"head.{key.removesuffix('.weight')}.scale"]
        assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
        assert scale.dtype == np.float32 and scale.shape == (channels,)
        saved += 4 * n - packed.size - 4 * channels
    others = {k[5:]: v.dtype for k, v in tensors.items()  # BN and biases
              if k.startswith("head.") and k[5:] not in convs and not k.endswith((".scale", "num_batches_tracked"))}
    assert set(others.values()) == {np.dtype(np.float32)} and any(k.endswith("bn.running_var") for k in others)
    # the same weights with a float head (head_bits 32) take the float32 weights: the file is `saved` bytes larger,
    # less the packed file's longer header (head_weights and the scales' entries)
    float_head = build_detector(dataclasses.replace(model.config, head_bits=32))
    float_head.load_state_dict(model.state_dict())
    packed_size = export_model(model, tmp_path / "packed.spq").stat().st_size
    float_size = export_model(float_head.eval(), tmp_path / "float.spq").stat().st_size
    assert saved > 100_000 and saved - 8192 < float_size - packed_size <= saved


def test_file_is_readable_by_safetensors(exported):
    safetensors = pytest.importorskip("safetensors.numpy")
    loaded = safetensors.load_file(str(exported))  # one flat tensor per stored dtype (see models.inference.spq)
    _, tensors = read_spq(exported)
    assert set(loaded) <= {"U8", "I8", "U16", "I16", "U32", "I32", "I64", "F32"}
    assert sum(v.nbytes for v in loaded.values()) == stored_nbytes(tensors)


def _rewrite_header(path, out, edit):
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    edit(header)
    raw = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + size:])
    return out


def test_corrupt_truncated_foreign_and_future_files_are_refused(exported, tmp_path):
    blob = bytearray(exported.read_bytes())
    blob[-100] ^= 0x01  # one bit of a tensor
    (tmp_path / "flipped.spq").write_bytes(bytes(blob))
    with pytest.raises(ExportFormatError, match="checksum"):
        Runtime.load(tmp_path / "flipped.spq")
    (tmp_path / "short.spq").write_bytes(exported.read_bytes()[:1000])
    with pytest.raises(ExportFormatError, match=r"truncated|not a spquant"):
        Runtime.load(tmp_path / "short.spq")

    def future(header):
        header["__metadata__"]["version"] = "99"

    with pytest.raises(ExportFormatError, match="version 99"):
        Runtime.load(_rewrite_header(exported, tmp_path / "future.spq", future))

    def old(header):
        header["__metadata__"]["version"] = "1"  # version 1 stored a fake-quantized head as raw float32 weights

    with pytest.raises(ExportFormatError, match=f"version 1; this spquant reads version {VERSION} .*re-export"):
        Runtime.load(_rewrite_header(exported, tmp_path / "old.spq", old))

    def before_the_graph(header):
        header["__metadata__"]["version"] = "2"  # version 2 had per-layer tables instead of the layer graph

    with pytest.raises(ExportFormatError, match=f"version 2; this spquant reads version {VERSION} .*re-export"):
        Runtime.load(_rewrite_header(exported, tmp_path / "v2.spq", before_the_graph))


@pytest.mark.parametrize(("change", "message"), [
    (lambda graph: graph[3].update(kind="mask"), "unknown kind 'mask'"),
    (lambda graph: graph[3].update(inputs=["nowhere"]), r"reads \['nowhere'\]"),
    (lambda graph: graph.pop(1), "not defined before it"),
    (lambda graph: graph[1]["attrs"].pop("output"), "KeyError"),
])
def test_a_malformed_graph_is_refused_with_the_node_named(exported, tmp_path, change, message):
    data = exported.read_bytes()[8 + struct.unpack("<Q", exported.read_bytes()[:8])[0]:]

    def edit(header):
        metadata = header["__metadata__"]
        meta = decode_metadata(metadata["spquant"])
        change(meta["graph"])
        metadata["spquant"] = encode_metadata(meta)
        del metadata["sha256"]  # re-signed, so that the graph check (not the checksum) refuses the file
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        metadata["sha256"] = hashlib.sha256(canonical + data).hexdigest()

    with pytest.raises(ExportFormatError, match=f"inconsistent integer model .*{message}"):
        Runtime.load(_rewrite_header(exported, tmp_path / "bad.spq", edit))

    def foreign(header):
        header["__metadata__"]["format"] = "something-else"

    with pytest.raises(ExportFormatError, match="not a spquant integer model"):
        Runtime.load(_rewrite_header(exported, tmp_path / "foreign.spq", foreign))

    def config_edit(header):
        meta = decode_metadata(header["__metadata__"]["spquant"])
        meta["detector"]["bins"] = 3
        header["__metadata__"]["spquant"] = encode_metadata(meta)

    with pytest.raises(ExportFormatError, match="checksum"):
        Runtime.load(_rewrite_header(exported, tmp_path / "edited.spq", config_edit))


def test_load_model_dispatches_on_content(exported, tmp_path):
    assert isinstance(load_model(exported), Runtime)
    renamed = tmp_path / "model.pt"  # the name does not matter, the content does
    renamed.write_bytes(exported.read_bytes())
    assert isinstance(load_model(renamed), Runtime)
    checkpoint = save_checkpoint(tmp_path / "tiny.spq", build_detector(DetectorConfig(**TINY)))
    assert not isinstance(load_model(checkpoint), Runtime)
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.spq")


def test_baseline_models_cannot_be_exported(tmp_path):
    model = build_detector(DetectorConfig(variant="baseline", **TINY)).eval()
    with pytest.raises(ExportFormatError, match="spquant"):
        export_model(model, tmp_path / "b.spq")


def test_write_spq_refuses_unsupported_dtypes(tmp_path):
    with pytest.raises(ExportFormatError, match="dtype"):
        write_spq(tmp_path / "x.spq", {}, {"x": np.zeros(2, dtype=np.complex64)})
    write_spq(tmp_path / "ok.spq", {"a": 1}, {"x": np.arange(3, dtype=np.int32)})
    meta, tensors = read_spq(tmp_path / "ok.spq")
    assert meta == {"a": 1} and tensors["x"].tolist() == [0, 1, 2] and tensors["x"].dtype == np.int32
    blob = (tmp_path / "ok.spq").read_bytes()
    header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])  # a plain JSON header
    assert header["__metadata__"]["format"] == FORMAT and header["U8"]["dtype"] == "U8"  # stored narrow


def test_cli_export_then_predict_and_eval_with_the_exported_model(tmp_path, capsys):
    out = tmp_path / "m.spq"
    onnx = ["--onnx", str(tmp_path / "m.onnx")] if importlib.util.find_spec("onnx") else []
    assert main(["export", "--out", str(out), *onnx]) == 0
    assert "state per stream" in capsys.readouterr().out
    assert not onnx or (tmp_path / "m.onnx").stat().st_size > 100_000
    assert main(["export", "--model", str(out), "--out", str(tmp_path / "again.spq")]) == 2
    assert "already an exported" in capsys.readouterr().err
    dets = {}
    for name, model in (("pt", str(default_model_path())), ("spq", str(out))):
        target = tmp_path / f"{name}.npy"
        assert main(["predict", str(SAMPLE), "--model", model, "--out", str(target)]) == 0
        dets[name] = np.load(target)
    assert len(dets["pt"]) > 0
    for field in ("t", "class_id"):
        assert np.array_equal(dets["pt"][field], dets["spq"][field]), field
    for field in ("x", "y", "w", "h"):  # the runtime's fused Detect head: equal to float32 rounding
        assert np.allclose(dets["pt"][field], dets["spq"][field], rtol=0, atol=1e-3), field
    assert np.abs(dets["pt"]["class_confidence"] - dets["spq"]["class_confidence"]).max() <= 1e-6
    (tmp_path / "bad.spq").write_bytes(out.read_bytes()[:-10])
    assert main(["predict", str(SAMPLE), "--model", str(tmp_path / "bad.spq"), "--out",
                 str(tmp_path / "x.npy")]) == 2
    assert "checksum" in capsys.readouterr().err


def test_torch_state_is_untouched_by_export():
    model = load_detector(default_model_path())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_bundled_export_is_the_export_of_the_bundled_checkpoint():
    """models/weights/spquant-n.spq (what a machine without torch serves) must follow spquant-n.pt."""
    meta, tensors = read_spq(BUNDLED_EXPORT)
    fresh_meta, fresh_tensors = fold(load_detector(default_model_path()))
    assert meta == json.loads(json.dumps(fresh_meta))
    assert set(tensors) == set(fresh_tensors)
    assert all(np.array_equal(tensors[k], v) for k, v in fresh_tensors.items())

"""The ``.spq`` container (version 4): integers at their narrowest dtype and widened on read, one safetensors tensor
per stored dtype, a compressed and checksummed header, other versions refused; the shipped files' size against the
ideal packed weights."""

import hashlib
import itertools
import json
import os
import struct

import numpy as np
import pytest

from models.compress.accounting import memory
from models.inference.bundled import BUNDLED_EXPORT, default_model_path
from models.inference.export import export_model
from models.inference.spq import (
    VERSION,
    ExportFormatError,
    decode_metadata,
    encode_metadata,
    header_nbytes,
    narrowest_dtype,
    read_spq,
    stored_nbytes,
    write_spq,
)
from models.networks.checkpoint import load_detector
from tests.conftest import REPO

HEADER_ALLOWANCE = 8192  # bytes: the stated fixed allowance for the header (and whatever else is not weights)
PRUNED = REPO / "models" / "weights" / "spquant-n-pruned.pt"

TENSORS = {  # name: (array, the dtype it must be stored as)
    "map.shift": (np.array([8, 17, 32], dtype=np.int64), "U8"),
    "map.multiplier": (np.array([2**30, 2**31 - 1, 0], dtype=np.int64), "U32"),
    "map.bias": (np.array([-(2**40), 5, 2**33], dtype=np.int64), "I64"),
    "small.signed": (np.array([[-3, 1], [0, 2]], dtype=np.int64), "I8"),
    "wide.unsigned": (np.array([0, 60_000], dtype=np.int32), "U16"),
    "wide.signed": (np.array([-20_000, 30_000], dtype=np.int64), "I16"),
    "int32.signed": (np.array([-(2**31), 7], dtype=np.int64), "I32"),
    "codes": (np.array([0, 255, 17], dtype=np.uint8), "U8"),
    "int8.positive": (np.array([1, 2], dtype=np.int8), "U8"),
    "scalar": (np.array(12, dtype=np.int64), "U8"),
    "empty": (np.zeros((0, 3), dtype=np.int64), "I64"),
    "float": (np.array([1.5, -2.25], dtype=np.float32), "F32"),
}


CODES = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32, "I32": np.int32,
         "I64": np.int64, "F32": np.float32}


def _header(path):
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + size]), blob[8 + size:]


def _rewrite(path, out, edit, resign=False):
    header, data = _header(path)
    edit(header)
    if resign:
        metadata = header["__metadata__"]
        del metadata["sha256"]
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        metadata["sha256"] = hashlib.sha256(canonical + data).hexdigest()
    raw = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return out


@pytest.fixture
def written(tmp_path):
    return write_spq(tmp_path / "t.spq", {"graph": [1, 2]}, {k: v for k, (v, _) in TENSORS.items()})


@pytest.mark.parametrize(("name", "case"), TENSORS.items())
def test_narrowest_dtype_holds_the_values_in_the_fewest_bytes(name, case):
    array, stored = case
    assert narrowest_dtype(array) == np.dtype(CODES[stored]), name


def test_round_trip_keeps_values_and_widens_to_the_written_dtypes(written):
    meta, tensors = read_spq(written)
    assert meta == {"graph": [1, 2]} and set(tensors) == set(TENSORS)
    assert written.stat().st_mode & 0o044 == 0o044  # readable by the user a service runs as, not just its writer
    for name, (array, _) in TENSORS.items():
        got = tensors[name]
        assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array), name
        assert got.flags.writeable  # a copy of its own: a runtime may keep or modify it
    header, data = _header(written)
    stored = {name: code for name, (_, code) in TENSORS.items()}
    index = decode_metadata(header["__metadata__"]["tensors"])
    assert {code for code in header if code != "__metadata__"} == set(index) == set(stored.values())
    for code, entries in index.items():
        assert {entry[0] for entry in entries} == {name for name, c in stored.items() if c == code}
    assert len(data) == stored_nbytes(tensors) == sum(a.size * narrowest_dtype(a).itemsize for a, _ in TENSORS.values())


def test_the_file_is_safetensors_with_one_tensor_per_stored_dtype(written):
    safetensors = pytest.importorskip("safetensors.numpy")
    loaded = safetensors.load_file(str(written))
    _, tensors = read_spq(written)
    index = decode_metadata(_header(written)[0]["__metadata__"]["tensors"])
    assert set(loaded) == set(index)
    for code, entries in index.items():
        expected = [tensors[name].ravel().astype(loaded[code].dtype) for name, *_ in entries]
        assert np.array_equal(loaded[code], np.concatenate(expected)), code
    blobs = {key: info for key, info in _header(written)[0].items() if key != "__metadata__"}
    offsets = sorted(info["data_offsets"] for info in blobs.values())
    for (_, end), (begin, _) in itertools.pairwise(offsets):  # contiguous
        assert end == begin
    assert header_nbytes(written) % 8 == 0  # the data starts 8-aligned, and so does every blob within its itemsize
    assert all(info["data_offsets"][0] % np.dtype(CODES[code]).itemsize == 0 for code, info in blobs.items())


def test_metadata_is_compressed_json():
    value = {"graph": [{"name": f"backbone.stage.{i}", "kind": "conv", "attrs": {"bits": 4}} for i in range(100)]}
    text = encode_metadata(value)
    assert decode_metadata(text) == value and len(text) < len(json.dumps(value)) / 10
    with pytest.raises(ValueError, match="not an encoded metadata"):
        decode_metadata("{not base64}")


def test_other_versions_are_refused_with_a_hint(written, tmp_path):
    for version, hint in ((VERSION - 1, "re-export it from its checkpoint"), (VERSION + 1, "newer spquant")):
        path = _rewrite(written, tmp_path / f"v{version}.spq",
                        lambda header, v=version: header["__metadata__"].update(version=str(v)))
        expected = f"version {version}; this spquant reads version {VERSION} .*{hint}"
        with pytest.raises(ExportFormatError, match=expected):
            read_spq(path)


def test_corrupt_and_inconsistent_files_are_refused(written, tmp_path):
    blob = bytearray(written.read_bytes())
    blob[-3] ^= 0x01
    (tmp_path / "flipped.spq").write_bytes(bytes(blob))
    with pytest.raises(ExportFormatError, match="checksum"):
        read_spq(tmp_path / "flipped.spq")

    def drop_a_tensor(header):
        index = decode_metadata(header["__metadata__"]["tensors"])
        index["I64"].pop()
        header["__metadata__"]["tensors"] = encode_metadata(index)

    with pytest.raises(ExportFormatError, match=r"inconsistent integer model .*no tensor claims"):
        read_spq(_rewrite(written, tmp_path / "short-index.spq", drop_a_tensor, resign=True))

    def plain_json(header):
        header["__metadata__"]["spquant"] = json.dumps({"graph": [1, 2]})

    with pytest.raises(ExportFormatError, match="inconsistent integer model"):
        read_spq(_rewrite(written, tmp_path / "plain.spq", plain_json, resign=True))


def test_unsupported_dtypes_are_refused(tmp_path):
    for array in (np.zeros(2, dtype=np.complex64), np.zeros(2, dtype=np.uint64), np.zeros(2, dtype=bool)):
        with pytest.raises(ExportFormatError, match="dtype"):
            write_spq(tmp_path / "x.spq", {}, {"x": array})


def test_the_bundled_export_stores_maps_narrow_and_reads_them_as_int64():
    header, _ = _header(BUNDLED_EXPORT)
    assert header["__metadata__"]["version"] == str(VERSION)
    assert len(header) <= 9  # the metadata and at most one tensor per dtype, whatever the number of layers
    stored = {entry[0]: code for code, entries in decode_metadata(header["__metadata__"]["tensors"]).items()
              for entry in entries}
    _, tensors = read_spq(BUNDLED_EXPORT)
    name = "backbone.stages.0.0.conv1"
    assert (stored[f"{name}.shift"], stored[f"{name}.multiplier"]) == ("U8", "U32")
    assert all(tensors[f"{name}.{k}"].dtype == np.int64 for k in ("shift", "multiplier", "bias"))


@pytest.mark.parametrize("checkpoint", [default_model_path(), PRUNED], ids=["spquant-n", "spquant-n-pruned"])
def test_shipped_files_are_within_ten_percent_of_the_ideal_weights_plus_the_header_allowance(checkpoint, tmp_path):
    model = load_detector(checkpoint)
    path = export_model(model, tmp_path / "m.spq")
    ideal = memory(model)["weight_bytes"]  # every conv packed at its bits, the head at head_bits, the rest FP32
    assert header_nbytes(path) <= HEADER_ALLOWANCE
    assert os.path.getsize(path) <= 1.10 * ideal + HEADER_ALLOWANCE

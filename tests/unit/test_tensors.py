"""numpy <-> torch layout and dtype rules (no JVM)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

from ijtorch.models._tensors import TORCH_DTYPES, numpy_to_torch, torch_to_numpy  # noqa: E402


@pytest.mark.parametrize("axes,shape,expected", [
    ("YX", (5, 7), (1, 1, 5, 7)),
    ("CYX", (3, 5, 7), (1, 3, 5, 7)),
    ("TYX", (4, 5, 7), (4, 1, 5, 7)),
    ("TCYX", (4, 3, 5, 7), (4, 3, 5, 7)),
    ("YXC", (5, 7, 3), (1, 3, 5, 7)),
    ("YXS", (5, 7, 3), (1, 3, 5, 7)),
    ("ZYX", (2, 5, 7), (1, 1, 2, 5, 7)),
    ("TZCYX", (4, 2, 3, 5, 7), (4, 3, 2, 5, 7)),
    ("XZCTY", (7, 2, 3, 4, 5), (4, 3, 2, 5, 7)),
])
def test_layout_and_values(rng, axes, shape, expected):
    data = rng.normal(size=shape).astype(np.float32)
    t = numpy_to_torch(data, axes)
    assert tuple(t.shape) == expected and t.dtype == torch.float32 and t.is_contiguous()
    # every element lands where the letters say: compare against an explicit index mapping
    letters = dict(zip(axes, range(len(axes))))
    ch = "C" if "C" in axes else ("S" if "S" in axes else None)
    for flat in rng.integers(0, data.size, 20):
        idx = np.unravel_index(flat, shape)
        pos = [idx[letters["T"]] if "T" in letters else 0, idx[letters[ch]] if ch else 0]
        if "Z" in letters:
            pos.append(idx[letters["Z"]])
        pos += [idx[letters["Y"]], idx[letters["X"]]]
        assert t[tuple(pos)].item() == data[idx]
    back = torch_to_numpy(t, axes)
    np.testing.assert_array_equal(back, data)
    assert back.flags.c_contiguous


@pytest.mark.parametrize("view", ["F", "step", "transpose", "negative"])
def test_non_contiguous_input(rng, view):
    base = rng.integers(0, 1000, (6, 8, 10)).astype(np.int16)
    data, axes = {
        "F": (np.asfortranarray(base), "ZYX"),
        "step": (base[::2, 1::2, ::3], "ZYX"),
        "transpose": (base.transpose(2, 0, 1), "XZY"),
        "negative": (base[::-1, :, ::-1], "ZYX"),
    }[view]
    t = numpy_to_torch(data, axes)
    np.testing.assert_array_equal(torch_to_numpy(t, axes), data)


@pytest.mark.parametrize("np_name,torch_name", sorted(TORCH_DTYPES.items()))
def test_dtype_table(np_name, torch_name):
    dt = np.dtype(np_name)
    if dt.kind == "b":
        data = np.array([[True, False]])
    elif dt.kind == "f":
        data = np.array([[np.finfo(dt).min, np.finfo(dt).max, -0.5, np.nan, np.inf]], dt)
    else:
        info = np.iinfo(dt)
        hi = min(int(info.max), 2 ** 63 - 1)
        data = np.array([[info.min, hi, 1]], dt)
    t = numpy_to_torch(data, "YX")
    assert t.dtype == getattr(torch, torch_name)
    back = torch_to_numpy(t, "YX")
    assert back.dtype == np.dtype(torch_name)
    np.testing.assert_array_equal(back, data)  # values never rescaled


def test_explicit_dtype_and_device():
    data = np.array([[0, 65535]], np.uint16)
    t = numpy_to_torch(data, "YX", dtype=torch.float32, device=torch.device("cpu"))
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    assert t.flatten().tolist() == [0.0, 65535.0]


def test_outputs_share_no_memory(rng):
    data = rng.normal(size=(5, 7)).astype(np.float32)  # no reordering, no cast needed
    t = numpy_to_torch(data, "YX")
    t.add_(1)
    assert not np.array_equal(t[0, 0].numpy(), data)
    out = torch_to_numpy(t, "YX")
    t.zero_()
    assert out.any()


def test_torch_to_numpy_other_tensors(rng):
    t = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = torch_to_numpy(t * 2, "TCYX")
    np.testing.assert_array_equal(out, (t * 2).detach().numpy())
    bf = torch.tensor([[[[1.5, -2.0]]]], dtype=torch.bfloat16)
    b = torch_to_numpy(bf, "YX")
    assert b.dtype == np.float32 and b.tolist() == [[1.5, -2.0]]
    # network outputs may have other spatial sizes / channel counts than the input
    seg = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(1, 3, 4, 6)
    np.testing.assert_array_equal(torch_to_numpy(seg, "YXC"), seg[0].permute(1, 2, 0).numpy())


def test_errors():
    with pytest.raises(ValueError, match="unknown axis letters"):
        numpy_to_torch(np.zeros((2, 2, 2)), "QYX")
    with pytest.raises(ValueError, match="has 2 letters but the array has 3"):
        numpy_to_torch(np.zeros((2, 2, 2)), "YX")
    with pytest.raises(ValueError, match="C and S both present"):
        numpy_to_torch(np.zeros((2, 2, 2, 3), np.uint8), "CYXS")
    with pytest.raises(ValueError, match="uint64 value 18446744073709551615 does not fit torch.int64"):
        numpy_to_torch(np.array([[2 ** 64 - 1]], np.uint64), "YX")
    with pytest.raises(ValueError, match="complex128 has no torch equivalent"):
        numpy_to_torch(np.zeros((2, 2), complex), "YX")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        numpy_to_torch(np.zeros((2, 2)), "YX", dtype=np.float32)
    with pytest.raises(TypeError, match="data must be a numpy array"):
        numpy_to_torch([[1.0]], "YX")
    with pytest.raises(ValueError, match=r"needs a 5-D tensor \(N, C, D, H, W\)"):
        torch_to_numpy(torch.zeros(1, 1, 2, 2), "ZYX")
    with pytest.raises(ValueError, match="batch size N=2 but axes='CYX' has no T"):
        torch_to_numpy(torch.zeros(2, 1, 2, 2), "CYX")
    with pytest.raises(ValueError, match="3 channels but axes='YX' has no C"):
        torch_to_numpy(torch.zeros(1, 3, 2, 2), "YX")
    with pytest.raises(ValueError, match=r"asks for RGB samples \(S = 3\)"):
        torch_to_numpy(torch.zeros(1, 4, 2, 2), "YXS")
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        torch_to_numpy(np.zeros((1, 1, 2, 2)), "YX")


def test_import_is_lazy():
    code = ("import sys, ijtorch.models._tensors; "
            "assert 'torch' not in sys.modules and 'jpype' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)

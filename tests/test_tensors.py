"""Models' tensor signatures and data as .npz: what is accepted, and every way a file can be wrong,
as one line naming the file, the array and the fix."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgeq.errors import EdgeqError
from edgeq.tensors import open_npz, signature_of


class Tagger(nn.Module):
    """Token ids, a float mask and a recurrent state in (a text model's kind of signature)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.cell = nn.GRUCell(8, 8)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x = (self.embed(tokens) * mask.unsqueeze(-1)).mean(1)
        return self.cell(x, state)

    @staticmethod
    def example_inputs():
        return torch.zeros(1, 12, dtype=torch.long), torch.ones(1, 12), torch.zeros(1, 8)


SIGNATURE = signature_of(Tagger(), Tagger.example_inputs(), "tagger.py:Tagger", {"tokens": {1: 32}, "mask": {1: 32}})


def _good(n: int = 5, length: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"tokens": rng.integers(0, 100, (n, length)).astype(np.int64), "mask": np.ones((n, length), np.float32),
            "state": np.zeros((n, 8), np.float32)}


def test_the_signature_names_each_forward_parameter_with_its_dtype_and_bounds():
    assert [s.describe() for s in SIGNATURE.inputs] == ["tokens: int64[N, ≤32]", "mask: float32[N, ≤32]",
                                                       "state: float32[N, 8]"]


def test_an_npz_in_the_signature_reads_in_forward_order_with_its_labels(tmp_path):
    arrays = _good(length=20)  # a dynamic axis takes any length up to its bound
    path = tmp_path / "data.npz"
    np.savez(path, state=arrays["state"], mask=arrays["mask"], tokens=arrays["tokens"], labels=np.arange(5))
    data = open_npz(path, SIGNATURE, "--eval-data")
    assert len(data) == 5 and list(data.arrays) == ["tokens", "mask", "state"]
    tokens, mask, state = data.batch([1, 3])
    assert tokens.shape == (2, 20) and (tokens == arrays["tokens"][[1, 3]]).all() and list(data.labels) == list(range(5))


@pytest.mark.parametrize("edit, needle", [
    (lambda a: a.pop("mask"), "lacks mask: the model takes tokens: int64[N, ≤32], mask: float32[N, ≤32]"),
    (lambda a: a.update(extra=np.zeros((5, 2))), "has extra, which is not a forward parameter"),
    (lambda a: a.update(tokens=a["tokens"].astype(np.int32)), "tokens is int32, the model takes int64: save it with .astype(numpy.int64)"),
    (lambda a: a.update(state=np.zeros((5, 9), np.float32)), "state has shape (5, 9), the model takes state: float32[N, 8]"),
    (lambda a: a.update(tokens=np.zeros((5, 40), np.int64), mask=np.ones((5, 40), np.float32)), "tokens has shape (5, 40)"),
    (lambda a: a["mask"].__setitem__((3, 0), np.nan), "mask holds NaN or infinite values (sample 3)"),
    (lambda a: a.update(state=np.zeros((4, 8), np.float32)), "every array needs the same number of samples"),
    (lambda a: a.update(labels=np.arange(4)), "labels must be 5 whole numbers"),
    (lambda a: a.update(labels=np.full(5, 0.5)), "labels must be 5 whole numbers"),
    (lambda a: a.update(labels=np.full(5, -1)), "labels hold a negative class (-1)"),
])
def test_each_way_an_npz_is_wrong_is_one_line(tmp_path, edit, needle):
    arrays = _good()
    edit(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(EdgeqError) as e:
        open_npz(path, SIGNATURE, "--calib-data")
    assert needle in str(e.value) and str(e.value).startswith(f"--calib-data {path}") and "\n" not in str(e.value)


def test_an_empty_a_damaged_a_pickled_or_a_missing_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **_good())
    damaged.write_bytes(damaged.read_bytes()[:200])
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, tokens=np.array([{"a": 1}], dtype=object))
    for path, needle in [(empty, "is empty"), (damaged, "is not a readable .npz archive"),
                         (pickled, "cannot read without pickle"), (tmp_path / "nope.npz", "does not exist"),
                         (tmp_path, "does not exist")]:
        with pytest.raises(EdgeqError) as e:
            open_npz(path, SIGNATURE, "--eval-data")
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert zipfile.is_zipfile(empty)  # an empty archive is a valid zip: refused for holding nothing


def test_a_signature_that_does_not_fit_forward_is_refused():
    with pytest.raises(EdgeqError, match="gives 4 tensors but forward takes 3"):
        signature_of(Tagger(), (*Tagger.example_inputs(), torch.zeros(1)), "t")
    with pytest.raises(EdgeqError, match="give each example a batch of one"):
        signature_of(Tagger(), (torch.zeros(2, 12, dtype=torch.long), torch.ones(2, 12), torch.zeros(2, 8)), "t")
    with pytest.raises(EdgeqError, match="'lengths', which is not a forward parameter"):
        signature_of(Tagger(), Tagger.example_inputs(), "t", {"lengths": {1: 4}})
    with pytest.raises(EdgeqError, match="dynamic axis 1 of tokens"):
        signature_of(Tagger(), Tagger.example_inputs(), "t", {"tokens": {1: 4}})
    with pytest.raises(EdgeqError, match=r"dynamic axes must be one length.*12 \(≤16\), 12 \(≤32\)"):
        signature_of(Tagger(), Tagger.example_inputs(), "t", {"tokens": {1: 32}, "mask": {1: 16}})
    short = (torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), torch.zeros(1, 8))
    with pytest.raises(EdgeqError, match="the example's dynamic length is 1, which torch.export fixes"):
        signature_of(Tagger(), short, "t", {"tokens": {1: 32}, "mask": {1: 32}})


def test_a_dynamic_length_is_checked_cut_and_repeated_on_every_input_that_has_it():
    arrays = _good(n=2, length=5)
    x = tuple(arrays.values())
    assert SIGNATURE.max_length == 32 and SIGNATURE.data_length(x) == 5
    assert SIGNATURE.lengths_checked(5) == [1, 32] and SIGNATURE.lengths_checked(32) == [1]
    short, long = SIGNATURE.at_length(x, 2), SIGNATURE.at_length(x, 12)
    assert short[0].shape == (2, 2) and (short[0] == x[0][:, :2]).all() and (short[2] == x[2]).all()
    assert long[1].shape == (2, 12) and (long[0][:, 5:10] == x[0]).all() and long[2].shape == (2, 8)
    fixed = signature_of(Tagger(), Tagger.example_inputs(), "t")
    assert fixed.max_length is None and fixed.lengths_checked(12) == []


def test_an_example_gives_torch_export_one_length_shared_by_its_inputs():
    from edgeq.tensors import Example

    example = Example(Tagger.example_inputs(), tuple(s.dynamic for s in SIGNATURE.inputs))
    batch = torch.export.Dim("batch", min=1, max=8)
    tokens, mask, state = example.dynamic_shapes(batch)
    assert tokens[1] is mask[1] and tokens[0] is batch and state == {0: batch}
    assert Example(Tagger.example_inputs()).dynamic_shapes() is None
    program = torch.export.export(Tagger().eval(), tuple(example), dynamic_shapes=example.dynamic_shapes())
    assert program.module()(torch.zeros(1, 30, dtype=torch.long), torch.ones(1, 30), torch.zeros(1, 8)).shape == (1, 8)

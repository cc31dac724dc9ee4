"""Int8 embedding tables for dynamic int8: weight only, one scale per row (a row is a token's vector,
and rows differ in range by 10× and more in real vocabularies, so one scale for the table costs
3.6-7.6 dB where a scale per row costs nothing measurable). A lookup needs no activation
quantization, and a text model's vocabulary is often half its weights or more.

One table, a runtime each:
- .pte: ExecuTorch's `quantized_decomposed.embedding_byte` (its quantized kernels library, which the
  native runner links; the lookup runs outside the XNNPACK delegate, as the float one does);
- .onnx: Gather of the int8 table, Cast to float, times the Gather of the row scales (standard ops,
  any runtime);
- .ptl: torch.ao's quantized Embedding (`float_qparams_weight_only_qconfig`: uint8 rows with a float
  scale and offset each, the lite interpreter's `quantized::embedding_byte`).
A table the float plan names stays float in every format.
"""

from __future__ import annotations

import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn


def tables(model: nn.Module, float_layers: tuple[str, ...] = ()) -> list[str]:
    """The nn.Embedding modules that become int8: all but those the plan keeps float and those whose
    lookup rewrites the table (max_norm renormalises rows in place)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and m.max_norm is None and name not in float_layers]


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 table, float32 scale per row); a row of zeros keeps scale 1."""
    weight = weight.detach().float()
    peak = weight.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Embedding(nn.Module):
    """An embedding lookup of an int8 table through ExecuTorch's embedding_byte (the .pte's form)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401 - defines embedding_byte

        weight, scale = int8_rows(embedding.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.embedding_byte.default(self.weight, self.scales, None, -127, 127,
                                                                     indices)


def for_pte(model: nn.Module, float_layers: tuple[str, ...] = ()) -> list[str]:
    """Swap `model`'s embeddings (in place) for Int8Embedding; the names swapped."""
    names = tables(model, float_layers)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Int8Embedding(model.get_submodule(name)))
    return names


def for_onnx(proto: onnx.ModelProto, model: nn.Module, float_layers: tuple[str, ...] = ()) -> list[str]:
    """Rewrite (in place) each Gather of a float table that is one of `tables(model)` (found by its
    weight's name, `NAME.weight`) as an int8 lookup times its rows' scales; the names rewritten."""
    wanted = {f"{name}.weight": name for name in tables(model, float_layers)}
    inits = {i.name: i for i in proto.graph.initializer}
    graph, done, nodes = proto.graph, [], []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else ""
        if table not in wanted or table not in inits or inits[table].data_type != onnx.TensorProto.FLOAT \
                or dict((a.name, a.i) for a in node.attribute).get("axis", 0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[table])
        q, scale = (t.numpy() for t in int8_rows(torch.from_numpy(weight.copy())))
        base = f"{table}_int8"
        if table not in {name for name, _ in done}:  # a table looked up twice is rewritten once
            graph.initializer.remove(inits[table])
            graph.initializer.extend([numpy_helper.from_array(q, base),
                                      numpy_helper.from_array(scale[:, None], f"{table}_scale")])
            done.append((table, wanted[table]))
        out, tag = node.output[0], f"{node.name or base}_"
        nodes += [helper.make_node("Gather", [base, node.input[1]], [tag + "q"], name=tag + "int8_lookup"),
                  helper.make_node("Cast", [tag + "q"], [tag + "f"], to=onnx.TensorProto.FLOAT, name=tag + "cast"),
                  helper.make_node("Gather", [f"{table}_scale", node.input[1]], [tag + "s"], name=tag + "scale_lookup"),
                  helper.make_node("Mul", [tag + "f", tag + "s"], [out], name=tag + "dequantize")]
    del graph.node[:]
    graph.node.extend(nodes)
    return [name for _, name in done]

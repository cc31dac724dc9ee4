"""Rewrites of a torch.export program that let ExecuTorch's XNNPACK partitioner take ops it would
leave to the portable kernels, each a memory round trip at run time. Same math, other ops; the
reasons are ExecuTorch 1.5.1's own (paths under site-packages/executorch/):

    hardsigmoid     has no XNNPACK config (backends/xnnpack/partition/config/__init__.py), so it is
                    decomposed as clamp(clamp(x + 3, 0), 6) / 6 with *integer* literals; the scalars
                    become int64 constants (exir/passes/scalar_to_tensor_pass.py), a cast to float
                    follows (remove_mixed_type_operators.py), and XNNPACK refuses int64 input
                    (_check_node_has_valid_dtype). With float literals nothing is cast.
    split / chunk   no XNNPACK config, and exir keeps split whole for no partitioner
                    (exir/program/_program.py, _remove_invalid_ops_for_not_decompose); each one cut
                    the delegate in two (shufflenet_v2: 15 subgraphs). Static slices it takes, but
                    not all of an int8 tensor: see _int8_split_kept_whole.
    mean over H, W  MeanDimConfig: "mean.dim only supports keepdim=True": mean with keepdim, then view.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch

aten = torch.ops.aten
SPLITS = (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.split_copy.Tensor,
          aten.split_with_sizes_copy.default)
SOURCE_META = ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node", "torch_fn")


def make_delegable(program: torch.export.ExportedProgram) -> dict[str, int]:
    """Rewrite `program` in place; returns how many ops each rewrite replaced."""
    graph = program.graph_module.graph
    done: Counter[str] = Counter()
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.hardsigmoid.default:
            shifted = _insert(graph, aten.add.Tensor, (node.args[0], 3.0), node)
            clamped = _insert(graph, aten.clamp.default, (shifted, 0.0, 6.0), node)
            _replace(graph, node, _insert(graph, aten.div.Tensor, (clamped, 6.0), node))
            done["hardsigmoid → add, clamp, div"] += 1
        elif node.target in SPLITS and all(u.target is operator.getitem for u in node.users) \
                and not _int8_split_kept_whole(node):
            source, dim = node.args[0], _split_dim(node)
            bounds, start = [], 0
            for piece in node.meta["val"]:
                bounds.append((start, start + piece.shape[dim]))
                start += piece.shape[dim]
            for user in list(node.users):
                _replace(graph, user, _insert(graph, aten.slice.Tensor, (source, dim, *bounds[user.args[1]]), user))
            graph.erase_node(node)
            done["split → slices"] += 1
        elif _is_spatial_mean(node):
            kept = _insert(graph, aten.mean.dim, (node.args[0], list(node.args[1]), True), node)
            _replace(graph, node, _insert(graph, aten.view.default, (kept, list(node.meta["val"].shape)), node))
            done["mean over H, W → mean keepdim, view"] += 1
    if done:
        graph.eliminate_dead_code()
        graph.lint()
        program.graph_module.recompile()
    return dict(done)


def _int8_split_kept_whole(split: torch.fx.Node) -> bool:
    """A split of a dequantized int8 tensor that XNNPACK's slices compute wrong, without a word: one
    whose pieces some float op reads (an LSTM's gates, chunked after the quantized add, into sigmoid
    and tanh: a static int8 Tagger's .pte gave 8.4 dB on its pooled output against 35.1 dB for the
    same graph run by torch, by ExecuTorch's portable kernels, or lowered with the split whole), and
    any but a channel split of a 4-D tensor (a GRU's gates chunked from a linear's int8 output into
    quantized adds: g2p-en's static .pte gave -1.0 dB against 15.5 dB). The channel split of a
    ShuffleNet block, whose pieces are requantized, is the case measured right (tests/export/test_pte.py)."""
    if not str(split.args[0].target).startswith("quantized_decomposed.dequantize"):
        return False
    requantized = all(str(reader.target).startswith("quantized_decomposed.quantize")
                      for piece in split.users for reader in piece.users)
    return not (requantized and split.args[0].meta["val"].dim() == 4 and _split_dim(split) == 1)


def _split_dim(split: torch.fx.Node) -> int:
    source = split.args[0]
    return (split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)) % source.meta["val"].dim()


def _is_spatial_mean(node: torch.fx.Node) -> bool:
    """mean over dims 2 and 3 of a 4-D tensor, keepdim False, no dtype (global average pooling)."""
    if node.target is not aten.mean.dim or node.kwargs.get("dtype") or (len(node.args) > 2 and node.args[2]):
        return False
    source = node.args[0]
    return (source.meta["val"].dim() == 4 and node.meta["val"].dim() == 2
            and sorted(d % 4 for d in node.args[1]) == [2, 3])


def _insert(graph: torch.fx.Graph, target: object, args: tuple, before: torch.fx.Node) -> torch.fx.Node:
    """A call before `before`, with its fake value (what later passes read) and `before`'s source."""
    with graph.inserting_before(before):
        node = graph.call_function(target, args)
    node.meta["val"] = target(*[a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args])
    node.meta.update({k: before.meta[k] for k in SOURCE_META if k in before.meta})
    return node


def _replace(graph: torch.fx.Graph, old: torch.fx.Node, new: torch.fx.Node) -> None:
    old.replace_all_uses_with(new)
    graph.erase_node(old)

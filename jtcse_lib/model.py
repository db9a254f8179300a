"""Twin towers run layer by layer, with JTCSE's parameter-free cross-attention branch.

``TwinTower`` holds two Hugging Face encoders of the same architecture (BERT family or RoBERTa family, any
depth) with separate weights. Both towers see the same tokens (N = 2B sequences: the two dropout views of B
sentences are already stacked in the batch) and each applies its own dropout.

Main path
---------
The encoder loop is re-implemented with each layer's own modules so that Q, K, V are computed once and are
available to the cross branch. For layer l of one tower, with h^l of shape (N, L, H), nh heads of size
d = H / nh and the padding keys masked:

    Q, K, V   = split_heads(W_q h^l, W_k h^l, W_v h^l)                   # (N, nh, L, d)
    a         = merge_heads(softmax(Q K^T / sqrt(d) + mask) V)           # (N, L, H), SDPA, attention dropout
    x         = LayerNorm(h^l + Dropout(W_o a))                           # layer.attention.output(a, h^l)
    h^{l+1}   = LayerNorm(x + Dropout(W_2 act(W_1 x)))                    # layer.output(layer.intermediate(x), x)

This is exactly what the Hugging Face model computes, so with the branch off (or simply ignored) each tower
is the plain pretrained model: in eval mode ``cls_a``/``pooled_a`` equal ``AutoModel`` outputs, and each
tower saves as a plain Hugging Face folder.

Cross-attention branch: what was published, and the two readings
-----------------------------------------------------------------
The paper describes a cross-attention in which one tower's attention weights are applied to the other tower's
value vectors, to strengthen [CLS]. The authors published their modified transformer as ``transformers_cp.zip``
in their repository (commit 740dd84, ``My_BertModel(calayers_num=...)``), but the archive is not retrievable
(its blob is missing from the repository), so we could not read it. Their training script shows what we can
rely on: the branch adds no parameters (``encoder.layer`` is loaded strictly from two plain towers), it returns
full-sequence states (``temp_1``, ``temp_2``), and the loss reads their first row (``temp_1[:, 0, :]``).
Two readings fit that, and ``cross_attention_rows`` chooses:

* ``"cls"`` (the default, our first reading): a training-time "shadow [CLS]" row per sequence, one query row.
* ``"all"``: a full-sequence branch stream, every row of the branch attending to the other tower's values.

Both add no parameters and leave the main paths untouched. Let S be the sorted cross layers (0-based),
l0 = S[0], l1 = S[-1]. For tower X with other tower Y:

* c_X starts at the input of layer l0 as the main path: c_X = h_X^{l0}[:, :1] ("cls", (N, 1, H)) or h_X^{l0}
  ("all", (N, L, H)).
* At every layer l in l0..l1 (inclusive), using tower X's own layer-l modules:

      "cls": q = split_heads(W_q^X c_X), K = K_X^l, V_own = V_X^l      (the main path's keys and values)
      "all": q, K, V_own = split_heads(W_q^X c_X, W_k^X c_X, W_v^X c_X) (the branch's own stream)
      Val = V_Y^l if l in S else V_own                                  (V_Y^l: the other tower's main path)
      a   = merge_heads(softmax(q K^T / sqrt(d) + mask) Val)
      c_X = layer_X.output(layer_X.intermediate(x), x),  x = layer_X.attention.output(a, c_X)

  At l0 both readings' queries and keys are the main path's, so A's branch computes
  softmax(Q_A K_A^T / sqrt(d) + mask) V_B there, as the paper describes ("cls" keeps its [CLS] row only).
* ``cross_X = c_X[:, 0]`` after layer l1 is the "cross [CLS]" fed to the cross-tower loss.

Gradients of a loss on cross_A reach tower A's layers up to l1 and tower B's layers below each cross layer plus
B's value projections at the cross layers; never a layer above l1 or a pooler. Padding is masked in the branch
as in the main path. With identical towers the branch reproduces the main path (both readings; tested).

Cost per tower, in main-path layer forwards, for the n = l1 - l0 + 1 spanned layers: "cls" about n / L (one
query row of L; K and V reused from the main path); "all" about n - 1 + (attention and blocks at l0) = a full
second pass over the span (at l0 the projections are reused). JTCSE's 6 of BERT's 12 layers (S = 1, 3, ..., 11)
span 11 layers: "all" adds ~0.9 of the towers' forward and backward FLOPs, "cls" ~11/L of one layer each.
With ``cross_attention_layers=0`` (TNCSE) the branch is skipped entirely.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .backbones import TOWERS, is_twin_dir, load_encoder, read_twin_json, twin_towers, write_twin_json

__all__ = ["MLPHead", "TwinOutput", "TwinTower", "resolve_cross_attention_layers"]

_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


CROSS_ATTENTION_ROWS = ("cls", "all")  # the two readings of the branch (module docstring)


def resolve_cross_attention_layers(spec: int | Sequence[int] | None, depth: int) -> list[int]:
    """Turn a cross-attention spec into sorted 0-based layer indices.

    Args:
        spec: an int n, the number of cross layers, equally spaced and ending at the last layer:
            0-based indices [depth / n * k - 1 for k = 1..n] (depth 12: n = 6 -> [1, 3, 5, 7, 9, 11],
            n = 1 -> [11]); 0 or None -> [] (no cross-attention: TNCSE). n must divide depth.
            Or a sequence of explicit 0-based layer indices (in range, unique), returned sorted.
        depth: the number of encoder layers.

    Raises:
        ValueError: n does not divide depth (the message lists the allowed counts, the divisors of depth),
            an index is out of range or repeated, or the spec has the wrong type.
    """
    if spec is None:
        return []
    if isinstance(spec, bool):
        raise ValueError(f"cross_attention_layers must be an int or a list of ints, got {spec!r}")
    if isinstance(spec, int):
        if spec == 0:
            return []
        allowed = [n for n in range(1, depth + 1) if depth % n == 0]
        if spec < 0 or depth % spec != 0:
            raise ValueError(
                f"cross_attention_layers={spec} must divide the depth {depth} so the layers are equally "
                f"spaced; allowed counts: 0 (none) or {allowed}"
            )
        step = depth // spec
        return [step * k - 1 for k in range(1, spec + 1)]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise ValueError(f"cross_attention_layers must be an int or a list of ints, got {spec!r}")
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in spec):
        raise ValueError(f"cross_attention_layers must hold ints, got {list(spec)!r}")
    layers = [int(i) for i in spec]
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"cross-attention layer indices {bad} out of range: 0-based, 0..{depth - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"cross-attention layer indices must be unique, got {layers}")
    return sorted(layers)


class MLPHead(nn.Module):
    """SimCSE's train-only MLP over [CLS] (`--mlp_only_train`): tanh(W h_CLS + b), initialised as BERT initialises a
    linear layer (normal(0, initializer_range), zero bias). The loss sees its output during training; the tower is
    evaluated and saved without it (the official SimCSE: "[CLS] w/ MLP (train)")."""

    def __init__(self, hidden_size: int, initializer_range: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        nn.init.normal_(self.dense.weight, std=initializer_range)
        nn.init.zeros_(self.dense.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))  # (N, H) -> (N, H)


@dataclass
class TwinOutput:
    """What ``TwinTower.forward`` returns (N sequences, hidden size H).

    cls_a, cls_b: (N, H) last hidden state of the first token ([CLS] / <s>), before the pooler.
    pooled_a, pooled_b: (N, H) pooler outputs, or None for towers without a pooler.
    cross_a, cross_b: (N, H) cross [CLS] of each tower's branch, or None without cross layers.
    """

    cls_a: torch.Tensor
    cls_b: torch.Tensor
    pooled_a: torch.Tensor | None = None
    pooled_b: torch.Tensor | None = None
    cross_a: torch.Tensor | None = None
    cross_b: torch.Tensor | None = None


# ---- one layer, from its own modules -------------------------------------------------------------------


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, length, _ = x.shape
    return x.view(n, length, heads, -1).transpose(1, 2)  # (N, L, H) -> (N, heads, L, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)  # (N, heads, L, d) -> (N, L, H)


def _qkv(layer: nn.Module, h: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V of one layer, each (N, heads, L, d), for hidden states h (N, L, H)."""
    sa = layer.attention.self
    return _split_heads(sa.query(h), heads), _split_heads(sa.key(h), heads), _split_heads(sa.value(h), heads)


def _attend(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """softmax(q k^T / sqrt(d) + mask) v with the layer's attention dropout; (N, heads, Lq, d) -> (N, Lq, H)."""
    sa = layer.attention.self
    p = sa.dropout.p if sa.training else 0.0
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))


def _blocks(layer: nn.Module, a: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The attention output block (residual + LayerNorm) then the feed-forward block; (N, Lq, H)."""
    x = layer.attention.output(a, residual)
    return layer.output(layer.intermediate(x), x)


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(N, L) 1 = token, 0 = padding -> boolean SDPA mask (N, 1, 1, L), True = attend. On the CPU, None when there is
    no padding (the mask-free kernel); on a GPU always the mask, since asking would read the tensor on the host
    (a device sync per forward)."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    if keep.device.type == "cpu" and bool(keep.all()):
        return None
    return keep[:, None, None, :]


def _check_tower(model: nn.Module, name: str) -> None:
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{name} must be a Hugging Face PreTrainedModel, got {type(model).__name__}")
    if getattr(model.config, "is_decoder", False):
        raise ValueError(f"{name} is configured as a decoder (is_decoder=True); TwinTower needs an encoder")
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    ok = hasattr(model, "embeddings") and layers is not None and len(layers) > 0
    if ok:
        first = layers[0]
        ok = all(
            hasattr(first, a) for a in ("attention", "intermediate", "output")
        ) and all(hasattr(first.attention.self, p) for p in ("query", "key", "value", "dropout"))
    if not ok:
        raise ValueError(
            f"{name} ({type(model).__name__}) does not have the BERT/RoBERTa layout "
            "(embeddings, encoder.layer[i].attention.self.{query,key,value}, attention.output, intermediate, output)"
        )


class TwinTower(nn.Module):
    """Two encoders of one architecture (separate weights) run layer by layer on the same tokens.

    Args:
        tower_a, tower_b: Hugging Face encoder models (e.g. ``BertModel``, ``RobertaModel``) with identical
            architecture (model_type, hidden size, layers, heads, intermediate size).
        cross_attention_layers: int count (must divide the depth; 0 = none, TNCSE) or explicit 0-based layer
            indices; see ``resolve_cross_attention_layers``.
        cross_attention_rows: ``"cls"`` (a shadow [CLS] row) or ``"all"`` (a full-sequence branch stream); see
            the module docstring.
    """

    def __init__(
        self,
        tower_a: PreTrainedModel,
        tower_b: PreTrainedModel,
        cross_attention_layers: int | Sequence[int] = 0,
        cross_attention_rows: str = "cls",
    ):
        super().__init__()
        if cross_attention_rows not in CROSS_ATTENTION_ROWS:
            raise ValueError(f"cross_attention_rows must be one of {CROSS_ATTENTION_ROWS}, "
                             f"not {cross_attention_rows!r}")
        self.cross_attention_rows = cross_attention_rows
        _check_tower(tower_a, "tower_a")
        _check_tower(tower_b, "tower_b")
        if tower_a is tower_b:
            raise ValueError("tower_a and tower_b must be separate models (separate weights), got the same object")
        diffs = [
            f"{k}: {getattr(tower_a.config, k, None)!r} vs {getattr(tower_b.config, k, None)!r}"
            for k in _ARCH_KEYS
            if getattr(tower_a.config, k, None) != getattr(tower_b.config, k, None)
        ]
        if diffs:
            raise ValueError("the two towers must have identical architecture; they differ in " + "; ".join(diffs))
        self.tower_a = tower_a
        self.tower_b = tower_b
        self._cross_layers = resolve_cross_attention_layers(cross_attention_layers, self.depth)

    # ---- properties ----------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Number of encoder layers of each tower."""
        return len(self.tower_a.encoder.layer)

    @property
    def hidden_size(self) -> int:
        return self.tower_a.config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.tower_a.config.num_attention_heads

    @property
    def cross_layers(self) -> list[int]:
        """Resolved 0-based cross-attention layer indices (sorted; empty = no branch)."""
        return list(self._cross_layers)

    def towers(self) -> tuple[PreTrainedModel, PreTrainedModel]:
        return self.tower_a, self.tower_b

    def _tower(self, which: str) -> PreTrainedModel:
        if which not in ("a", "b"):
            raise ValueError(f"which must be 'a' or 'b', got {which!r}")
        return self.tower_a if which == "a" else self.tower_b

    # ---- forward -------------------------------------------------------------------------------------------

    @staticmethod
    def _embed(tower: PreTrainedModel, input_ids, token_type_ids) -> torch.Tensor:
        # RoBERTa's embeddings derive position ids from input_ids (padding_idx); BERT's use 0..L-1.
        h = tower.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (N, L, H)
        proj = getattr(tower, "embeddings_project", None)  # ELECTRA-style embedding projection
        return proj(h) if proj is not None else h

    def encode_tower(
        self,
        which: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one tower alone (the main path only).

        Args:
            which: "a" or "b".
            input_ids, attention_mask, token_type_ids: (N, L).

        Returns:
            (last_hidden_state (N, L, H), pooled (N, H) or None when the tower has no pooler).
        """
        tower = self._tower(which)
        mask = _key_mask(attention_mask)
        heads = self.num_heads
        h = self._embed(tower, input_ids, token_type_ids)
        for layer in tower.encoder.layer:
            q, k, v = _qkv(layer, h, heads)
            h = _blocks(layer, _attend(layer, q, k, v, mask), h)
        pooled = tower.pooler(h) if getattr(tower, "pooler", None) is not None else None
        return h, pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        with_cross: bool = True,
    ) -> TwinOutput:
        """Run both towers (and the cross branch when there are cross layers and ``with_cross``).

        Args:
            input_ids: (N, L) token ids, N = 2B (both views stacked; the model does not care how).
            attention_mask: (N, L), 1 for tokens and 0 for padding; None = no padding.
            token_type_ids: (N, L) or None (RoBERTa-style tokenisers give none).
            with_cross: compute the branch; False skips it (cross_a = cross_b = None).

        Returns:
            TwinOutput with cls_a, cls_b (N, H), pooled_a, pooled_b (N, H) or None, cross_a, cross_b (N, H) or None.
        """
        towers = (self.tower_a, self.tower_b)
        mask = _key_mask(attention_mask)  # (N, 1, 1, L) or None
        heads = self.num_heads
        cross, rows = (self._cross_layers if with_cross else []), self.cross_attention_rows
        l0, l1 = (cross[0], cross[-1]) if cross else (-1, -1)

        h = [self._embed(t, input_ids, token_type_ids) for t in towers]  # 2 x (N, L, H)
        c: list[torch.Tensor | None] = [None, None]  # shadow [CLS] rows, 2 x (N, 1, H)
        for idx in range(self.depth):
            layers = (towers[0].encoder.layer[idx], towers[1].encoder.layer[idx])
            qkv = [_qkv(layers[i], h[i], heads) for i in (0, 1)]  # each (N, heads, L, d)
            if l0 <= idx <= l1:
                if idx == l0:  # the main path at the input of layer l0: its [CLS] row, or every row
                    c = [h[0][:, :1], h[1][:, :1]] if rows == "cls" else [h[0], h[1]]
                for i in (0, 1):
                    own, other = qkv[i], qkv[1 - i]
                    if rows == "cls":  # one query row against the main path's keys: (N, heads, 1, d)
                        q, k, v = _split_heads(layers[i].attention.self.query(c[i]), heads), own[1], own[2]
                    else:  # the branch's own stream; at l0 it is the main path, whose projections are reused
                        q, k, v = own if idx == l0 else _qkv(layers[i], c[i], heads)
                    values = other[2] if idx in cross else v  # V_Y at cross layers, else the branch's own
                    c[i] = _blocks(layers[i], _attend(layers[i], q, k, values, mask), c[i])  # softmax(qK^T/sqrt(d)+m)V
            h = [_blocks(layers[i], _attend(layers[i], *qkv[i], mask), h[i]) for i in (0, 1)]

        pooled = [t.pooler(h[i]) if getattr(t, "pooler", None) is not None else None for i, t in enumerate(towers)]
        return TwinOutput(
            cls_a=h[0][:, 0],
            cls_b=h[1][:, 0],
            pooled_a=pooled[0],
            pooled_b=pooled[1],
            cross_a=c[0][:, 0] if cross else None,
            cross_b=c[1][:, 0] if cross else None,
        )

    # ---- persistence ---------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write ``dir/tower_a`` and ``dir/tower_b`` as plain Hugging Face folders (safetensors), plus the twin
        marker ``dir/twin.json`` with the cross-attention layers. Each tower loads with ``AutoModel``."""
        os.makedirs(save_directory, exist_ok=True)
        for name, tower in zip(TOWERS, self.towers()):
            tower.save_pretrained(os.path.join(save_directory, name), **kwargs)
        write_twin_json(save_directory, cross_attention_layers=self.cross_layers, depth=self.depth)

    @classmethod
    def from_pretrained(
        cls,
        path_a: str | os.PathLike,
        path_b: str | os.PathLike | None = None,
        cross_attention_layers: int | Sequence[int] | None = None,
        dropout: float | None = None,
        cross_attention_rows: str = "cls",
        **kwargs,
    ) -> TwinTower:
        """Load two towers with ``backbones.load_encoder`` (never with remote code).

        Args:
            path_a: a model name (``backbones.resolve``), or a twin folder (tower_a/ and tower_b/), which loads
                both towers and, unless overridden, the cross-attention layers its ``twin.json`` records.
            path_b: the second tower's folder; None -> a separate copy of path_a.
            cross_attention_layers: as in the constructor; None -> the saved value, else 0.
            dropout: hidden and attention dropout of both towers (None: the models' own).
            cross_attention_rows: "cls" or "all", as in the constructor.
            **kwargs: passed to ``from_pretrained`` (e.g. torch_dtype).
        """
        if kwargs.pop("trust_remote_code", False):
            raise ValueError("TwinTower never loads remote code (trust_remote_code=True is refused)")
        if path_b is None and is_twin_dir(path_a):
            if cross_attention_layers is None:
                cross_attention_layers = read_twin_json(path_a).get("cross_attention_layers", 0)
            path_a, path_b = twin_towers(path_a)
        elif path_b is None:
            path_b = path_a
        tower_a = load_encoder(path_a, dropout, **kwargs)
        tower_b = load_encoder(path_b, dropout, **kwargs)
        return cls(tower_a, tower_b, cross_attention_layers=cross_attention_layers or 0,
                   cross_attention_rows=cross_attention_rows)

"""The JTCSE losses and the objective of each training stage, as plain functions on tensors.

Two layers. The *terms* (``nt_xent``, ``cross_nt_xent``, ``modulus_gap`` / ``tensor_modulus_loss``,
``distillation_kl``) each take the embeddings of a batch and return one loss. The *objectives*
(``simcse_objective``, ``twin_objective``, ``distill_objective``) are the paper's total losses, written
with the terms; ``jtcse_lib.train.Trainer`` calls them and nothing else. Nothing here holds state; the only
import from the library is ``jtcse_lib.distributed``, whose gathers are the identity in one process (under
torchrun, each rank's anchors are scored against the candidates of the whole global batch). The official code
(``model_dual.py`` of the JTCSE/TNCSE releases) feeds one tensor of *interleaved* rows per tower::

    row 2s   = sentence s, dropout view 1
    row 2s+1 = sentence s, dropout view 2

and pairs row ``i`` with its partner view ``i ^ 1``. Our API takes the two views as two ``(B, H)``
tensors instead and stacks them internally as ``[view1; view2]`` (row ``i`` and row ``i + B`` are
partners). A mean over rows does not depend on their order, so the values (and gradients) are the
official ones; ``tests/test_losses.py`` checks that against slow loops over the interleaved layout.

Numerics
--------
* Cosine similarity normalises each vector by ``max(||x||, 1e-8)``, as ``F.cosine_similarity`` does.
* Inputs in float16/bfloat16 are upcast to float32 and autocast is switched off inside each loss, so
  the similarity matrices, softmaxes and norms are computed in float32 under mixed precision; the loss
  is then float32. float32 and float64 inputs are computed in their own dtype.
* No function reads a tensor value on the host (no ``.item()``, no data-dependent Python branch), so
  none of them forces a GPU synchronisation.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import distributed

__all__ = [
    "OFFICIAL_TEMPERATURE",
    "OFFICIAL_NEGATIVE_COSINE_REPLACEMENT",
    "TENSOR_MODULUS_VARIANTS",
    "simcse_loss",
    "nt_xent",
    "cross_nt_xent",
    "modulus_gap",
    "tensor_modulus_loss",
    "distillation_kl",
    "TwinWeights",
    "simcse_objective",
    "twin_objective",
    "distill_objective",
]

#: Temperature of every contrastive loss in the official code (and our default).
OFFICIAL_TEMPERATURE = 0.05
#: The constant the official ``LTN_loss`` substitutes for a negative cosine before taking ``-log``.
OFFICIAL_NEGATIVE_COSINE_REPLACEMENT = 1e-4
#: Allowed values of ``tensor_modulus_loss(..., variant=...)``.
TENSOR_MODULUS_VARIANTS = ("official", "paper")

_COS_EPS = 1e-8  # as F.cosine_similarity: x / max(||x||, eps)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _compute_dtype(*tensors):
    """float32 for half-precision inputs, otherwise the promoted input dtype."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _autocast_off(x):
    """A context that disables autocast on ``x``'s device type (so matmuls stay in float32)."""
    return torch.autocast(device_type="cuda" if x.device.type == "cuda" else "cpu", enabled=False)


def _unit_rows(x, dtype):
    """Rows scaled to unit length, in ``dtype``; (N, H) -> (N, H)."""
    x = x.to(dtype)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_COS_EPS)  # x / max(||x||, eps)


def _rowwise_cos(x, y, dtype):
    """cos(x_i, y_i) of each pair of rows, in ``dtype``; (B, H), (B, H) -> (B,).

    Same value as ``F.cosine_similarity(x, y, dim=-1)`` (norms clamped to eps), computed on (B,)
    norms and dot products, which keeps the backward pass to a few (B, H) operations.
    """
    x, y = x.to(dtype), y.to(dtype)
    dot = (x * y).sum(dim=-1)  # x_i . y_i, (B,)
    nx = torch.linalg.vector_norm(x, dim=-1).clamp_min(_COS_EPS)  # max(||x_i||, eps), (B,)
    ny = torch.linalg.vector_norm(y, dim=-1).clamp_min(_COS_EPS)  # max(||y_i||, eps), (B,)
    return dot / (nx * ny)  # cos(x_i, y_i), (B,)


def _check_pair(name1, t1, name2, t2):
    if t1.dim() != 2 or t2.dim() != 2:
        raise ValueError(f"{name1} and {name2} must be 2-D (B, H); got {tuple(t1.shape)} and {tuple(t2.shape)}")
    if t1.shape != t2.shape:
        raise ValueError(f"{name1} and {name2} must have the same shape; got {tuple(t1.shape)} and {tuple(t2.shape)}")
    if t1.shape[0] < 1:
        raise ValueError(f"{name1} must hold at least one row")


def _check_temperature(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _partner_nt_xent(za, zb, temperature):
    """NT-Xent of anchors ``za`` against candidates ``zb`` in the stacked layout.

    ``za``, ``zb``: (2B, H) unit rows, ``[view1; view2]``. Row i of ``za`` is scored against every row
    of ``zb`` except row i; its target is the partner view, row ``(i + B) mod 2B``.

    Under torch.distributed (``jtcse_lib.distributed``) the rows are this rank's share of the global batch: the
    candidates are gathered from every rank, with gradient, in the global layout ``[view1 of all ranks; view2 of
    all ranks]`` (2N rows), and each local anchor excludes and targets the rows at its global index. In one
    process the gather is the identity and the indices are those above.
    """
    b = za.shape[0] // 2  # local sentences
    v1, v2 = zb.chunk(2)
    candidates = torch.cat([distributed.gather(v1), distributed.gather(v2)])  # (2N, H), [view1; view2] global
    n = candidates.shape[0] // 2  # global sentences
    first = distributed.rank() * b + torch.arange(b, device=za.device)  # global index of this rank's sentences
    own = torch.cat([first, first + n])  # global row of each anchor: (2B,)
    partner = torch.cat([first + n, first])  # its partner view
    logits = za @ candidates.transpose(0, 1) / temperature  # l_ij = cos(a_i, b_j) / tau, (2B, 2N)
    # drop j = i; torch.full is a fill kernel on the device (torch.tensor(-inf, device=...) would be a blocking
    # host-to-device copy per call)
    minus_inf = torch.full((), float("-inf"), dtype=logits.dtype, device=za.device)
    logits = logits.index_put((torch.arange(2 * b, device=za.device), own), minus_inf)
    return F.cross_entropy(logits, partner)  # mean_i [ logsumexp_{j != i} l_ij - l_{i, partner(i)} ]


# ----------------------------------------------------------------------------------------------
# contrastive losses
# ----------------------------------------------------------------------------------------------
def simcse_loss(view1, view2, temperature=OFFICIAL_TEMPERATURE):
    """Unsupervised SimCSE's own loss: view 1's rows are the anchors, view 2's rows the candidates.

    With ``l_ij = cos(z1_i, z2_j) / temperature`` over the B sentences of the batch::

        loss = 1/B * sum_i [ log sum_j exp(l_ij) - l_ii ]

    Each anchor has B - 1 negatives (the other sentences' second views) and one direction; the same-view
    rows are not candidates. This is SimCSE's ``cl_forward``: ``CrossEntropyLoss(cos_sim(z1, z2) / temp,
    labels=arange(B))``. ``nt_xent`` is the SimCLR form (2B anchors, 2B - 2 negatives, symmetric), which the
    JTCSE/TNCSE code uses in stage 2.

    Args:
        view1, view2: ``(B, H)`` embeddings of dropout view 1 and view 2 of the same B sentences.
        temperature: softmax temperature (SimCSE: 0.05).

    Returns:
        0-d tensor, the mean over the B anchors.

    Under torch.distributed the candidates are gathered from every rank with gradient and each rank's anchors
    target their global rows, so W ranks compute one device's loss on the global batch (SimCSE's own DDP code
    instead scores all N anchors on every rank through detached copies, which scales the gradient by 1/W).

    References: Gao et al., "SimCSE" (arXiv 2104.08821), eq. 1; princeton-nlp/SimCSE ``simcse/models.py``,
    ``cl_forward``. Relations: sentence-transformers' ``MultipleNegativesRankingLoss(model, scale=1/temperature)``
    on (sentence, sentence) pairs, its documented unsupervised SimCSE (``tests/test_losses.py`` checks it).
    """
    _check_pair("view1", view1, "view2", view2)
    _check_temperature("temperature", temperature)
    dtype = _compute_dtype(view1, view2)
    with _autocast_off(view1):
        z1, z2 = _unit_rows(view1, dtype), _unit_rows(view2, dtype)  # (B, H) each
        candidates = distributed.gather(z2)  # (N, H): view 2 of the global batch
        target = distributed.rank() * z1.shape[0] + torch.arange(z1.shape[0], device=z1.device)  # own global row
        return F.cross_entropy(z1 @ candidates.transpose(0, 1) / temperature, target)  # l_ij = cos / tau, (B, N)


def nt_xent(view1, view2, temperature=OFFICIAL_TEMPERATURE):
    """NT-Xent (SimCLR / unsupervised SimCSE) of one tower.

    Let ``z`` be the 2B embeddings of the batch (both views of every sentence) and
    ``l_ij = cos(z_i, z_j) / temperature``. Then::

        loss = 1/(2B) * sum_i [ log sum_{j != i} exp(l_ij) - l_{i, p(i)} ]

    where ``p(i)`` is the other view of the same sentence. The negatives of a row are both views of
    every other sentence (2B - 2 of them); the row itself is excluded.

    Args:
        view1, view2: ``(B, H)`` embeddings of dropout view 1 and view 2 of the same B sentences.
        temperature: softmax temperature (official: 0.05).

    Returns:
        0-d tensor, the mean over the 2B rows.

    Official code: ``unsup_infonce_loss(y_pred)`` on the interleaved ``(2B, H)`` tensor, with the
    diagonal suppressed by subtracting ``1e12`` from the cosine (here: ``-inf``; both give an exact
    zero probability in float32/float64). It builds the cosine matrix by broadcasting
    ``F.cosine_similarity`` over a ``(2B, 2B, H)`` tensor; here it is one matmul of unit rows. The
    order of rows does not change the mean, so the value is the official one.

    For ``B = 1`` the partner is the only candidate, every row's softmax is 1 on its target, and the
    loss is exactly 0 (with zero gradient).

    References: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
    (SimCLR, arXiv 2002.05709), eq. 1; Gao et al., "SimCSE" (arXiv 2104.08821), eq. 1 with dropout views;
    JTCSE/TNCSE official ``model_dual.py``, ``unsup_infonce_loss``.

    Relations: the mean of sentence-transformers' ``MultipleNegativesRankingLoss(model, scale=1/temperature
    = 20, directions=("query_to_doc", "query_to_query"))`` on (view1, view2) and on (view2, view1)
    (``tests/test_losses.py`` checks it). Plain ``MultipleNegativesRankingLoss`` (query_to_doc only) drops
    the same-view negatives, B - 1 per row instead of 2B - 2. ``cross_nt_xent`` is the two-tower version.
    """
    _check_pair("view1", view1, "view2", view2)
    _check_temperature("temperature", temperature)
    dtype = _compute_dtype(view1, view2)
    with _autocast_off(view1):
        z = _unit_rows(torch.cat([view1, view2], dim=0), dtype)  # (2B, H), rows [view1; view2]
        return _partner_nt_xent(z, z, temperature)


def cross_nt_xent(a1, a2, b1, b2, temperature=OFFICIAL_TEMPERATURE):
    """Cross-tower NT-Xent (the official ``icnce``): tower A's rows are anchors, tower B's candidates.

    With ``A`` the 2B rows of tower A, ``Bt`` the 2B rows of tower B (same sentence/view order) and
    ``l_ij = cos(A_i, Bt_j) / temperature``::

        loss = 1/(2B) * sum_i [ log sum_{j != i} exp(l_ij) - l_{i, p(i)} ]

    Row ``j = i`` (the same view of the same sentence, encoded by the other tower) is masked out; the
    target is the *partner* view of the same sentence in tower B. Not symmetric in (A, B): swapping
    the towers gives the B -> A direction.

    Args:
        a1, a2: ``(B, H)`` tower A, view 1 and view 2.
        b1, b2: ``(B, H)`` tower B, view 1 and view 2.
        temperature: softmax temperature (official: 0.05).

    Returns:
        0-d tensor, the mean over the 2B anchors.

    Official code: ``icnce(y_pred_1, y_pred_2)`` on interleaved ``(2B, H)`` tensors, diagonal
    suppressed by ``-1e12``, cosine matrix by broadcasting. JTCSE applies it to the towers' [CLS]
    vectors and to the [CLS] vectors of the cross-attention outputs, drawing the direction (A -> B or
    B -> A) at random each step; the caller chooses the direction by the argument order.

    References: TNCSE (arXiv 2503.12739), the "ICNCE" term; JTCSE (arXiv 2505.02366), its use on the
    cross-attention [CLS]; official ``model_dual.py``, ``icnce``.

    Relations: ``cross_nt_xent(a1, a2, a1, a2) == nt_xent(a1, a2)`` (a tower against itself). Unlike
    ``MultipleNegativesRankingLoss`` with tower B's rows as documents, the anchor's own row in the other tower
    (same sentence, same view) is excluded rather than counted as a negative.
    """
    _check_pair("a1", a1, "a2", a2)
    _check_pair("b1", b1, "b2", b2)
    _check_pair("a1", a1, "b1", b1)
    _check_temperature("temperature", temperature)
    dtype = _compute_dtype(a1, a2, b1, b2)
    with _autocast_off(a1):
        za = _unit_rows(torch.cat([a1, a2], dim=0), dtype)  # (2B, H) tower A, [view1; view2]
        zb = _unit_rows(torch.cat([b1, b2], dim=0), dtype)  # (2B, H) tower B, [view1; view2]
        return _partner_nt_xent(za, zb, temperature)


# ----------------------------------------------------------------------------------------------
# tensor-modulus constraint
# ----------------------------------------------------------------------------------------------
def modulus_gap(x, y, eps=1e-12):
    """The tensor-modulus gap l_TN of each pair of rows.

    ::

        l_TN(x, y) = ||x - y|| / (||x|| + ||y||)

    With ``||y|| = k ||x||`` and ``cos(x, y) = t`` this is ``sqrt(1 + k^2 - 2 k t) / (1 + k)``: in
    [0, 1], 0 only when x == y, 1 when the vectors point in opposite directions (or one of them is
    zero), and ``|1 - k| / (1 + k)`` at ``t = 1``. Scale invariant: ``l_TN(c x, c y) = l_TN(x, y)``.

    Zero vectors: the denominator is clamped to ``eps``, so two zero vectors give 0 (and the value
    tends to 0 continuously as ``||x|| + ||y|| -> 0``); the Euclidean norm at the origin has
    gradient 0 (the subgradient torch uses), so values and gradients are finite everywhere.

    Args:
        x, y: ``(B, H)`` (any ``(..., H)``) tensors of the same shape.
        eps: lower bound of the denominator.

    Returns:
        ``(B,)`` (``(...)``) tensor of l_TN values; float32 for half-precision inputs.

    Official code: ``torch.norm(P_i - P'_i) / (torch.norm(P_i) + torch.norm(P'_i))`` per sample inside
    ``LTN_loss``, without any guard (NaN for two zero vectors).
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = _compute_dtype(x, y)
    with _autocast_off(x):
        x, y = x.to(dtype), y.to(dtype)
        num = torch.linalg.vector_norm(x - y, dim=-1)  # ||x - y||, (B,)
        den = torch.linalg.vector_norm(x, dim=-1) + torch.linalg.vector_norm(y, dim=-1)  # ||x|| + ||y||, (B,)
        return num / den.clamp_min(eps)  # l_TN = ||x - y|| / max(||x|| + ||y||, eps), (B,)


def tensor_modulus_loss(anchor_cls, positive_cls, anchor_pooled=None, positive_pooled=None, variant="official"):
    """Tensor-modulus term (ICTM) of a batch of (anchor, positive) pairs.

    Two variants:

    ``"official"`` reproduces the official ``LTN_loss`` exactly::

        s_i = cos(anchor_cls_i, positive_cls_i)
        s_i <- 1e-4 (a constant, no gradient)   where s_i < 0
        M_i = l_TN(anchor_pooled_i, positive_pooled_i) / 2
        loss = 1/B * sum_i  -log(s_i) * M_i

      The cosine uses the [CLS] vectors, the modulus gap the *pooler outputs* (dense + tanh on [CLS])
      of the same pair; the -log(s) factor weights the modulus gap of each pair by how far apart the
      pair's directions are. A cosine of exactly 0 gives ``-log(0) = inf`` as in the official code.

    ``"paper"`` is the formula of the paper alone::

        loss = 1/B * sum_i l_TN(anchor_cls_i, positive_cls_i)

      on the [CLS] vectors; no -log factor, no /2, the pooled arguments are ignored (may be None).

    What the official code does differently (same values, see the tests): it takes the interleaved
    ``(2B, H)`` tensors of both towers, builds the full ``(2B, 2B)`` cosine matrix by broadcasting,
    then loops over the even rows in Python with ``if sim < 0.0: sim = torch.tensor(0.0001)``. That
    branch reads the value on the host, i.e. one GPU synchronisation per sample. Here the replacement
    is ``torch.where`` on the whole batch: the replaced entries get exactly zero gradient through
    ``s`` and the log is taken of the already-replaced (non-negative) value, so no NaN/inf gradient
    leaks from the discarded branch; nothing is read on the host.

    Usage in JTCSE: the term is added for the pair (tower A view 1, tower B view 2) and for
    (tower B view 1, tower A view 2), i.e. PAPER.md's ``s = cos(CLS_A(view1), CLS_B(view2))``::

        tensor_modulus_loss(cls_a1, cls_b2, pool_a1, pool_b2) + tensor_modulus_loss(cls_b1, cls_a2, pool_b1, pool_a2)

    Args:
        anchor_cls, positive_cls: ``(B, H)`` [CLS] vectors of the anchors and their positives.
        anchor_pooled, positive_pooled: ``(B, H')`` pooler outputs of the same pairs (official only).
        variant: ``"official"`` or ``"paper"``.

    Returns:
        0-d tensor; float32 for half-precision inputs.

    References: TNCSE (arXiv 2503.12739), the tensor-norm constraint (ICTM); JTCSE (arXiv 2505.02366), its
    joint form; official ``model_dual.py``, ``LTN_loss``.

    Relations: no counterpart in sentence-transformers (its losses see only similarities, never norms);
    ``modulus_gap`` is the per-pair quantity, notebook 01 derives it.
    """
    if variant not in TENSOR_MODULUS_VARIANTS:
        allowed = ", ".join(map(repr, TENSOR_MODULUS_VARIANTS))
        raise ValueError(f"unknown variant {variant!r}; allowed values: {allowed}")
    _check_pair("anchor_cls", anchor_cls, "positive_cls", positive_cls)
    if variant == "paper":
        return modulus_gap(anchor_cls, positive_cls).mean()  # 1/B sum_i l_TN(cls_i, cls+_i)

    if anchor_pooled is None or positive_pooled is None:
        raise ValueError("variant='official' needs anchor_pooled and positive_pooled (the pooler outputs)")
    _check_pair("anchor_pooled", anchor_pooled, "positive_pooled", positive_pooled)
    if anchor_pooled.shape[0] != anchor_cls.shape[0]:
        raise ValueError(
            "pooled and cls tensors must have the same batch size; "
            f"got {anchor_pooled.shape[0]} and {anchor_cls.shape[0]}"
        )
    dtype = _compute_dtype(anchor_cls, positive_cls)
    with _autocast_off(anchor_cls):
        s = _rowwise_cos(anchor_cls, positive_cls, dtype)  # s_i = cos(a_i, p_i), (B,)
        s = torch.where(s < 0, OFFICIAL_NEGATIVE_COSINE_REPLACEMENT, s)  # s_i <- 1e-4 (constant) where s_i < 0
        m = modulus_gap(anchor_pooled, positive_pooled) / 2.0  # M_i = l_TN(P_i, P+_i) / 2, (B,)
        return (-torch.log(s) * m).mean()  # 1/B sum_i -log(s_i) M_i


# ----------------------------------------------------------------------------------------------
# distillation
# ----------------------------------------------------------------------------------------------
def _without_own_column(m, first):
    """(B, N) -> (B, N - 1): row k without column first + k, its own row in the global batch (order kept); an
    index gather, so the shape never depends on values (no host sync)."""
    b, n = m.shape
    cols = torch.arange(n - 1, device=m.device).expand(b, n - 1)  # (B, N-1)
    own = (first + torch.arange(b, device=m.device))[:, None]  # (B, 1)
    return m.gather(1, cols + (cols >= own).long())  # column j < own stays j, j >= own reads j + 1


def distillation_kl(
    student, teacher, temperature_student=OFFICIAL_TEMPERATURE, temperature_teacher=OFFICIAL_TEMPERATURE
):
    """Relational distillation: match the student's in-batch similarity distribution to the teacher's.

    For N embeddings of each model, row i's distribution over the other N - 1 rows is::

        p_S(j | i) = softmax_{j != i}( cos(student_i, student_j) / temperature_student )
        p_T(j | i) = softmax_{j != i}( cos(teacher_i, teacher_j) / temperature_teacher )
        loss = 1/N * sum_i KL(p_T(. | i) || p_S(. | i))
             = 1/N * sum_i sum_{j != i} p_T(j | i) * (log p_T(j | i) - log p_S(j | i))

    The diagonal is excluded from both softmaxes (not merely masked), so there is no ``0 * log 0``.
    The teacher is a constant (detached): no gradient reaches it. Because only similarities are
    compared, student and teacher may have different widths (e.g. the teacher = the sum of the twin
    towers' [CLS] vectors, the student = one tower's [CLS]).

    This is the project's own design: the paper and its code release do not publish the
    distillation loss of JTCSE-D, only that the teacher is the sum of the twin [CLS] vectors.

    References: relational knowledge distillation in the spirit of Park et al., "Relational Knowledge
    Distillation" (arXiv 1904.05068) and of the in-batch similarity distillation of DistilCSE-style methods.

    Relations: sentence-transformers' ``DistillKLDivLoss`` matches KL divergences of query-to-candidate score
    distributions given by a teacher's scores in the data; here both distributions are computed in the batch,
    over every other row, and only similarities are compared (no ``MSELoss`` on the vectors).

    Args:
        student: ``(N, Hs)`` student embeddings, N >= 2.
        teacher: ``(N, Ht)`` teacher embeddings of the same N inputs.
        temperature_student, temperature_teacher: softmax temperatures.

    Returns:
        0-d tensor (>= 0, 0 iff the two row distributions agree); float32 for half-precision inputs.
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher must be (N, H) with the same N; got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[0] * distributed.world_size() < 2:
        raise ValueError("distillation_kl needs N >= 2 rows (a row's distribution is over the other rows)")
    _check_temperature("temperature_student", temperature_student)
    _check_temperature("temperature_teacher", temperature_teacher)
    dtype = _compute_dtype(student, teacher)
    with _autocast_off(student):
        zs = _unit_rows(student, dtype)  # (B, Hs), this rank's rows (all of them in one process)
        zt = _unit_rows(teacher.detach(), dtype)  # (B, Ht), constant
        first = distributed.rank() * zs.shape[0]  # global index of this rank's first row
        all_s, all_t = distributed.gather(zs), distributed.gather_constant(zt)  # (N, Hs), (N, Ht)
        log_ps = F.log_softmax(_without_own_column(zs @ all_s.T / temperature_student, first), dim=-1)  # (B, N-1)
        log_pt = F.log_softmax(_without_own_column(zt @ all_t.T / temperature_teacher, first), dim=-1)  # (B, N-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()  # 1/N sum_i sum_j p_T (log p_T - log p_S)


# ----------------------------------------------------------------------------------------------
# the objectives: each stage's total loss
# ----------------------------------------------------------------------------------------------
# Every objective takes the rows of one batch as the model returns them, ``[view1; view2]`` stacked
# (2B rows: the B sentences of the batch fed twice, dropout makes the two views), splits them with
# ``.chunk(2)``, and returns ``(loss, terms)``: the weighted total and a dict of the unweighted terms by
# name (the names the training log uses).


def simcse_objective(cls, temperature=OFFICIAL_TEMPERATURE):
    """Stage 1, unsupervised SimCSE of one encoder, with SimCSE's own loss (``simcse_loss``, its ``cl_forward``)::

        L_SimCSE = 1/B sum_i -log softmax_j(cos(z1_i, z2_j) / tau)_i      z1, z2 = the [CLS] rows of view 1, view 2

    Args:
        cls: ``(2B, H)`` [CLS] vectors, rows ``[view1; view2]``.
        temperature: tau of the NT-Xent.

    Returns:
        ``(loss, {"nce": loss})``.

    References: Gao, Yao, Chen, "SimCSE", EMNLP 2021 (arXiv 2104.08821), section 3; the JTCSE/TNCSE
    stage-1 encoders are trained this way (docs/paper.md, "Training recipe").
    """
    view1, view2 = cls.chunk(2)  # (B, H) each
    nce = simcse_loss(view1, view2, temperature)  # view-1 anchors, B - 1 negatives (stage 2's NCE: nt_xent)
    return nce, {"nce": nce}


@dataclass(frozen=True)
class TwinWeights:
    """The weight of each term of ``twin_objective`` (the official code: all 1; 0 switches a term off)."""

    nce: float = 1.0  # NCE(A) + NCE(B)
    cross_cls: float = 1.0  # ICNCE on the towers' [CLS]
    cross_attention: float = 1.0  # ICNCE on the cross-attention [CLS] (JTCSE only)
    modulus: float = 1.0  # ICTM(A, B) + ICTM(B, A)


def twin_objective(cls_a, cls_b, pooled_a=None, pooled_b=None, cross_a=None, cross_b=None, *,
                   weights=TwinWeights(), temperature=OFFICIAL_TEMPERATURE, modulus_variant="official",
                   b_to_a=False):
    """Stage 2, the joint loss of the twin towers (TNCSE without, JTCSE with the cross-attention branch)::

        L = w_nce   * (NCE(a) + NCE(b))                          each tower's NT-Xent
          + w_cross * ICNCE_d(a, b)                              cross-tower NT-Xent on the towers' [CLS]
          + w_attn  * ICNCE_d(a~, b~)                            ... on the cross-attention [CLS] (JTCSE)
          + w_mod   * (ICTM(a1, b2; P) + ICTM(b1, a2; P))        tensor-modulus term, both directions

    with ``a, b`` the towers' [CLS] rows, ``a~, b~`` the branch's, ``P`` the pooler outputs (official
    ICTM) and ``d`` the direction of both ICNCE terms: A -> B, or B -> A when ``b_to_a`` (JTCSE draws
    it at random each step, TNCSE always uses A -> B). A term whose weight is 0 is not computed; the
    cross-attention term only when ``cross_a``/``cross_b`` are given.

    Args:
        cls_a, cls_b: ``(2B, H)`` [CLS] rows of tower A and B, ``[view1; view2]``.
        pooled_a, pooled_b: ``(2B, H)`` pooler outputs (needed by ``modulus_variant="official"``).
        cross_a, cross_b: ``(2B, H)`` cross-attention [CLS] rows, or None (no branch).
        weights: ``TwinWeights``.
        temperature: tau of every NT-Xent term.
        modulus_variant: ``"official"`` or ``"paper"`` (see ``tensor_modulus_loss``).
        b_to_a: the ICNCE direction.

    Returns:
        ``(loss, terms)`` with terms ``nce_a``, ``nce_b``, ``cross_cls``, ``cross_attention``, ``modulus``
        (the sum of both ICTM directions), each present when computed.

    Raises:
        ValueError: every term is switched off.

    References: JTCSE (arXiv 2505.02366) and TNCSE (arXiv 2503.12739); the official ``model_dual.py``
    (``unsup_infonce_loss``, ``icnce``, ``LTN_loss``), summarised in docs/paper.md, "Losses".
    """
    a1, a2 = cls_a.chunk(2)  # tower A, view 1 and view 2: (B, H) each
    b1, b2 = cls_b.chunk(2)
    loss = torch.zeros((), device=cls_a.device)
    terms = {}
    if weights.nce > 0:
        terms["nce_a"], terms["nce_b"] = nt_xent(a1, a2, temperature), nt_xent(b1, b2, temperature)
        loss = loss + weights.nce * (terms["nce_a"] + terms["nce_b"])  # w_nce (NCE(a) + NCE(b))
    if weights.cross_cls > 0:
        x, y = ((b1, b2), (a1, a2)) if b_to_a else ((a1, a2), (b1, b2))  # anchors x, candidates y
        terms["cross_cls"] = cross_nt_xent(*x, *y, temperature=temperature)
        loss = loss + weights.cross_cls * terms["cross_cls"]  # w_cross ICNCE_d(a, b)
    if cross_a is not None and cross_b is not None and weights.cross_attention > 0:
        ca, cb = cross_a.chunk(2), cross_b.chunk(2)
        x, y = (cb, ca) if b_to_a else (ca, cb)
        terms["cross_attention"] = cross_nt_xent(*x, *y, temperature=temperature)
        loss = loss + weights.cross_attention * terms["cross_attention"]  # w_attn ICNCE_d(a~, b~)
    if weights.modulus > 0:
        pa = pooled_a.chunk(2) if pooled_a is not None else (None, None)
        pb = pooled_b.chunk(2) if pooled_b is not None else (None, None)
        v = modulus_variant
        terms["modulus"] = (tensor_modulus_loss(a1, b2, pa[0], pb[1], variant=v)  # ICTM(A, B)
                            + tensor_modulus_loss(b1, a2, pb[0], pa[1], variant=v))  # ICTM(B, A)
        loss = loss + weights.modulus * terms["modulus"]  # w_mod (ICTM(A, B) + ICTM(B, A))
    if not terms:
        raise ValueError("every term of the twin objective has weight 0")
    return loss, terms


def distill_objective(cls, teacher, alpha=1.0, temperature=OFFICIAL_TEMPERATURE,
                      temperature_student=OFFICIAL_TEMPERATURE, temperature_teacher=OFFICIAL_TEMPERATURE):
    """JTCSE-D, one student tower distilled from the frozen twin (this companion's design)::

        L_D = SimCSE(s) + alpha * KL(p_T || p_S)     p = in-batch similarity softmax of view 1's rows

    The student continues as a SimCSE encoder (``simcse_loss``, as stage 1 trains it: the TNCSE supplement tunes
    distillation like a stage-1 encoder) with the teacher's similarity distribution added.

    Args:
        cls: ``(2B, H)`` the student's [CLS] rows, ``[view1; view2]``.
        teacher: ``(B, Ht)`` the teacher's embeddings of the same B sentences (``CLS_A + CLS_B`` of the twin,
            without dropout); constant.
        alpha: weight of the distillation term (0: the student is trained with SimCSE alone).
        temperature: tau of the student's SimCSE loss; temperature_student, temperature_teacher: of the KL.

    Returns:
        ``(loss, {"nce", "distill"})`` (``distill`` only when alpha > 0).

    Relations: with ``alpha = 0`` this is ``simcse_objective``. References: the teacher is the official
    ``teacher_model`` (sum of the twin [CLS]); the paper does not publish the loss (docs/paper.md).
    """
    view1, view2 = cls.chunk(2)
    terms = {"nce": simcse_loss(view1, view2, temperature)}
    loss = terms["nce"]
    if alpha > 0:
        terms["distill"] = distillation_kl(view1, teacher, temperature_student, temperature_teacher)
        loss = loss + alpha * terms["distill"]  # SimCSE(s) + alpha KL(p_T || p_S)
    return loss, terms

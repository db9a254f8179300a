"""Tests of jtcse_lib.losses against slow, obviously-correct loop references.

The references below follow the official semantics literally: they build the *interleaved* list of
rows (s1v1, s1v2, s2v1, s2v2, ...), loop over rows, take the partner view ``i + 1`` / ``i - 1`` as the
target, do the log-sum-exp by hand, and (for the tensor-modulus term) branch in Python with
``if s < 0: s = 1e-4``. Everything is compared in float64 at 1e-10, values and gradients.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from jtcse_lib import losses
from jtcse_lib.losses import (
    cross_nt_xent,
    distillation_kl,
    modulus_gap,
    nt_xent,
    simcse_loss,
    tensor_modulus_loss,
)

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = torch.float64
TAU = 0.05


# ==============================================================================================
# slow references (loops over the interleaved layout)
# ==============================================================================================
def interleave(view1, view2):
    """[s1v1, s1v2, s2v1, s2v2, ...] as a Python list of (H,) rows."""
    rows = []
    for s in range(view1.shape[0]):
        rows.append(view1[s])
        rows.append(view2[s])
    return rows


def partner(i):
    """Index of the other view of the same sentence in the interleaved layout."""
    return i + 1 if i % 2 == 0 else i - 1


def dot(u, v):
    return (u * v).sum()


def ref_norm(v):
    """Euclidean norm; at the origin: value 0 and gradient 0 (the subgradient torch's norm uses)."""
    if bool((v == 0).all()):
        return (v * 0).sum()
    return torch.sqrt(dot(v, v))


def ref_cos(u, v):
    return dot(u, v) / (torch.sqrt(dot(u, u)) * torch.sqrt(dot(v, v)))


def ref_logsumexp(values):
    """log sum_j exp(values_j) for a 1-D tensor, by hand (the shift m cancels analytically)."""
    m = values.max().detach()
    return m + torch.log(torch.exp(values - m).sum())


def ref_unit_rows(rows):
    return torch.stack([r / torch.sqrt(dot(r, r)) for r in rows])


def ref_partner_nce(anchor_rows, candidate_rows, temperature):
    """Official NT-Xent semantics: anchor row i against all candidate rows j != i, target partner(i).

    For each anchor the similarities to the candidates are one matrix-vector product of unit rows
    (the dot products with every candidate); the loop over anchors, the exclusion of j = i, the
    target and the log-sum-exp are explicit.
    """
    n = len(anchor_rows)
    ua = ref_unit_rows(anchor_rows)  # (2B, H)
    uc = ref_unit_rows(candidate_rows)  # (2B, H)
    total = 0.0
    for i in range(n):
        sims = uc @ ua[i] / temperature  # cos(a_i, c_j) / tau for every j, (2B,)
        logits = torch.cat([sims[:i], sims[i + 1 :]])  # drop j = i
        target = sims[partner(i)]
        total = total + (ref_logsumexp(logits) - target)  # -log softmax at the partner
    return total / n


def ref_nt_xent(view1, view2, temperature=TAU):
    rows = interleave(view1, view2)
    return ref_partner_nce(rows, rows, temperature)


def ref_cross_nt_xent(a1, a2, b1, b2, temperature=TAU):
    return ref_partner_nce(interleave(a1, a2), interleave(b1, b2), temperature)


def ref_l_tn(x, y):
    """||x - y|| / (||x|| + ||y||) for two (H,) vectors; 0 when both are zero."""
    den = ref_norm(x) + ref_norm(y)
    if float(den.detach()) == 0.0:
        return (x * 0).sum() + (y * 0).sum()
    return ref_norm(x - y) / den


def ref_modulus_gap(x, y):
    return torch.stack([ref_l_tn(x[i], y[i]) for i in range(x.shape[0])])


def ref_official_ltn(cls_a1, cls_a2, cls_b1, cls_b2, pool_a1, pool_a2, pool_b1, pool_b2):
    """The official LTN_loss(A_cls, B_cls, A_pool, B_pool) on interleaved rows of two towers.

    Even row i (sentence i/2, view 1 of tower A) is paired with row i + 1 of tower B (same sentence,
    view 2); a negative cosine is replaced by the constant 1e-4; the sum is divided by 2B / 2.
    """
    a_l, b_l = interleave(cls_a1, cls_a2), interleave(cls_b1, cls_b2)
    a_p, b_p = interleave(pool_a1, pool_a2), interleave(pool_b1, pool_b2)
    total = 0.0
    for i in range(len(a_l)):
        if i % 2 == 0:
            s = ref_cos(a_l[i], b_l[i + 1])
            if s < 0.0:
                s = torch.tensor(1e-4, dtype=F64)  # constant: no gradient
            m = torch.sqrt(dot(a_p[i] - b_p[i + 1], a_p[i] - b_p[i + 1])) / (
                torch.sqrt(dot(a_p[i], a_p[i])) + torch.sqrt(dot(b_p[i + 1], b_p[i + 1]))
            ) / 2.0
            total = total + (-torch.log(s)) * m
    return total / (len(a_l) / 2)


def ref_distillation_kl(student, teacher, ts=TAU, tt=TAU):
    n = student.shape[0]
    us = ref_unit_rows(list(student))
    ut = ref_unit_rows(list(teacher.detach()))
    total = 0.0
    for i in range(n):
        ls = us @ us[i] / ts  # (N,)
        lt = ut @ ut[i] / tt
        ls = torch.cat([ls[:i], ls[i + 1 :]])  # drop j = i
        lt = torch.cat([lt[:i], lt[i + 1 :]])
        log_ps = ls - ref_logsumexp(ls)
        log_pt = lt - ref_logsumexp(lt)
        total = total + (torch.exp(log_pt) * (log_pt - log_ps)).sum()
    return total / n


# official formulas (broadcast cosine matrix, -1e12 on the diagonal), written from the paper's text
def official_formula_nce(y1, y2, temp=TAU):
    n = y1.shape[0]
    target = torch.arange(n)
    target = target - target % 2 * 2 + 1
    sim = F.cosine_similarity(y1.unsqueeze(1), y2.unsqueeze(0), dim=-1)
    sim = (sim - torch.eye(n, dtype=y1.dtype) * 1e12) / temp
    return F.cross_entropy(sim, target)


def stack_interleaved(v1, v2):
    return torch.stack([v1, v2], dim=1).reshape(-1, v1.shape[1])


# ==============================================================================================
# helpers
# ==============================================================================================
def leaves(*shapes, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g, dtype=F64) * scale).requires_grad_() for s in shapes]


def correlated_views(b, h, seed, noise=0.3):
    """Two views that agree more with each other than with other sentences (like dropout views)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, h, generator=g, dtype=F64)
    v1 = (base + noise * torch.randn(b, h, generator=g, dtype=F64)).requires_grad_()
    v2 = (base + noise * torch.randn(b, h, generator=g, dtype=F64)).requires_grad_()
    return v1, v2


def assert_same_value_and_grads(fast, ref, inputs):
    assert torch.isfinite(fast).all() and torch.isfinite(ref).all()
    torch.testing.assert_close(fast, ref, **TOL)
    g_fast = torch.autograd.grad(fast, inputs, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True)
    for gf, gr in zip(g_fast, g_ref):
        gf = torch.zeros_like(gr) if gf is None and gr is not None else gf
        gr = torch.zeros_like(gf) if gr is None and gf is not None else gr
        if gf is None:
            continue
        assert torch.isfinite(gf).all()
        torch.testing.assert_close(gf, gr, **TOL)
    return g_fast


# ==============================================================================================
# nt_xent
# ==============================================================================================
@pytest.mark.parametrize("b,h", [(1, 5), (2, 5), (7, 6), (256, 24)])
def test_nt_xent_matches_loop_reference(b, h):
    torch.manual_seed(0)
    v1, v2 = leaves((b, h), (b, h), seed=b)
    assert_same_value_and_grads(nt_xent(v1, v2), ref_nt_xent(v1, v2), [v1, v2])


def test_nt_xent_matches_loop_reference_correlated_views_other_temperature():
    v1, v2 = correlated_views(9, 8, seed=1)
    assert_same_value_and_grads(nt_xent(v1, v2, 0.2), ref_nt_xent(v1, v2, 0.2), [v1, v2])


def test_nt_xent_matches_official_formula_on_interleaved_rows():
    v1, v2 = correlated_views(6, 10, seed=2)
    y = stack_interleaved(v1, v2)
    torch.testing.assert_close(nt_xent(v1, v2), official_formula_nce(y, y), **TOL)


def test_nt_xent_single_sentence_is_zero():
    # B = 1: each row's only candidate is its partner, so its softmax is 1 on the target: loss 0.
    v1, v2 = leaves((1, 4), (1, 4), seed=3)
    loss = nt_xent(v1, v2)
    assert loss.abs().item() < 1e-14
    for g in torch.autograd.grad(loss, [v1, v2]):
        assert g.abs().max().item() < 1e-12


def test_nt_xent_closed_form_for_orthogonal_sentences():
    # both views = e_s: partner logit 1/tau, the 2B - 2 negatives have logit 0.
    b, tau = 5, 0.1
    e = torch.eye(b, 8, dtype=F64)
    expected = math.log(math.exp(1 / tau) + 2 * b - 2) - 1 / tau
    torch.testing.assert_close(nt_xent(e, e.clone(), tau), torch.tensor(expected, dtype=F64), **TOL)


def test_nt_xent_symmetric_in_views_and_scale_invariant():
    v1, v2 = correlated_views(8, 6, seed=4)
    base = nt_xent(v1, v2)
    torch.testing.assert_close(nt_xent(v2, v1), base, **TOL)
    torch.testing.assert_close(nt_xent(3.0 * v1, 0.5 * v2), base, **TOL)


def test_nt_xent_shape_errors():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)


# ==============================================================================================
# simcse_loss (stage 1: SimCSE's cl_forward)
# ==============================================================================================
def ref_cl_forward(z1, z2, temp=TAU):
    """A loop transcription of unsupervised SimCSE's ``cl_forward`` (princeton-nlp/SimCSE, simcse/models.py):
    ``cos_sim = Similarity(temp)(z1.unsqueeze(1), z2.unsqueeze(0))``, ``labels = arange(B)``, cross-entropy."""
    b = z1.shape[0]
    total = 0.0
    for i in range(b):
        sims = torch.stack([ref_cos(z1[i], z2[j]) / temp for j in range(b)])  # one row of the (B, B) logits
        total = total + (ref_logsumexp(sims) - sims[i])  # -log softmax at the label i
    return total / b


@pytest.mark.parametrize("b,h", [(1, 5), (2, 5), (7, 6), (64, 24)])
def test_simcse_loss_matches_a_loop_transcription_of_cl_forward(b, h):
    v1, v2 = leaves((b, h), (b, h), seed=300 + b)
    assert_same_value_and_grads(simcse_loss(v1, v2), ref_cl_forward(v1, v2), [v1, v2])


def test_simcse_loss_is_sentence_transformers_mnrl_on_sentence_pairs():
    """sentence-transformers documents unsupervised SimCSE as MultipleNegativesRankingLoss on (s, s) pairs."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    v1, v2 = correlated_views(9, 16, seed=11)
    mnrl = MultipleNegativesRankingLoss(None, scale=1 / TAU).compute_loss_from_embeddings([v1, v2], None)
    assert_same_value_and_grads(simcse_loss(v1, v2), mnrl, [v1, v2])


def test_simcse_loss_is_one_directional_and_not_the_simclr_form():
    v1, v2 = correlated_views(8, 12, seed=12)
    assert abs(simcse_loss(v1, v2).item() - simcse_loss(v2, v1).item()) > 1e-6  # view 1 anchors only
    assert abs(simcse_loss(v1, v2).item() - nt_xent(v1, v2).item()) > 1e-3  # B - 1 negatives, not 2B - 2
    one1, one2 = leaves((1, 4), (1, 4), seed=13)
    assert simcse_loss(one1, one2).item() == 0.0  # the positive is the only candidate


def test_simcse_loss_in_half_precision_is_computed_in_float32():
    v1, v2 = (t.detach().to(torch.bfloat16) for t in correlated_views(6, 8, seed=14))
    out = simcse_loss(v1, v2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, simcse_loss(v1.float(), v2.float()))


# ==============================================================================================
# cross_nt_xent
# ==============================================================================================
def test_nt_xent_is_sentence_transformers_mnrl_with_same_view_negatives_both_ways():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(7, 16, generator=g, dtype=F64), torch.randn(7, 16, generator=g, dtype=F64)
    mnrl = MultipleNegativesRankingLoss(None, scale=1 / TAU, directions=("query_to_doc", "query_to_query"))
    both = (mnrl.compute_loss_from_embeddings([v1, v2], None) + mnrl.compute_loss_from_embeddings([v2, v1], None)) / 2
    torch.testing.assert_close(nt_xent(v1, v2, TAU), both, **TOL)


@pytest.mark.parametrize("b,h", [(1, 5), (2, 5), (7, 6), (256, 24)])
def test_cross_nt_xent_matches_loop_reference(b, h):
    torch.manual_seed(0)
    a1, a2, b1, b2 = leaves((b, h), (b, h), (b, h), (b, h), seed=100 + b)
    assert_same_value_and_grads(
        cross_nt_xent(a1, a2, b1, b2), ref_cross_nt_xent(a1, a2, b1, b2), [a1, a2, b1, b2]
    )


def test_cross_nt_xent_matches_official_formula_and_is_directional():
    a1, a2 = correlated_views(6, 10, seed=5)
    b1, b2 = correlated_views(6, 10, seed=6)
    ya, yb = stack_interleaved(a1, a2), stack_interleaved(b1, b2)
    ab = cross_nt_xent(a1, a2, b1, b2)
    ba = cross_nt_xent(b1, b2, a1, a2)
    torch.testing.assert_close(ab, official_formula_nce(ya, yb), **TOL)
    torch.testing.assert_close(ba, official_formula_nce(yb, ya), **TOL)
    assert abs(ab.item() - ba.item()) > 1e-6  # A -> B and B -> A differ


def test_cross_nt_xent_of_a_tower_with_itself_is_nt_xent():
    v1, v2 = correlated_views(10, 7, seed=7)
    torch.testing.assert_close(cross_nt_xent(v1, v2, v1, v2), nt_xent(v1, v2), **TOL)


# ==============================================================================================
# modulus_gap (l_TN)
# ==============================================================================================
def constructed_pair(k, t, h=6, seed=0):
    """x random; y with ||y|| = k ||x|| and cos(x, y) = t (exactly, up to rounding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(h, generator=g, dtype=F64)
    w = torch.randn(h, generator=g, dtype=F64)
    xh = x / x.norm()
    perp = w - (w @ xh) * xh
    perp = perp / perp.norm()
    y = k * x.norm() * (t * xh + math.sqrt(max(0.0, 1.0 - t * t)) * perp)
    return x, y


KS = [0.05, 0.5, 1.0, 1.7, 10.0]
TS = [-1.0, -0.6, 0.0, 0.25, 0.9, 1.0]


def test_modulus_gap_analytic_formula():
    xs, ys, expected = [], [], []
    for i, k in enumerate(KS):
        for j, t in enumerate(TS):
            x, y = constructed_pair(k, t, seed=10 * i + j)
            xs.append(x)
            ys.append(y)
            expected.append(math.sqrt(1 + k * k - 2 * k * t) / (1 + k))
    got = modulus_gap(torch.stack(xs), torch.stack(ys))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), **TOL)


def test_modulus_gap_at_t_equal_one_and_bounds():
    x = torch.randn(len(KS), 5, dtype=F64)
    k = torch.tensor(KS, dtype=F64)
    y = k[:, None] * x  # same direction, norm ratio k
    torch.testing.assert_close(modulus_gap(x, y), (1 - k).abs() / (1 + k), **TOL)
    # bounded by 1, reached for opposite directions and when one vector is zero
    torch.manual_seed(8)
    a, b = torch.randn(500, 4, dtype=F64), torch.randn(500, 4, dtype=F64) * torch.rand(500, 1, dtype=F64) * 5
    gap = modulus_gap(a, b)
    assert (gap >= 0).all() and (gap <= 1 + 1e-15).all()
    torch.testing.assert_close(modulus_gap(a, -2.5 * a), torch.ones(500, dtype=F64), **TOL)
    torch.testing.assert_close(modulus_gap(a, torch.zeros_like(a)), torch.ones(500, dtype=F64), **TOL)


def test_modulus_gap_zero_iff_identical():
    torch.manual_seed(9)
    x = torch.randn(50, 8, dtype=F64)
    assert (modulus_gap(x, x.clone()) == 0).all()
    assert modulus_gap(torch.zeros(1, 8, dtype=F64), torch.zeros(1, 8, dtype=F64)).item() == 0.0
    near = x + 1e-6 * torch.randn(50, 8, dtype=F64)
    assert (modulus_gap(x, near) > 0).all()
    assert (modulus_gap(x, 1.001 * x) > 0).all()  # same direction, different modulus: cosine is blind, l_TN is not


def test_modulus_gap_scale_invariant():
    x, y = leaves((20, 6), (20, 6), seed=10)
    torch.testing.assert_close(modulus_gap(7.0 * x, 7.0 * y), modulus_gap(x, y), **TOL)


def test_modulus_gap_matches_reference_with_zero_vectors():
    x, y = leaves((12, 5), (12, 5), seed=11)
    with torch.no_grad():
        x[0] = 0  # x zero
        y[1] = 0  # y zero
        x[2] = 0  # both zero
        y[2] = 0
        y[3] = x[3]  # identical
        y[4] = -x[4]  # opposite
    gap = modulus_gap(x, y)
    assert gap[0].item() == 1.0 and gap[1].item() == 1.0 and gap[2].item() == 0.0 and gap[3].item() == 0.0
    weights = torch.linspace(0.5, 2.0, 12, dtype=F64)  # a non-uniform upstream gradient
    grads = assert_same_value_and_grads((gap * weights).sum(), (ref_modulus_gap(x, y) * weights).sum(), [x, y])
    assert (grads[0][2] == 0).all() and (grads[1][2] == 0).all()


# ==============================================================================================
# tensor_modulus_loss
# ==============================================================================================
def towers(b, h, seed):
    """cls_a1, cls_a2, cls_b1, cls_b2, pool_a1, pool_a2, pool_b1, pool_b2 (each (b, h)).

    In both JTCSE pairs (a1, b2) and (b1, a2) the first third of the sentences gets a clearly positive
    cosine, the second third a clearly negative one, the rest is independent noise (either sign).
    """
    ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2 = leaves(*[(b, h)] * 8, seed=seed)
    third = b // 3
    with torch.no_grad():
        for x, y in ((ca1, cb2), (cb1, ca2)):
            y[:third] += 2.0 * x[:third]
            y[third : 2 * third] -= 2.0 * x[third : 2 * third]
    return ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2


def pair_cos(x, y):
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))


@pytest.mark.parametrize("b,h", [(1, 4), (2, 4), (8, 6), (256, 24)])
def test_tensor_modulus_official_matches_official_loop(b, h):
    torch.manual_seed(0)
    ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2 = towers(b, h, seed=200 + b)
    if b >= 8:
        s = pair_cos(ca1, cb2)
        assert (s < 0).sum() >= 2 and (s > 0).sum() >= 2  # both branches exercised
    fast = tensor_modulus_loss(ca1, cb2, pa1, pb2, variant="official")
    ref = ref_official_ltn(ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2)
    grads = assert_same_value_and_grads(fast, ref, [ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2])
    # view 2 of tower A and view 1 of tower B do not enter this direction
    for unused in (grads[1], grads[2], grads[5], grads[6]):
        assert unused is None


def test_tensor_modulus_official_both_directions_as_in_jtcse():
    ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2 = towers(16, 6, seed=300)
    fast = tensor_modulus_loss(ca1, cb2, pa1, pb2) + tensor_modulus_loss(cb1, ca2, pb1, pa2)
    ref = ref_official_ltn(ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2) + ref_official_ltn(
        cb1, cb2, ca1, ca2, pb1, pb2, pa1, pa2
    )
    assert_same_value_and_grads(fast, ref, [ca1, ca2, cb1, cb2, pa1, pa2, pb1, pb2])


def test_tensor_modulus_official_replaced_cosines_have_exactly_zero_gradient():
    ca1, _, _, cb2, pa1, _, _, pb2 = towers(64, 6, seed=400)
    with torch.no_grad():
        cb2[:8] = -ca1[:8] * 2.0 + 0.01 * cb2[:8]  # surely negative cosines
        cb2[8:16] = ca1[8:16] * 0.7 + 0.01 * cb2[8:16]  # surely positive cosines
    s = pair_cos(ca1, cb2).detach()
    neg, pos = s < 0, s > 0
    assert neg[:8].all() and pos[8:16].all()
    loss = tensor_modulus_loss(ca1, cb2, pa1, pb2)
    g_a, g_p, g_pa, g_pb = torch.autograd.grad(loss, [ca1, cb2, pa1, pb2])
    assert (g_a[neg] == 0).all() and (g_p[neg] == 0).all()  # exactly zero, not just small
    assert (g_a[pos].abs().sum(-1) > 0).all() and (g_p[pos].abs().sum(-1) > 0).all()
    # the modulus factor still gets its gradient on the replaced rows: -log(1e-4) * dM / B
    assert (g_pa[neg].abs().sum(-1) > 0).all() and (g_pb[neg].abs().sum(-1) > 0).all()
    # and the pooled gradient is that of sum_i w_i * M_i / B with the constant weight w_i = -log(s_i)
    w = -torch.log(torch.where(neg, torch.full_like(s, 1e-4), s))
    weighted = (w * ref_modulus_gap(pa1, pb2) / 2).sum() / 64
    e_pa, e_pb = torch.autograd.grad(weighted, [pa1, pb2])
    torch.testing.assert_close(g_pa, e_pa, **TOL)
    torch.testing.assert_close(g_pb, e_pb, **TOL)


def test_tensor_modulus_official_values_on_constructed_pairs():
    # cos 0.5 -> -log(0.5); cos -0.5 -> -log(1e-4); cos 5e-5 (positive, below 1e-4) is kept as is.
    cls = [constructed_pair(1.0, 0.5, seed=1), constructed_pair(1.0, -0.5, seed=2), constructed_pair(3.0, 5e-5, seed=3)]
    pooled = [
        constructed_pair(2.0, 1.0, seed=4),
        constructed_pair(1.0, 0.0, seed=5),
        constructed_pair(0.5, -1.0, seed=6),
    ]
    l_tn = [1 / 3, math.sqrt(2) / 2, 1.0]  # of the pooled pairs: |1-k|/(1+k); sqrt(2)/2; opposite -> 1
    anchor = torch.stack([c[0] for c in cls]).requires_grad_()
    positive = torch.stack([c[1] for c in cls]).requires_grad_()
    pooled_a, pooled_p = torch.stack([p[0] for p in pooled]), torch.stack([p[1] for p in pooled])
    got = tensor_modulus_loss(anchor, positive, pooled_a, pooled_p)
    expected = sum(-math.log(s) * m / 2 for s, m in zip([0.5, 1e-4, 5e-5], l_tn)) / 3
    assert abs(got.item() - expected) < 1e-10
    g_a, g_p = torch.autograd.grad(got, [anchor, positive])
    assert (g_a[1] == 0).all() and (g_p[1] == 0).all()  # replaced
    # kept, including the tiny positive cosine, where d(-log s)/ds = -1/s is large
    assert g_a[0].abs().sum() > 0 and g_a[2].abs().sum() > 1.0


@pytest.mark.parametrize("b", [1, 9, 256])
def test_tensor_modulus_paper_matches_reference_with_zero_vectors(b):
    x, y = leaves((b, 5), (b, 5), seed=500 + b)
    if b >= 9:
        with torch.no_grad():
            x[0] = 0
            y[1] = 0
            x[2] = 0
            y[2] = 0
            y[3] = x[3]
    fast = tensor_modulus_loss(x, y, None, None, variant="paper")
    ref = ref_modulus_gap(x, y).mean()
    assert_same_value_and_grads(fast, ref, [x, y])


def test_tensor_modulus_paper_ignores_pooled_and_differs_from_official():
    ca1, _, _, cb2, pa1, _, _, pb2 = towers(8, 6, seed=600)
    paper = tensor_modulus_loss(ca1, cb2, pa1, pb2, variant="paper")
    torch.testing.assert_close(paper, tensor_modulus_loss(ca1, cb2, variant="paper"), **TOL)
    assert abs(paper.item() - tensor_modulus_loss(ca1, cb2, pa1, pb2).item()) > 1e-3


def test_tensor_modulus_unknown_variant_and_missing_pooled():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="official.*paper"):
        tensor_modulus_loss(x, x, x, x, variant="tncse")
    with pytest.raises(ValueError):
        tensor_modulus_loss(x, x, variant="official")


# ==============================================================================================
# no host-device synchronisation; half precision
# ==============================================================================================
def test_losses_run_on_meta_tensors_so_nothing_reads_values_on_the_host():
    # A data-dependent Python branch or .item() raises on the meta device (there are no values).
    b, h = 8, 16
    t = [torch.empty(b, h, device="meta", requires_grad=True) for _ in range(4)]
    for loss in (
        tensor_modulus_loss(t[0], t[1], t[2], t[3], variant="official"),
        tensor_modulus_loss(t[0], t[1], variant="paper"),
        nt_xent(t[0], t[1]),
        cross_nt_xent(*t),
        distillation_kl(t[0], t[1]),
    ):
        assert loss.device.type == "meta" and loss.shape == ()
        loss.backward()
    with pytest.raises(Exception):  # noqa: B017 -- the check can fail: the official-style loop cannot run on meta
        ref_official_ltn(*(torch.empty(2, 3, device="meta") for _ in range(8)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensor_modulus_official_no_sync_on_cuda():
    x = [torch.randn(64, 32, device="cuda", requires_grad=True) for _ in range(4)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = tensor_modulus_loss(*x)
        loss.backward()
        nt_xent(x[0], x[1]).backward()
        cross_nt_xent(*x).backward()
        distillation_kl(x[0], x[1]).backward()
        tensor_modulus_loss(x[0], x[1], variant="paper").backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    v1, v2 = correlated_views(16, 32, seed=12, noise=1.5)  # losses of order 1, not ~0
    p1, p2 = correlated_views(16, 32, seed=13, noise=1.5)
    cases = [
        (nt_xent, (v1, v2)),
        (lambda a, b, c, d: cross_nt_xent(a, b, c, d), (v1, v2, p1, p2)),
        (lambda a, b, c, d: tensor_modulus_loss(a, b, c, d), (v1, v2, p1, p2)),
        (lambda a, b: tensor_modulus_loss(a, b, variant="paper"), (v1, v2)),
        (distillation_kl, (v1, p1)),
    ]
    for fn, args in cases:
        exact = fn(*args).item()
        half = fn(*(a.detach().to(dtype).requires_grad_() for a in args))
        assert half.dtype == torch.float32
        assert abs(half.item() - exact) <= 2e-2 * max(1.0, abs(exact))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fn(*(a.detach().float() for a in args))
        assert auto.dtype == torch.float32
        assert abs(auto.item() - exact) < 1e-5 * max(1.0, abs(exact))  # autocast did not lower the matmuls to bf16


# ==============================================================================================
# distillation_kl
# ==============================================================================================
@pytest.mark.parametrize("n,hs,ht", [(2, 4, 4), (7, 5, 9), (64, 16, 24)])
def test_distillation_kl_matches_loop_reference(n, hs, ht):
    s, t = leaves((n, hs), (n, ht), seed=700 + n)
    fast = distillation_kl(s, t, 0.05, 0.1)
    ref = ref_distillation_kl(s, t, 0.05, 0.1)
    torch.testing.assert_close(fast, ref, **TOL)
    torch.testing.assert_close(torch.autograd.grad(fast, s)[0], torch.autograd.grad(ref, s)[0], **TOL)


def test_distillation_kl_zero_iff_same_distribution_and_no_teacher_gradient():
    s, t = leaves((12, 8), (12, 8), seed=800)
    same = distillation_kl(s, s.detach().clone().requires_grad_())
    assert abs(same.item()) < 1e-12
    assert abs(distillation_kl(s, 4.0 * s.detach()).item()) < 1e-12  # cosine-based: scale does not matter
    assert distillation_kl(s, s.detach(), 0.05, 0.2).item() > 1e-3  # different temperatures: different distributions
    loss = distillation_kl(s, t)
    assert loss.item() > 1e-3
    g_s, g_t = torch.autograd.grad(loss, [s, t], allow_unused=True)
    assert g_t is None  # the teacher is a constant
    assert g_s.abs().sum() > 0
    assert not distillation_kl(s.detach(), t).requires_grad  # teacher-only inputs give no graph at all


def test_distillation_kl_needs_two_rows():
    with pytest.raises(ValueError):
        distillation_kl(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError):
        distillation_kl(torch.randn(3, 4), torch.randn(2, 4))


def test_module_exports():
    assert set(losses.TENSOR_MODULUS_VARIANTS) == {"official", "paper"}
    assert losses.OFFICIAL_TEMPERATURE == 0.05


# ==============================================================================================
# the objectives: each stage's total loss, against the terms composed by hand
# ==============================================================================================
def _rows(seed, n=10, h=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, generator=g, dtype=F64)  # (2B, H), rows [view1; view2]


def test_simcse_objective_is_simcses_loss_of_the_two_halves():
    cls = _rows(0)
    loss, terms = losses.simcse_objective(cls, TAU)
    torch.testing.assert_close(loss, ref_cl_forward(cls[:5], cls[5:], TAU), **TOL)  # view 1 anchors, view 2 candidates
    assert list(terms) == ["nce"]


@pytest.mark.parametrize("b_to_a", [False, True])
def test_twin_objective_is_the_weighted_sum_of_its_terms(b_to_a):
    a, b, pa, pb, ca, cb = (_rows(i) for i in range(6))
    w = losses.TwinWeights(nce=0.5, cross_cls=2.0, cross_attention=3.0, modulus=0.25)
    loss, terms = losses.twin_objective(a, b, pa, pb, ca, cb, weights=w, temperature=TAU, b_to_a=b_to_a)
    (x, y), (cx, cy) = ((b, a), (cb, ca)) if b_to_a else ((a, b), (ca, cb))  # (anchors, candidates)
    want = {
        "nce_a": nt_xent(a[:5], a[5:], TAU), "nce_b": nt_xent(b[:5], b[5:], TAU),
        "cross_cls": cross_nt_xent(x[:5], x[5:], y[:5], y[5:], TAU),
        "cross_attention": cross_nt_xent(cx[:5], cx[5:], cy[:5], cy[5:], TAU),
        "modulus": (tensor_modulus_loss(a[:5], b[5:], pa[:5], pb[5:])
                    + tensor_modulus_loss(b[:5], a[5:], pb[:5], pa[5:])),
    }
    assert list(terms) == list(want)
    for name in want:
        torch.testing.assert_close(terms[name], want[name], **TOL)
    total = (0.5 * (want["nce_a"] + want["nce_b"]) + 2.0 * want["cross_cls"] + 3.0 * want["cross_attention"]
             + 0.25 * want["modulus"])
    torch.testing.assert_close(loss, total, **TOL)


def test_twin_objective_drops_switched_off_terms_and_refuses_all_off():
    a, b, pa, pb = (_rows(i) for i in range(4))
    _, terms = losses.twin_objective(a, b, pa, pb, weights=losses.TwinWeights(cross_cls=0.0), temperature=TAU)
    assert set(terms) == {"nce_a", "nce_b", "modulus"}  # no branch given, cross_cls weight 0
    _, paper = losses.twin_objective(a, b, modulus_variant="paper", temperature=TAU)  # the paper's form needs no pooler
    torch.testing.assert_close(paper["modulus"], modulus_gap(a[:5], b[5:]).mean() + modulus_gap(b[:5], a[5:]).mean(),
                               **TOL)
    with pytest.raises(ValueError, match="every term"):
        losses.twin_objective(a, b, weights=losses.TwinWeights(0.0, 0.0, 0.0, 0.0))


def test_distill_objective_with_alpha_zero_is_simcse():
    cls, teacher = _rows(0), _rows(1, n=5, h=9)
    torch.testing.assert_close(losses.distill_objective(cls, None, alpha=0.0, temperature=TAU)[0],
                               losses.simcse_objective(cls, TAU)[0], **TOL)
    loss, terms = losses.distill_objective(cls, teacher, alpha=0.7, temperature=TAU)
    torch.testing.assert_close(loss, terms["nce"] + 0.7 * distillation_kl(cls[:5], teacher), **TOL)

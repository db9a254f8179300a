"""The method diagram (jtcse_lib.figures): drawn by code, naming every part the notebooks explain."""

import matplotlib

matplotlib.use("Agg")

from jtcse_lib.figures import method_figure  # noqa: E402


def test_the_method_figure_names_the_towers_the_branch_every_loss_and_the_stages():
    fig = method_figure(cross_layers=(1, 3), depth=4)
    texts = " | ".join(t.get_text() for t in fig.axes[0].texts)
    for part in ("tower A", "tower B", "shadow [CLS]", "NCE(A) + NCE(B)", "ICNCE(CLS$_A$, CLS$_B$)",
                 "ICNCE(cross$_A$, cross$_B$)", "ICTM(A, B) + ICTM(B, A)", "Stage 1", "Stage 2", "Distillation"):
        assert part in texts, part
    assert texts.count("(cross)") == 2 * 2  # the cross layers asked for, and only those, in each tower
    fig2 = method_figure(cross_layers=(0, 1, 2), depth=3)
    assert " ".join(t.get_text() for t in fig2.axes[0].texts).count("(cross)") == 2 * 3

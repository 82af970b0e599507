"""Previews a newcomer reads at a glance: phase unwrapped where it wrapped (and the title
says so), scale bars in Å, colour bars with units, labelled error curves, and the ground
truth beside a simulated dataset's result."""

import numpy as np
import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine.preview import display_phase, unwrap_phase
from ptyengine.results import preview_figure


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _column(n=48, height=9.0, width=5.0):
    """A heavy column: a Gaussian phase peak of ``height`` rad on a gentle tilt."""
    y, x = np.mgrid[:n, :n]
    return height * np.exp(-((y - n / 2) ** 2 + (x - n / 2.3) ** 2) / (2 * width**2)) \
        + 0.02 * x - 0.5  # fmt: skip


def test_unwrap_recovers_a_smooth_phase_beyond_pi():
    true = _column()
    out = unwrap_phase(_wrap(true))
    np.testing.assert_allclose(out, true, atol=1e-9)  # median in [−π, π): k = 0 here


def test_unwrap_leaves_an_unwrapped_phase_alone():
    true = 0.5 * _column(height=2.0)
    np.testing.assert_allclose(unwrap_phase(true), true, atol=1e-12)
    img, how = display_phase(true)
    assert how == "not wrapped" and np.array_equal(img, true)


def test_display_phase_unwraps_a_column_that_wrapped():
    wrapped = _wrap(_column())  # the column's centre reads low: the "black dot"
    img, how = display_phase(wrapped)
    assert how == "unwrapped"
    assert np.unravel_index(np.argmax(img), img.shape) == np.unravel_index(
        np.argmax(_column()), img.shape)  # fmt: skip


def test_figure_scale_bar_colour_bar_and_labelled_curve():
    import matplotlib.pyplot as plt

    panels = [("phase", _wrap(_column()), {"sampling": (0.25, 0.25), "unit": "rad",
                                           "phase": True}),
              ("error vs iteration", np.array([1.0, 0.5, 0.2]), {"ylabel": "error"})]
    fig = preview_figure(panels, "t")
    try:
        image_ax, curve_ax, bar_ax = fig.axes  # the colour bar is an axes of its own
        assert image_ax.get_title() == "phase, unwrapped"
        texts = [t.get_text() for t in image_ax.texts]
        assert texts == ["2 Å"]  # 48 × 0.25 = 12 Å wide: the bar ≤ 3 Å
        assert bar_ax.get_ylabel() == "rad"
        assert curve_ax.get_xlabel() == "iteration" and curve_ax.get_ylabel() == "error"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("method", ["epie", "icom"])
def test_reconstruct_preview_has_truth_beside_and_units(tmp_path, capsys, monkeypatch,
                                                        method):  # fmt: skip
    from ptyengine import results

    data = tmp_path / "d.zarr"
    assert run(capsys, *TINY_SIMULATION, "-o", data)[0] == 0
    seen = []
    real = results.preview_png

    def spy(path, panels, title=None):
        seen.append(panels)
        return real(path, panels, title)

    monkeypatch.setattr(results, "preview_png", spy)
    extra = ["--iterations", 2, "--batch-size", 4] if method == "epie" else []
    code, _, err = run(capsys, "reconstruct", data, "--method", method, *extra,
                       "-o", tmp_path / "r.zarr")  # fmt: skip
    assert code == 0, err
    panels = seen[0]
    names = [p[0] for p in panels]
    assert names[1] == "ground truth σV, same area"
    truth_opts = panels[1][2]
    assert truth_opts["unit"] == "rad"
    # the same area: the truth spans as many Å as the result's image
    result_extent = np.array(panels[0][1].shape) * np.array(panels[0][2]["sampling"])
    truth_extent = np.array(panels[1][1].shape) * np.array(truth_opts["sampling"])
    np.testing.assert_allclose(truth_extent, result_extent, atol=max(truth_opts["sampling"]))
    for p in panels:
        if np.ndim(p[1]) == 2:
            assert "sampling" in p[2] and "unit" in p[2], p[0]
        else:
            assert p[2].get("ylabel"), p[0]
    assert (tmp_path / "r_preview.png").stat().st_size > 1000

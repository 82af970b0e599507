"""Real detectors: scan–detector rotation and transpose, and a mask of dead/hot pixels,
for the iterative engines (ePIE, ML) and iCOM.

The specimen is a MoS2 monolayer: its projection has neither a four-fold axis, nor a
two-fold one (Mo and S2 columns swap), nor a mirror along the diagonal, so a rotation or
transpose handled with the wrong sense gives a visibly wrong object. (SrTiO3 [001] would
not tell: every one of those operations maps it onto itself.)
"""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from ptyengine import io, metrics, physics
from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import frame
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.reconstruct.icom import icom
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import SimulationParameters, simulate

#: MoS2 [001], 12 × 12 positions at 0.4 Å, 32 × 32 px to 40 mrad, defocused, with a
#: two-fold astigmatism (so that the probe's aberration angles must turn with the frame)
MOS2 = SimulationParameters(structure="mos2", zone_axis=(0, 0, 1), field=(10.95, 9.48),
                            thickness=8.0, scan_step=0.4, scan_size=(4.8, 4.8),
                            max_angle=40.0, detector_pixels=32, defocus=100.0,
                            aberrations={"C12": 40.0, "phi12": 0.5})  # fmt: skip
EPIE = EpieParameters(iterations=12)
# the probe held at the calibration's: these tests are about the frame, and a 180° error
# (the wrong sign of a 90° turn) has a twin solution at the opposite defocus that ML's
# defocus search and refinement partly find (NCC 0.59 where the fixed probe gives 0.10)
ML = MLParameters(iterations=30, refine_probe="none", defocus_search=0)


@pytest.fixture(scope="module")
def mos2(tmp_path_factory):
    """(data, calibration, σ·V ground truth, its sampling) of the noise-free MoS2 set."""
    path = tmp_path_factory.mktemp("detector") / "mos2.zarr"
    simulate(MOS2, str(path))
    with io.open_dataset(path) as ds:
        data, cal = ds.read_rows(0, ds.shape[0]), ds.calibration
        pot, attrs = ds.read_array("ground_truth/potential")
    return data, cal, physics.interaction_constant(cal.energy) * pot, attrs["sampling"]


def _dataset(data, cal, mask=None):
    ds = InMemoryDataset(data, cal, mask=mask)
    ds.metadata = {"simulation": {"dose": None}}  # noise-free intensities (ML's counts)
    return ds


def _ncc(res, mos2) -> float:
    _, cal, truth, sampling = mos2
    g = res.geometry
    return metrics.compare_to_truth(res.phase, g.sampling, g.object_origin, truth, sampling,
                                    k_max=2 * cal.semiangle * 1e-3 / cal.wavelength,
                                    max_shift=1.0,
                                    border=g.window[0] // 2 + int(g.corners.min()))["ncc"]


def _both(ds, mos2) -> tuple[float, float]:
    """NCC with the truth of ePIE's and ML's phase."""
    return _ncc(epie(ds, EPIE), mos2), _ncc(ml(ds, ML), mos2)


@pytest.fixture(scope="module")
def aligned(mos2):
    data, cal, *_ = mos2
    return _both(_dataset(data, cal), mos2)


def _turned(data, cal, quarter_turns: int, transpose: bool):
    """The data as a detector turned by quarter_turns × 90° (np.rot90, counter-clockwise
    on a screen) and then transposed would record them, exactly, and the calibration
    that says so (the detector centre moves with the pixels)."""
    n = cal.detector_shape[0]
    cy, cx = cal.detector_center
    d = np.rot90(data, quarter_turns, axes=(2, 3))
    for _ in range(quarter_turns % 4):  # rot90 takes pixel (y, x) to (n − 1 − x, y)
        cy, cx = n - 1 - cx, cy
    if transpose:
        d = d.transpose(0, 1, 3, 2)
        cy, cx = cx, cy
    return (np.ascontiguousarray(d),
            cal.replace(rotation=90.0 * quarter_turns, transpose=transpose,
                        detector_center=(cy, cx)))  # fmt: skip


@pytest.mark.parametrize("quarter_turns, transpose", [(1, False), (2, False), (3, False),
                                                      (0, True), (1, True)])
def test_turned_and_transposed_detector_reconstructs_like_aligned(mos2, aligned,
                                                                  quarter_turns, transpose):
    """Data turned and transposed exactly (no interpolation of the counts), with the
    calibration's rotation and transpose: ePIE and ML reach the NCC of the aligned data.
    Measured (benchmarks/bench_detector.py): ePIE 0.993 aligned / 0.992-0.993 turned; ML
    0.943 / 0.943-0.976 (its unconverged fit samples a turned grid differently)."""
    data, cal, *_ = mos2
    d, c = _turned(data, cal, quarter_turns, transpose)
    e, m = _both(_dataset(d, c), mos2)
    assert e > aligned[0] - 0.01 and e > 0.95, (e, aligned)
    assert m > aligned[1] - 0.015 and m > 0.9, (m, aligned)


def test_icom_agrees_on_the_convention(mos2):
    """iCOM, which has always taken rotation and transpose, reads the turned data with the
    same calibration as ePIE and ML: one convention for every method."""
    data, cal, *_ = mos2
    ref = icom(_dataset(data, cal)).phase
    for quarter_turns, transpose in [(1, False), (1, True)]:
        d, c = _turned(data, cal, quarter_turns, transpose)
        assert metrics.ncc(icom(_dataset(d, c)).phase, ref) > 0.999


@pytest.mark.parametrize("sense", ["wrong sign", "transpose ignored"])
def test_wrong_frame_visibly_fails(mos2, aligned, sense):
    """The same data with the rotation's sign flipped, or the transpose left out: the
    result is far from the truth (measured NCC −0.43 – 0.43), so the sense of the
    convention is tested, not only its existence."""
    data, cal, *_ = mos2
    if sense == "wrong sign":
        d, c = _turned(data, cal, 1, False)
        c = c.replace(rotation=-90.0)
    else:
        d, c = _turned(data, cal, 0, True)
        c = c.replace(transpose=False)
    e, m = _both(_dataset(d, c), mos2)
    assert e < 0.5 and m < 0.5, (e, m)


def _rotate_patterns(data, cal, theta: float):
    """Each noise-free pattern as a detector turned by θ would record it: pixel k_d reads
    the pattern at R(θ) k_d (cubic splines; the BF edge is smoothed a little)."""
    n = cal.detector_shape[0]
    cy, cx = cal.detector_center
    c, s = np.cos(np.radians(theta)), np.sin(np.radians(theta))
    ky, kx = np.meshgrid(np.arange(n) - cy, np.arange(n) - cx, indexing="ij")
    at = [kx * s + ky * c + cy, kx * c - ky * s + cx]
    flat = data.reshape(-1, n, n).astype(np.float64)
    out = [ndimage.map_coordinates(p, at, order=3, mode="constant") for p in flat]
    return np.clip(np.asarray(out), 0, None).astype(np.float32).reshape(data.shape)


def test_general_angle(mos2, aligned):
    """A 37° rotation (the intensities turned with scipy.ndimage, which blurs them a
    little: measured ePIE 0.977, ML 0.974 against 0.993 and 0.943 aligned); the wrong
    sign fails (0.14, 0.08)."""
    data, cal, *_ = mos2
    d = _rotate_patterns(data, cal, 37.0)
    e, m = _both(_dataset(d, cal.replace(rotation=37.0)), mos2)
    assert e > aligned[0] - 0.03 and m > aligned[1] - 0.05, (e, m, aligned)
    e, m = _both(_dataset(d, cal.replace(rotation=-37.0)), mos2)
    assert e < 0.5 and m < 0.5, (e, m)


def test_phase_only_object_stays_unimodular_when_resampled(mos2):
    data, cal, *_ = mos2
    d, c = _turned(data, cal, 1, False)
    res = epie(_dataset(d, c), EpieParameters(iterations=2, phase_only=True))
    assert res.reconstruction_frame is not None
    np.testing.assert_allclose(np.abs(res.object), 1.0, atol=1e-5)


def test_aberration_angles_turn_with_the_frame():
    """χ of the turned coefficients at k_t equals χ of the calibration's at R(θ) k_t:
    on a square grid a quarter turn maps grid points onto grid points."""
    ab = {"C10": 50.0, "C12": 30.0, "phi12": 0.4, "C21": 500.0, "phi21": -1.0,
          "C30": 1e4}  # fmt: skip
    n, d = 15, (0.3, 0.3)  # odd: no Nyquist row, whose k cannot turn onto the grid
    chi_s = physics.aberration_function((n, n), d, 300e3, ab)
    chi_t = physics.aberration_function((n, n), d, 300e3, frame.rotated_aberrations(ab, 90.0))
    # FFT order: k_t = (ky, kx) is read at k_s = R(90°) k_t = (kx, −ky)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    np.testing.assert_allclose(chi_t, chi_s[j, (-i) % n], atol=1e-4)


def test_positions_turn_into_the_detector_frame(mos2):
    """The geometry's positions are the scan positions turned by −θ (r_t = R(θ)ᵀ r_s),
    and a result resampled from a turned grid lands on the aligned grid."""
    from ptyengine.reconstruct.epie import PtychoGeometry

    _, cal, *_ = mos2
    turned = PtychoGeometry.from_calibration(cal.replace(rotation=30.0))
    plain = PtychoGeometry.from_calibration(cal)
    pos = (turned.corners + turned.frac) * turned.sampling + turned.object_origin
    ref = (plain.corners + plain.frac) * plain.sampling + plain.object_origin
    back = frame.frame_to_scan(pos, 30.0)
    np.testing.assert_allclose(back - back[0], ref - ref[0], atol=1e-9)
    # an object made on the aligned grid, taken to the turned one and back
    y, x = np.meshgrid(*(o + s * np.arange(k) for o, s, k in zip(
        plain.object_origin, plain.sampling, plain.object_shape, strict=True)), indexing="ij")
    smooth = np.cos(2 * np.pi * (0.13 * y + 0.07 * x)).astype(np.float32)
    there = frame.resample(smooth, plain, turned, 0.0)
    again = frame.resample(there, turned, plain, 0.0)
    inner = (slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(again[inner], smooth[inner], atol=1e-3)


# ------------------------------------------------------------------ detector mask


def _bad_pixels(data, cal):
    """The data with 4 dead pixels (0) in the bright field and 3 hot ones (10⁴ × the
    brightest pixel), and the mask that marks them."""
    n = cal.detector_shape[0]
    c = int(round(cal.detector_center[0]))
    dead = [(c, c + 2), (c - 3, c + 1), (c + 4, c - 4), (c - 1, c - 5)]
    hot = [(c + 1, c - 2), (3, 27), (25, 6)]
    bad, mask = data.copy(), np.ones((n, n), bool)
    for y, x in dead:
        bad[..., y, x] = 0
        mask[y, x] = False
    for y, x in hot:
        bad[..., y, x] = 1e4 * data.max()
        mask[y, x] = False
    return bad, mask


def test_mask_of_dead_and_hot_pixels(mos2, aligned):
    """With the mask, ePIE and ML on the spoilt data reach the NCC of the clean data;
    without it they are visibly worse (measured: ePIE 0.993 / 0.098, ML 0.945 / 0.034)."""
    data, cal, *_ = mos2
    bad, mask = _bad_pixels(data, cal)
    e, m = _both(_dataset(bad, cal, mask), mos2)
    assert e > aligned[0] - 0.01 and m > aligned[1] - 0.015, (e, m, aligned)
    e0, m0 = _both(_dataset(bad, cal), mos2)
    assert e0 < e - 0.2 and m0 < m - 0.2, (e0, m0)


def test_mask_on_a_transposed_detector(mos2, aligned):
    """The mask is given in the stored detector's pixels and goes through the same exact
    transpose as the data."""
    data, cal, *_ = mos2
    bad, mask = _bad_pixels(data, cal)
    d, c = _turned(bad, cal, 1, True)
    m_t = _turned(mask[None, None].astype(np.uint8), cal, 1, True)[0][0, 0]
    e, m = _both(_dataset(d, c, m_t), mos2)
    assert e > aligned[0] - 0.01 and m > aligned[1] - 0.015, (e, m, aligned)


@pytest.mark.parametrize("engine", [epie, ml])
def test_resume_needs_the_same_mask(mos2, tmp_path, engine):
    """A checkpoint written with one mask is not continued with another (or none)."""
    data, cal, *_ = mos2
    bad, mask = _bad_pixels(data, cal)
    params = EpieParameters(iterations=2) if engine is epie else MLParameters(iterations=2)
    ck = str(tmp_path / "ck.npz")
    engine(_dataset(bad, cal, mask), params, checkpoint=ck, checkpoint_every=1)
    engine(_dataset(bad, cal, mask), params, checkpoint=ck, resume=True)
    with pytest.raises(PtyengineError, match="other data or parameters"):
        engine(_dataset(bad, cal), params, checkpoint=ck, resume=True)


def test_icom_leaves_masked_pixels_out(mos2):
    """Hot pixels in the dark field dominate the centre of mass; with the mask iCOM gives
    the clean data's phase (measured NCC 1.000, without the mask −0.74). A hidden
    bright-field pixel's signal is lost instead: with this defocused probe the disc holds
    a shadow image, and hiding one pixel of 197 changes iCOM's phase to NCC 0.49 with
    the unhidden one (ePIE and ML do not mind)."""
    data, cal, *_ = mos2
    bad, mask = data.copy(), np.ones(cal.detector_shape, bool)
    for y, x in [(3, 27), (25, 6), (30, 30)]:
        bad[..., y, x] = 1e4 * data.max()
        mask[y, x] = False
    clean = icom(_dataset(data, cal)).phase
    assert metrics.ncc(icom(_dataset(bad, cal, mask)).phase, clean) > 0.999
    assert metrics.ncc(icom(_dataset(bad, cal)).phase, clean) < 0.6


@pytest.mark.parametrize("mask, message", [
    (np.ones((32, 31), bool), r"mask has shape \(32, 31\) but the detector has \(32, 32\)"),
    (np.zeros((32, 32), bool), r"leaves 0 of the \d+ bright-field pixels"),
    (np.full((32, 32), 2, np.uint8), "booleans or 0/1"),
])
def test_bad_masks(mos2, mask, message):
    data, cal, *_ = mos2
    with pytest.raises(PtyengineError, match=message):
        InMemoryDataset(data, cal, mask=mask)


def test_inverted_mask_is_named(mos2):
    """A mask marking the bad pixels with 1 (inverted) hides almost everything: the
    message counts the bright-field pixels left and asks."""
    data, cal, *_ = mos2
    _, mask = _bad_pixels(data, cal)
    with pytest.raises(PtyengineError, match=r"leaves 5 of the \d+ .*inverted"):
        InMemoryDataset(data, cal, mask=~mask)


def test_transposed_rectangular_detector_geometry(mos2):
    """A transposed non-square detector: the engines' window, pixel and probe are those
    of the swapped axes."""
    from ptyengine.reconstruct.epie import PtychoGeometry, initial_probe

    _, cal, *_ = mos2
    c = dataclasses.replace(cal, detector_shape=(32, 40), dk=(cal.dk[0], cal.dk[1] * 0.9),
                            detector_center=(16.0, 20.0), transpose=True)
    g = PtychoGeometry.from_calibration(c)
    assert g.window == (40, 32)
    assert g.sampling == pytest.approx((1 / (40 * c.dk[1]), 1 / (32 * c.dk[0])))
    assert initial_probe(c, None, 1.0, np).shape == (40, 32)


# ------------------------------------------------------------------ command line


def _convert_args(tmp_path, data, cal, *extra):
    """``convert`` of ``data`` saved as .npy, with ``cal``'s calibration given as options."""
    src = tmp_path / "scan.npy"
    np.save(src, data)
    return ("convert", src, "--energy", cal.energy / 1e3, "--semiangle", cal.semiangle,
            "--scan-step", cal.scan_step[0], "--dk", cal.dk[0],
            "--center", "{},{}".format(*cal.detector_center), "--rotation", cal.rotation,
            "--defocus", MOS2.defocus, "--c12", "40,0.5", "--dose", "1e5",
            *(("--transpose",) if cal.transpose else ()), *extra)  # fmt: skip


def test_cli_turned_masked_detector(mos2, tmp_path, capsys):
    """convert --rotation --transpose --mask stores the mask with the data; reconstruct
    by ePIE and ML writes phases in the specimen frame (they match the ground truth at the
    written sampling and origin) and records what it did; --mask overrides."""
    from cli_helpers import run

    from ptyengine.results import read_result

    data, cal, truth, sampling = mos2
    bad, mask = _bad_pixels(data, cal)
    d, c = _turned(bad, cal, 1, True)
    m = _turned(mask[None, None].astype(np.uint8), cal, 1, True)[0][0, 0]
    np.save(tmp_path / "mask.npy", m.astype(bool))
    out = tmp_path / "scan.zarr"
    code, _, err = run(capsys, *_convert_args(tmp_path, d, c, "--mask", tmp_path / "mask.npy",
                                              "-o", out))  # fmt: skip
    assert code == 0, err
    with io.open_dataset(out) as ds:
        assert np.array_equal(ds.read_array("detector_mask")[0], m)
    k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
    for method, opts in (("epie", ("--iterations", 12)), ("ml", ("--iterations", 30))):
        res = tmp_path / f"{method}.zarr"
        code, _, err = run(capsys, "reconstruct", out, "--method", method, *opts, "-o", res)
        assert code == 0, err
        arrays, attrs = read_result(res)
        assert attrs["masked_pixels"] == 7
        assert attrs["object_resampled_from_rotation_deg"] == 90.0
        ncc = metrics.compare_to_truth(arrays["phase"], attrs["sampling"], attrs["origin"],
                                       truth, sampling, k_max=k_max, max_shift=1.0,
                                       border=attrs["scanned_area_px"][0][0])["ncc"]
        assert ncc > 0.9, (method, ncc)
    # an all-ones mask given on the command line replaces the stored one
    np.save(tmp_path / "ones.npy", np.ones(c.detector_shape, bool))
    code, _, err = run(capsys, "reconstruct", out, "--method", "epie", "--iterations", 1,
                       "--mask", tmp_path / "ones.npy", "-o", tmp_path / "o.zarr")
    assert code == 0, err
    assert read_result(tmp_path / "o.zarr")[1]["masked_pixels"] == 0


def _garbage(path):
    path.write_bytes(b"\x93NUMPY not really")
    return path


@pytest.mark.parametrize("which", ["shape", "bright field", "unreadable"])
def test_cli_bad_masks_are_one_line_errors(mos2, tmp_path, capsys, which):
    """A mask of the wrong shape (both shapes named), one that hides the bright field (the
    pixels left named) or a file that cannot be read: exit status 2, one line, and
    nothing written by convert or reconstruct."""
    from cli_helpers import run

    data, cal, *_ = mos2
    good = tmp_path / "scan.zarr"
    assert run(capsys, *_convert_args(tmp_path, data, cal, "-o", good))[0] == 0
    path = tmp_path / "mask.npy"
    if which == "shape":
        np.save(path, np.ones((32, 30), bool))
        message = "has shape (32, 30) but the detector"
    elif which == "bright field":
        np.save(path, np.zeros((32, 32), bool))
        message = "leaves 0 of the "
    else:
        _garbage(path)
        message = f"cannot read the mask {path}"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, *_convert_args(tmp_path, data, cal, "--mask", path,
                                              "-o", tmp_path / "new.zarr"))  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    if which == "shape":
        assert "(32, 32)" in err
    code, _, err = run(capsys, "reconstruct", good, "--method", "ml", "--mask", path,
                       "-o", tmp_path / "r.zarr")  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before

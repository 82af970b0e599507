"""The Dask path (ptyengine.distributed) against the local one, on a LocalCluster."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from ptyengine import io, presets  # noqa: E402
from ptyengine.distributed import (  # noqa: E402
    center_of_mass_dask,
    cluster_from_spec,
    dask_array,
    icom_dask,
    virtual_images_dask,
)
from ptyengine.errors import PtyengineError  # noqa: E402
from ptyengine.preview import virtual_images  # noqa: E402
from ptyengine.reconstruct.icom import center_of_mass, icom  # noqa: E402
from ptyengine.simulate import simulate  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = dataclasses.replace(presets.demo()[0][1], scan_size=(3.9, 3.9), detector_pixels=32)
    path = tmp_path_factory.mktemp("dist") / "tiny.zarr"
    simulate(p, str(path), rows_per_block=2)
    return path


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:  # fmt: skip
        with distributed.Client(cluster) as c:
            yield c


def test_dask_array_has_disk_chunking(tiny):
    arr, cal = dask_array(tiny)
    with io.open_dataset(tiny) as ds:
        assert arr.shape == ds.shape and tuple(cal.scan_shape) == ds.shape[:2]
        assert arr.chunks[0][0] == 2 and arr.numblocks[0] > 2
        np.testing.assert_array_equal(arr[3].compute(scheduler="sync"), ds.read_rows(3, 4)[0])


def test_icom_dask_equals_local(tiny, client):
    cy, cx = center_of_mass_dask(tiny, client=client)
    ly, lx = center_of_mass(tiny)
    np.testing.assert_allclose(cy, ly, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(cx, lx, rtol=1e-6, atol=1e-12)
    for rotation in (None, 30.0, "auto"):
        d, loc = icom_dask(tiny, client=client, rotation=rotation), icom(tiny, rotation=rotation)
        assert (d.rotation_deg, d.transpose, d.n_empty) == (loc.rotation_deg, loc.transpose,
                                                            loc.n_empty)  # fmt: skip
        for f in ("phase", "com_y", "com_x"):
            np.testing.assert_allclose(getattr(d, f), getattr(loc, f), rtol=1e-6, atol=1e-12)


def test_virtual_images_dask_equal_local(tiny, client):
    dets = {"BF": (0.0, 10.0), "ADF": (25.0, 1e9)}
    imgs, mean = virtual_images_dask(tiny, dets, client=client)
    with io.open_dataset(tiny) as ds:
        ref, ref_mean = virtual_images(ds, dets)
    assert set(imgs) == set(ref)
    for n in dets:
        np.testing.assert_allclose(imgs[n], ref[n], rtol=1e-6)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)


def test_missing_chunk_is_an_error_on_the_worker(tiny, tmp_path, client):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(tiny, broken)
    with io.open_dataset(broken) as ds:
        key = ds.data.metadata.encode_chunk_key((1, 0, 0, 0))
    (broken / "data" / key).unlink()
    with pytest.raises(PtyengineError, match="missing"):
        icom_dask(broken, client=client)


def test_cluster_specs():
    with cluster_from_spec("local:1", processes=False, dashboard_address=":0") as cluster:
        assert len(cluster.workers) == 1
    for bad in ("bogus", "local:0", "local:x", "slurm:cores=4,colour=red", "pbs:jobs=many"):
        with pytest.raises(PtyengineError):
            cluster_from_spec(bad)


def test_slurm_spec_builds_a_job_script():
    pytest.importorskip("dask_jobqueue")
    with cluster_from_spec(
        "slurm:cores=4,memory=8GB,walltime=00:10:00,queue=short,jobs=0",
        scheduler_options={"dashboard_address": ":0"},
    ) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p short" in script and "#SBATCH -t 00:10:00" in script
    assert "--cpus-per-task=4" in script and "--mem=8G" in script


def test_tcbf_and_ssb_dask_equal_local(tiny, client):
    from ptyengine.distributed import ssb_dask, tcbf_dask
    from ptyengine.reconstruct.ssb import ssb
    from ptyengine.reconstruct.tcbf import TcbfParameters, tcbf

    params = TcbfParameters(bin=4)
    d, loc = tcbf_dask(tiny, params, client=client), tcbf(tiny, params)
    np.testing.assert_allclose(d.bright_field, loc.bright_field, rtol=1e-5, atol=1e-6)
    assert d.aberrations == loc.aberrations and d.rotation_deg == loc.rotation_deg
    np.testing.assert_allclose(ssb_dask(tiny, client=client).phase, ssb(tiny).phase,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_ssb_and_wdd_run_blocks_of_pixels_as_tasks(tiny):
    """SSB's trotter sums and WDD's reconstruction on a LocalCluster (threads): SSB's pass
    over the stack runs as one task per block of detector pixels (the stack made by one
    task per chunk of scan rows, rechunked into pixel blocks on the workers); the images
    equal the local run's."""
    from distributed import get_task_stream

    from ptyengine.distributed import ssb_dask, wdd_dask
    from ptyengine.reconstruct.ssb import SsbParameters, ssb
    from ptyengine.reconstruct.wdd import wdd

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:  # fmt: skip
        with distributed.Client(cluster) as c, get_task_stream(c) as ts:
            params = SsbParameters(block=16, defocus=30.0)
            d = ssb_dask(tiny, params, client=c)
            w = wdd_dask(tiny, client=c)
    names = [t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in ts.data]
    pixel_tasks = [k for k in names if str(k).startswith("ssb_pixels")]
    assert len(pixel_tasks) >= 2
    np.testing.assert_allclose(d.phase, ssb(tiny, params).phase, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.phase, wdd(tiny).phase, rtol=1e-5, atol=1e-6)


def test_slurm_spec_without_sbatch_is_refused_before_submitting():
    """Submitting worker jobs needs sbatch: without it the jobs would fail out of sight."""
    import shutil

    pytest.importorskip("dask_jobqueue")
    if shutil.which("sbatch"):
        pytest.skip("sbatch is here")
    with pytest.raises(PtyengineError, match="sbatch not found"):
        cluster_from_spec("slurm:cores=1,jobs=1")

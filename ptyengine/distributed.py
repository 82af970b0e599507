"""iCOM, tcBF, SSB, WDD and virtual detector images of a dataset on a Dask cluster
(dask.distributed).

The work is the same chunked work as the local path (:func:`ptyengine.reconstruct.icom.icom`,
:func:`ptyengine.preview.virtual_images`): one task per stored chunk of scan rows, each
task opening the dataset on its worker and reading only its own chunk (with the same
missing/corrupt-chunk checks as :meth:`ptyengine.io.Dataset.read_rows`), so no diffraction
data pass through the client; only the per-pattern sums (a few scan-sized images) come
back. The dataset's path must therefore be readable from every worker (a shared file
system). Results equal the local path's.

Install with ``pip install ptyengine[dist]`` (dask, distributed, dask-jobqueue).

SLURM example. Either let dask-jobqueue submit the worker jobs from a login node::

    from dask.distributed import Client
    from ptyengine.distributed import cluster_from_spec, icom_dask

    cluster = cluster_from_spec("slurm:cores=8,memory=32GB,walltime=01:00:00,queue=normal,jobs=4")
    with Client(cluster) as client:
        result = icom_dask("/scratch/me/scan.zarr", client=client, rotation="auto")
    cluster.close()

or run the whole thing as one batch job (``sbatch icom.sh``) on a single node::

    #!/bin/bash
    #SBATCH --job-name=icom
    #SBATCH --nodes=1
    #SBATCH --cpus-per-task=16
    #SBATCH --mem=64G
    #SBATCH --time=01:00:00
    source ~/venvs/ptyengine/bin/activate
    python -c "
    from dask.distributed import Client
    from ptyengine.distributed import cluster_from_spec, icom_dask
    import numpy as np
    with cluster_from_spec('local:16') as cluster, Client(cluster) as client:
        np.save('phase.npy', icom_dask('/scratch/me/scan.zarr', client=client).phase)
    "

Cluster specs (:func:`cluster_from_spec`): ``local`` (one worker per core), ``local:N``
(N single-threaded worker processes), ``slurm:OPTIONS`` and ``pbs:OPTIONS`` with OPTIONS a
comma-separated list of ``cores=`` (per job, default 1), ``memory=`` (per job, default
4GB), ``walltime=`` (HH:MM:SS), ``queue=``, ``account=`` and ``jobs=`` (worker jobs to
submit, default 1; submitting needs ``sbatch`` / ``qsub`` on PATH).
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np

from . import io
from .dataset import check_counts, detector_mask
from .errors import PtyengineError
from .preview import detector_angles
from .reconstruct.direct import group_matrix, reduce_block
from .reconstruct.icom import (
    IComResult,
    detector_k,
    integrate_gradient,
    normalise_moments,
    resolve_rotation,
    to_scan_frame,
)

_JOB_KEYS = {"cores", "memory", "walltime", "queue", "account", "jobs"}


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise PtyengineError("the Dask path needs dask: pip install 'ptyengine[dist]'") from None
    return dask, da


def dask_array(path):
    """(data, calibration): the dataset's 4D ``data`` as a lazy dask array chunked as on disk
    (one block per stored chunk/shard of scan rows), and its Calibration."""
    _, da = _dask()
    with io.open_dataset(_path(path)) as ds:
        if ds.kind != "zarr":
            raise PtyengineError(f"{ds.path}: dask_array needs a .zarr dataset")
        return da.from_zarr(ds.data, chunks=io.storage_chunks(ds.data)), ds.calibration


def _row_ranges(ds):
    rows = int(io.storage_chunks(ds.data)[0])
    sy = ds.shape[0]
    return [(r, min(r + rows, sy)) for r in range(0, sy, rows)]


def _read(path, start, stop):
    """Scan rows start:stop read on the worker, validated like the local path."""
    with io.open_dataset(path) as ds:
        block = ds.read_rows(start, stop)
    check_counts(block, f"{path}: scan rows {start}:{stop}", row_start=start)
    return block


def _block_moments(path, start, stop, w):
    """(n_weights, rows, Sx) weighted sums of the patterns of one chunk (as icom._moments)."""
    block = _read(path, start, stop)
    n, sx = block.shape[:2]
    m = block.reshape(n * sx, -1).astype(np.float64) @ w
    return m.T.reshape(w.shape[1], n, sx)


def _block_bright_field(path, start, stop, pixels, onehot):
    """(G, rows, Sx) bright-field group sums of one chunk (as reconstruct.direct)."""
    return reduce_block(_read(path, start, stop), pixels, onehot)


def _block_virtual(path, start, stop, masks):
    """Virtual images (n_masks, rows, Sx) and the summed pattern of one chunk."""
    block = np.asarray(_read(path, start, stop), dtype=np.float64)
    imgs = np.stack([np.tensordot(block, m, axes=([2, 3], [0, 1])) for m in masks])
    return imgs, block.sum(axis=(0, 1))


def _run(client, tasks):
    """Compute a list of delayed objects on ``client`` (None: the default scheduler,
    i.e. the current distributed Client if there is one)."""
    dask, _ = _dask()
    if client is None:
        return list(dask.compute(*tasks))
    return client.gather(client.compute(tasks))


def _path(path):
    """A path, also from an io.Dataset (the workers open the file themselves)."""
    return str(path.path if isinstance(path, io.Dataset) else path)


def _moments_dask(path, make_weights, client):
    dask, _ = _dask()
    path = _path(path)
    with io.open_dataset(path) as ds:
        cal, ranges = ds.calibration, _row_ranges(ds)
    weights = make_weights(cal)
    w = dask.delayed(np.stack([np.ravel(v) for v in weights], axis=1).astype(np.float64))
    fn = dask.delayed(_block_moments, pure=True)
    parts = _run(client, [fn(path, a, b, w) for a, b in ranges])
    return cal, np.concatenate(parts, axis=1)


def _com_weights(cal):
    ky, kx = detector_k(cal)
    return [np.ones_like(ky), ky, kx]


def _com(path, client):
    cal, m = _moments_dask(path, _com_weights, client)
    (com_y, com_x), n_empty = normalise_moments(m)
    return cal, com_y, com_x, n_empty


def center_of_mass_dask(path, client=None):
    """(com_y, com_x) in 1/Å, detector frame, as :func:`icom.center_of_mass`, on Dask."""
    _, com_y, com_x, n_empty = _com(path, client)
    if n_empty:
        warnings.warn(f"{n_empty} diffraction pattern(s) hold no counts; their centre of "
                      "mass is set to 0", stacklevel=2)  # fmt: skip
    return com_y, com_x


def icom_dask(path, client=None, rotation=None, transpose=None, high_pass=None) -> IComResult:
    """iCOM phase of the dataset at ``path`` on Dask; arguments and result as :func:`icom`."""
    cal, com_y, com_x, n_empty = _com(path, client)
    rot, tr, found = resolve_rotation(rotation, transpose, cal, (com_y, com_x), high_pass)
    sy, sx = to_scan_frame(com_y, com_x, rot, tr)
    phase = integrate_gradient(2 * np.pi * sy, 2 * np.pi * sx, cal.scan_step, high_pass)
    return IComResult(phase, sy, sx, rot, tr, found, cal.scan_step, cal.scan_origin, n_empty)


def virtual_images_dask(path, detectors: dict[str, tuple[float, float]], client=None):
    """({name: image}, mean pattern) of annular detectors {name: (inner, outer) mrad} on
    Dask, as :func:`ptyengine.preview.virtual_images`."""
    dask, _ = _dask()
    path = _path(path)
    with io.open_dataset(path) as ds:
        cal, ranges = ds.calibration, _row_ranges(ds)
    angle = detector_angles(cal)
    names = list(detectors)
    masks = dask.delayed([((angle >= detectors[n][0]) & (angle < detectors[n][1]))
                          .astype(np.float64) for n in names])  # fmt: skip
    fn = dask.delayed(_block_virtual, pure=True)
    parts = _run(client, [fn(path, a, b, masks) for a, b in ranges])
    imgs = np.concatenate([p[0] for p in parts], axis=1).reshape(len(names), *cal.scan_shape)
    mean = np.zeros(cal.detector_shape)
    for _, s in parts:
        mean += s
    return dict(zip(names, imgs, strict=True)), mean / (cal.scan_shape[0] * cal.scan_shape[1])


def bright_field_stack_dask(path, bf, client=None) -> np.ndarray:
    """(G, Sy, Sx) float32 stack of the bright-field groups ``bf`` (:mod:`.reconstruct.direct`)
    on Dask: one task per stored chunk of scan rows, as the local
    :func:`~ptyengine.reconstruct.direct.bright_field_stack`."""
    dask, _ = _dask()
    path = _path(path)
    with io.open_dataset(path) as ds:
        ranges = _row_ranges(ds)
    pixels, onehot = dask.delayed(bf.pixels), dask.delayed(group_matrix(bf))
    fn = dask.delayed(_block_bright_field, pure=True)
    return np.concatenate(_run(client, [fn(path, a, b, pixels, onehot) for a, b in ranges]),
                          axis=1)  # fmt: skip


def tcbf_dask(path, params=None, client=None, memory_limit=None):
    """tcBF of the dataset at ``path`` with the stack made on Dask; as :func:`.tcbf.tcbf`."""
    from .reconstruct.tcbf import TcbfParameters, tcbf_from_stack, tcbf_groups

    params = params or TcbfParameters()
    with io.open_dataset(_path(path)) as ds:
        cal, mask = ds.calibration, detector_mask(ds)
    bf = tcbf_groups(cal, mask, params, memory_limit)
    return tcbf_from_stack(bright_field_stack_dask(path, bf, client), bf, cal, params,
                           memory_limit)  # fmt: skip


def _stack_array(path, bf, block: int):
    """The bright-field stack as a dask array (G, Sy, Sx): one task per stored chunk of
    scan rows (as :func:`bright_field_stack_dask`), rechunked on the workers into blocks of
    ``block`` groups × every scan position (the transform over the scan needs them all)."""
    dask, da = _dask()
    path = _path(path)
    with io.open_dataset(path) as ds:
        ranges, sx = _row_ranges(ds), ds.shape[1]
    pixels, onehot = dask.delayed(bf.pixels), dask.delayed(group_matrix(bf))
    fn = dask.delayed(_block_bright_field, pure=True)  # float32 (G, rows, Sx)
    parts = [da.from_delayed(fn(path, a, b, pixels, onehot), (bf.n_groups, b - a, sx),
                             np.float32) for a, b in ranges]  # fmt: skip
    return da.concatenate(parts, axis=1).rechunk((block, -1, -1))


def _ssb_pixels(stack_block, terms):
    """(num, count, Σ DC) of one block of pixels: :func:`.reconstruct.ssb.trotter_pass`."""
    from .reconstruct.ssb import trotter_pass

    num, count, dc = trotter_pass(np.asarray(stack_block), terms, len(terms.ky))
    return num, count, dc * max(int(terms.use.sum()), 1)


def ssb_dask(path, params=None, client=None, memory_limit=None):
    """SSB of the dataset at ``path`` on Dask; as :func:`.ssb.ssb`. The stack is made by
    one task per chunk of scan rows and kept on the workers, rechunked into blocks of
    detector pixels (``params.block``, else from ``memory_limit`` as locally: memory per
    task scan size × block); one task per block sums its trotters, the client adds the
    blocks' sums (scan-sized) and transforms back."""
    dask, _ = _dask()
    from .backend import memory_limit as memory_limit_bytes
    from .reconstruct.ssb import (
        SsbParameters,
        check_trotters,
        pixel_block,
        ssb_groups,
        ssb_result,
        ssb_terms,
    )

    params = params or SsbParameters()
    with io.open_dataset(_path(path)) as ds:
        cal, mask = ds.calibration, detector_mask(ds)
    check_trotters(cal)
    bf = ssb_groups(cal, int(params.bin), mask)
    ab, terms = ssb_terms(bf.k, cal, params)
    block = params.block or pixel_block(cal, memory_limit_bytes(memory_limit))
    stack = _stack_array(path, bf, block)
    fn = dask.delayed(_ssb_pixels, pure=True)
    edges = np.cumsum((0, *stack.chunks[0]))
    tasks = [fn(stack.blocks[i], terms.subset(slice(a, b)),
                dask_key_name=f"ssb_pixels-{dask.base.tokenize(path, params, a, b)}")
             for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]  # fmt: skip
    parts = _run(client, tasks)
    num = sum(p[0] for p in parts)
    count = sum(p[1] for p in parts)
    dc = sum(p[2] for p in parts) / max(int(terms.use.sum()), 1)
    return ssb_result(num, count, dc, ab, cal, params)


def wdd_dask(path, params=None, client=None, memory_limit=None):
    """WDD of the dataset at ``path`` with the stack made on Dask (one task per chunk of
    scan rows, held in memory on the client); as :func:`.wdd.wdd`."""
    from .backend import memory_limit as memory_limit_bytes
    from .reconstruct.direct import bright_field_groups
    from .reconstruct.ssb import check_trotters
    from .reconstruct.wdd import WddParameters, counts_scale, wdd_from_stack

    params = params or WddParameters()
    with io.open_dataset(_path(path)) as ds:
        cal, mask = ds.calibration, detector_mask(ds)
        source = counts_scale(ds, cal)
    check_trotters(cal, "WDD")
    bf = bright_field_groups(cal, int(params.bin), mask=mask)
    sy, sx = cal.scan_shape
    buf = np.zeros((bf.n_groups, sy, 2 * (sx // 2 + 1)), np.float32)
    buf[:, :, :sx] = bright_field_stack_dask(path, bf, client)
    return wdd_from_stack(buf, bf, cal, params, "cpu", memory_limit_bytes(memory_limit),
                          source)  # fmt: skip


def _parse_options(kind: str, text: str) -> dict:
    opts = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in _JOB_KEYS:
            raise PtyengineError(f"bad {kind} cluster option {item!r}: use "
                                 f"{', '.join(sorted(_JOB_KEYS))} as key=value")  # fmt: skip
        opts[key.strip()] = value.strip()
    try:
        opts["cores"] = int(opts.get("cores", 1))
        opts["jobs"] = int(opts.get("jobs", 1))
    except ValueError:
        raise PtyengineError(f"{kind} cluster: cores and jobs must be integers") from None
    opts.setdefault("memory", "4GB")
    return opts


def cluster_from_spec(spec: str, **kwargs):
    """A Dask cluster from a short spec: ``local``, ``local:N``, ``slurm:OPTIONS`` or
    ``pbs:OPTIONS`` (see the module docstring); ``kwargs`` go to the cluster class
    (LocalCluster, dask_jobqueue.SLURMCluster / PBSCluster), e.g. ``job_extra_directives``.
    Connect with ``Client(cluster)``."""
    kind, _, rest = str(spec).strip().partition(":")
    kind = kind.lower()
    if kind == "local":
        try:
            from dask.distributed import LocalCluster
        except ImportError:
            raise PtyengineError("local clusters need distributed: pip install "
                                 "'ptyengine[dist]'") from None  # fmt: skip
        if not rest:
            return LocalCluster(**kwargs)
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise PtyengineError(f"bad cluster spec {spec!r}: local:N needs N ≥ 1 workers")
        return LocalCluster(**{"n_workers": n, "threads_per_worker": 1, **kwargs})
    if kind in ("slurm", "pbs"):
        opts = _parse_options(kind, rest)
        try:
            import dask_jobqueue
        except ImportError:
            raise PtyengineError(f"{kind} clusters need dask-jobqueue: pip install "
                                 "'ptyengine[dist]'") from None  # fmt: skip
        cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
        jobs = opts.pop("jobs")
        submit = "sbatch" if kind == "slurm" else "qsub"
        if jobs and shutil.which(submit) is None:  # else the jobs fail out of sight
            raise PtyengineError(f"{kind} cluster: {submit} not found on PATH: start from a "
                                 f"{kind.upper()} login node, or use local / local:N")  # fmt: skip
        cluster = cls(**opts, **kwargs)
        if jobs:
            cluster.scale(jobs=jobs)
        return cluster
    raise PtyengineError(f"unknown cluster spec {spec!r}: use local, local:N, slurm:OPTIONS "
                         "or pbs:OPTIONS")  # fmt: skip

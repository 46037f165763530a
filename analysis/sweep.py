"""Parameter sweeps: a grid of points, computed in chunks, stored as they finish.

A sweep is a grid (named coordinates such as gain, sigma_x, seed) and a computation that
takes a chunk of points and returns named arrays for each. The engine

- splits the grid, flattened in C order, into chunks of ``chunk_size`` points, so that
  a computation can run a whole chunk as one ensemble (one kernel launch);
- gives point i its own ``SeedSequence(seed, spawn_key=(i,))``, child i of
  ``SeedSequence(seed)``: a result never depends on the chunking, the threads or the
  workers;
- writes every finished chunk to a zarr store and marks it done, so that a rerun with
  the same store and configuration computes only what is missing (an interrupted sweep,
  SIGKILL included, loses at most the chunks in flight) and a store written with
  another configuration is refused;
- shows a tqdm progress bar;
- runs in-process by default, or on dask.distributed: a ``Client``, a scheduler
  address, or a number of local worker processes (a ``LocalCluster``), with numba's
  threads per worker capped so that the cores are not oversubscribed; with
  ``backend="cuda"`` each dask worker takes one of its machine's GPUs;
- returns one xarray Dataset with provenance attrs (``save_netcdf`` writes it).

>>> import numpy as np
>>> def square(points, seeds):
...     return {"y": points["a"] ** 2, "noise": [np.random.default_rng(s).normal() for s in seeds]}
>>> sweep = Sweep("demo", {"a": [1.0, 2.0, 3.0]}, square,
...               {"y": Output("a squared", "1"), "noise": Output("a normal draw", "1")},
...               coords_attrs={"a": ("the parameter", "1")}, chunk_size=2)
>>> ds = sweep.run(progress=False)
>>> ds.y.values.tolist(), ds.y.attrs["long_name"]
([1.0, 4.0, 9.0], 'a squared')
>>> bool(ds.noise[1] == np.random.default_rng(np.random.SeedSequence(0).spawn(3)[1]).normal())
True
"""
import contextlib
import json
import math
import os
import uuid
from dataclasses import dataclass, field

import numba
import numpy as np
import xarray as xr

from analysis._common import attrs, provenance
from dynamics.propagation import BACKENDS, engine


@dataclass(frozen=True)
class Output:
    """One result of a sweep: per point, an array of shape ``[len(c) for c in coords]``."""

    long_name: str
    units: str
    dims: tuple = ()
    coords: dict = field(default_factory=dict)  # dim -> values, for every entry of dims
    coords_attrs: dict = field(default_factory=dict)  # dim -> (long_name, units)
    dtype: str = "float64"

    @property
    def shape(self):
        return tuple(len(self.coords[d]) for d in self.dims)


def _run_chunk(compute, points, seeds, outputs, numba_threads, backend):
    """Compute one chunk (in this process or on a dask worker) and check its shapes."""
    if numba_threads:
        numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    if backend == "cuda":  # imported here: a CPU run never loads CUDA code
        from dynamics.gpu import select_worker_gpu
        select_worker_gpu()
    results = compute(points, seeds)
    n_points = len(seeds)
    checked = {}
    for name, output in outputs.items():
        if name not in results:
            raise ValueError(f"the sweep's computation returned no {name!r}")
        value = np.asarray(results[name], dtype=output.dtype)
        if value.shape != (n_points, *output.shape):
            raise ValueError(f"the sweep's computation returned {name!r} of shape {value.shape}"
                             f" for {n_points} points, expected {(n_points, *output.shape)}")
        checked[name] = value
    return checked


@dataclass
class Sweep:
    """A grid, a chunk computation ``compute(points, seeds) -> {name: array}`` and its
    ``outputs`` (name -> ``Output``).

    ``points`` maps each grid dim to the chunk's values (1-D arrays, one entry per
    point), ``seeds`` is the list of the points' SeedSequences; each returned array has
    one row per point. ``config`` holds everything else that determines the results
    (sizes, dtype...): it is stored with the results and checked on resume.
    ``compute`` must be picklable (a module-level function, or a ``functools.partial``
    of one) to run on dask.

    ``backend`` ("cpu" or "cuda") says where the computation runs: with "cuda", each
    chunk first selects its dask worker's GPU (``dynamics.gpu.select_worker_gpu``);
    ``compute`` itself must be told the backend (through its ``functools.partial``). It
    is recorded in the dataset's provenance but is not part of the configuration a
    store must match: results agree to rounding, so a store begun on one backend can be
    resumed on the other.
    """

    name: str
    grid: dict
    compute: object
    outputs: dict
    config: dict = field(default_factory=dict)
    coords_attrs: dict = field(default_factory=dict)  # grid dim -> (long_name, units)
    seed: int = 0
    chunk_size: int = 8
    backend: str = "cpu"

    def __post_init__(self):
        self.grid = {dim: np.asarray(values) for dim, values in self.grid.items()}
        for dim, values in self.grid.items():
            if values.ndim != 1 or values.size == 0:
                raise ValueError(f"grid coordinate {dim!r} must be a non-empty 1-D sequence, "
                                 f"got shape {values.shape}")
        if not self.outputs or not all(isinstance(o, Output) for o in self.outputs.values()):
            raise ValueError("outputs must map each result's name to an analysis.sweep.Output, "
                             f"got {self.outputs!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    shape = property(lambda self: tuple(v.size for v in self.grid.values()))
    n_points = property(lambda self: math.prod(self.shape))
    n_chunks = property(lambda self: -(-self.n_points // self.chunk_size))

    def identity(self):
        """The JSON that a store must match to be resumed (the backend is not in it)."""
        return json.dumps({
            "name": self.name, "seed": self.seed, "chunk_size": self.chunk_size,
            "grid": {dim: values.tolist() for dim, values in self.grid.items()},
            "outputs": {name: [list(o.dims), {d: np.asarray(v).tolist() for d, v in o.coords.items()},
                               o.dtype] for name, o in self.outputs.items()},
            "config": self.config}, sort_keys=True, default=str)

    def chunk(self, index):
        """(points, seeds) of chunk ``index``."""
        flat = np.arange(index * self.chunk_size, min((index + 1) * self.chunk_size, self.n_points))
        positions = np.unravel_index(flat, self.shape)
        points = {dim: values[pos] for (dim, values), pos in zip(self.grid.items(), positions)}
        seeds = [np.random.SeedSequence(self.seed, spawn_key=(int(i),)) for i in flat]
        return points, seeds

    # -- the store ------------------------------------------------------------------------

    def open_store(self, path):
        """The zarr group at ``path``: created for this sweep, or resumed if it was written
        with the same configuration; refused (ValueError) otherwise. ``path=None``: arrays
        in memory."""
        import zarr

        identity = self.identity()
        if path is None:  # in memory only: plain arrays, indexed as zarr's are
            arrays = {name: np.full((self.n_points, *o.shape),
                                    np.nan if o.dtype.startswith("float") else 0, o.dtype)
                      for name, o in self.outputs.items()}
            return {**arrays, "done": np.zeros(self.n_chunks, bool)}
        if os.path.exists(path):
            group = zarr.open_group(path, mode="a")
            stored = group.attrs.get("sweep")
            if stored is not None:
                if stored != identity:
                    raise ValueError(
                        f"the store {path} holds a sweep with another configuration; use a new "
                        f"store (or delete this one). Stored: {stored[:300]}... This sweep: "
                        f"{identity[:300]}...")
                return group
        group = zarr.open_group(path, mode="w")
        for name, output in self.outputs.items():
            group.create_array(name, shape=(self.n_points, *output.shape),
                               chunks=(self.chunk_size, *output.shape), dtype=output.dtype,
                               fill_value=np.nan if output.dtype.startswith("float") else 0)
        group.create_array("done", shape=(self.n_chunks,), chunks=(1,), dtype="bool",
                           fill_value=False)
        group.attrs["sweep"] = identity  # written last: the store is complete from here on
        return group

    def _write(self, group, index, results):
        rows = slice(index * self.chunk_size, min((index + 1) * self.chunk_size, self.n_points))
        for name, value in results.items():
            group[name][rows] = value
        group["done"][index] = True  # after the data: a chunk is done only once stored

    # -- running --------------------------------------------------------------------------

    def run(self, store=None, client=None, scheduler=None, workers=None, progress=True,
            numba_threads=None):
        """Compute every chunk not yet in ``store`` (a zarr path; None: in memory only)
        and return the Dataset.

        In-process by default; on dask.distributed with ``client`` (a Client),
        ``scheduler`` (an address such as "tcp://host:8786") or ``workers`` (n local worker
        processes). On dask each task runs numba on ``numba_threads`` threads, by default
        the cores of its host divided by the workers there. With ``backend="cuda"`` on
        this machine (in-process or local workers), a missing GPU is an error before
        anything is computed or stored; a remote cluster's workers are not checked here.
        """
        if self.backend == "cuda" and client is None and scheduler is None:
            engine(self.backend)
        group = self.open_store(store)
        todo = [i for i, done in enumerate(group["done"][:]) if not done]
        with _progress_bar(self, progress) as bar:
            bar.update(self.n_points - sum(self._chunk_points(i) for i in todo))
            if client is None and scheduler is None and workers is None:
                for index in todo:
                    points, seeds = self.chunk(index)
                    self._write(group, index, _run_chunk(self.compute, points, seeds,
                                                         self.outputs, 0, self.backend))
                    bar.update(len(seeds))
            else:
                with _dask_client(client, scheduler, workers) as (dask_client, threads):
                    self._run_on_dask(dask_client, numba_threads or threads, group, todo, bar)
        return self.dataset(group)

    def _chunk_points(self, index):
        return min((index + 1) * self.chunk_size, self.n_points) - index * self.chunk_size

    def _run_on_dask(self, client, numba_threads, group, todo, bar):
        from distributed import as_completed

        futures, run_id = {}, uuid.uuid4().hex[:8]  # fresh keys: never another run's results
        for index in todo:
            points, seeds = self.chunk(index)
            future = client.submit(_run_chunk, self.compute, points, seeds, self.outputs,
                                   numba_threads, self.backend,
                                   key=f"{self.name}-chunk-{index}-{run_id}", pure=False)
            futures[future] = index
        for future in as_completed(futures):
            index = futures[future]
            self._write(group, index, future.result())
            bar.update(self._chunk_points(index))
            future.release()

    # -- results --------------------------------------------------------------------------

    def dataset(self, group):
        """The stored results as a Dataset over the grid's dims (then each output's)."""
        grid_dims = tuple(self.grid)
        variables, coords = {}, {}
        for dim, values in self.grid.items():
            coords[dim] = (dim, values, attrs(*self.coords_attrs.get(dim, (dim, "1"))))
        for name, output in self.outputs.items():
            data = group[name][:].reshape(self.shape + output.shape)
            variables[name] = (grid_dims + output.dims, data, attrs(output.long_name, output.units))
            for dim in output.dims:
                coords[dim] = (dim, np.asarray(output.coords[dim]),
                               attrs(*output.coords_attrs.get(dim, (dim, "1"))))
        config = {"sweep": self.name, "grid": {d: v.tolist() for d, v in self.grid.items()},
                  "chunk_size": self.chunk_size, **self.config}
        dtype = self.config.get("dtype", "float64")
        return xr.Dataset(variables, coords=coords,
                          attrs=provenance(f"sweep {self.name}", config, dtype, self.seed,
                                           self.backend))


def save_netcdf(dataset, path):
    """Write ``dataset`` as NetCDF (h5netcdf); return the path."""
    dataset.to_netcdf(path, engine="h5netcdf")
    return path


@contextlib.contextmanager
def _progress_bar(sweep, enabled):
    from tqdm.auto import tqdm

    with tqdm(total=sweep.n_points, unit="point", desc=sweep.name, disable=not enabled) as bar:
        yield bar


@contextlib.contextmanager
def _dask_client(client, scheduler, workers):
    """(client, numba threads per task) for the given client, address or worker count;
    a cluster started here is closed on exit."""
    from distributed import Client

    if sum(arg is not None for arg in (client, scheduler, workers)) > 1:
        raise ValueError("give one of client, scheduler and workers")
    if client is not None:
        yield client, _threads_per_worker(client)
    elif scheduler is not None:
        with Client(scheduler) as remote:
            yield remote, _threads_per_worker(remote)
    else:
        with local_cluster(workers) as cluster, Client(cluster) as local:
            yield local, _threads_per_worker(local)


def local_cluster(workers):
    """A dask ``LocalCluster`` of ``workers`` processes, one task at a time each (numba's
    threads per task are set by ``Sweep.run``: a worker may import numba before any
    environment variable could cap them)."""
    from distributed import LocalCluster

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                        dashboard_address=None)


def _threads_per_worker(client):
    """Cores per worker process on the most crowded host of the cluster."""
    cores = client.run(os.cpu_count)
    hosts = {}
    for address in cores:
        host = address.rsplit(":", 1)[0]
        hosts.setdefault(host, []).append(cores[address] or 1)
    return max(1, min(c[0] // len(c) for c in hosts.values())) if hosts else 1

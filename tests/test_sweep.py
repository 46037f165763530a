"""The sweep engine: chunking and seeds, zarr resume (SIGKILL included), refusal of a
foreign store, dask (a LocalCluster, a worker lost mid-sweep), the cuda backend (numba's
simulator without a GPU), and the edge-of-chaos study."""
import functools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from sweep_toys import toy_sweep

import dynamics
from analysis.sweep import Output, Sweep, save_netcdf

HERE = os.path.dirname(__file__)


def assert_identical(a, b):
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_results_do_not_depend_on_chunking_and_carry_attrs():
    one = toy_sweep(chunk_size=1).run(progress=False)
    five = toy_sweep(chunk_size=5).run(progress=False)
    assert_identical(one, five)
    assert one.state.dims == ("a", "b", "unit")
    for name, variable in {**one.data_vars, **one.coords}.items():
        assert {"long_name", "units"} <= set(variable.attrs), name
    assert {"package_version", "config", "seed", "created"} <= set(one.attrs)
    # point i draws from child i of SeedSequence(5): (a, b) = (1.0, 3.0) is point 5
    child = np.random.SeedSequence(5).spawn(12)[5]
    assert one.draw.sel(a=1.0, b=3.0) == 3.0 * np.random.default_rng(child).normal()


def test_store_resumes_and_refuses_another_configuration(tmp_path):
    store = str(tmp_path / "toy.zarr")
    log = tmp_path / "log.txt"
    full = toy_sweep(log=str(log)).run(store=store, progress=False)
    assert len(log.read_text().split()) == 4  # 12 points in chunks of 3
    again = toy_sweep(log=str(log)).run(store=store, progress=False)
    assert len(log.read_text().split()) == 4  # nothing recomputed
    assert_identical(full, again)
    with pytest.raises(ValueError, match="another configuration"):
        toy_sweep(a=(0.5, 1.0)).run(store=store, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        toy_sweep(chunk_size=2).run(store=store, progress=False)
    path = save_netcdf(full, tmp_path / "toy.nc")
    assert_identical(full, xr.open_dataset(path, engine="h5netcdf"))


RUNNER = """
import sys
sys.path.insert(0, {here!r})
from sweep_toys import toy_sweep
toy_sweep(chunk_size=1, log={log!r}, delay=0.4).run(store={store!r}, progress=False)
"""


def test_sigkill_loses_only_chunks_in_flight(tmp_path):
    store, log = str(tmp_path / "toy.zarr"), str(tmp_path / "log.txt")
    script = RUNNER.format(here=HERE, log=log, store=store)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 120
    done = np.zeros(0, bool)
    while time.time() < deadline and done.sum() < 3:
        time.sleep(0.2)
        try:
            done = zarr.open_group(store, mode="r")["done"][:]
        except Exception:  # not created yet
            continue
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = zarr.open_group(store, mode="r")["done"][:]
    assert 3 <= done.sum() < 12, done
    finished_before = set(np.flatnonzero(done))
    resume_log = str(tmp_path / "resume.txt")
    resumed = toy_sweep(chunk_size=1, log=resume_log).run(store=store, progress=False)
    recomputed = {int(v) for v in open(resume_log).read().split()}
    assert not recomputed & finished_before
    assert recomputed | finished_before == set(range(12))
    assert_identical(resumed, toy_sweep(chunk_size=1).run(progress=False))


@pytest.mark.slow
def test_local_cluster_gives_bitwise_the_in_process_result_even_when_a_worker_dies(tmp_path):
    pytest.importorskip("distributed")
    in_process = toy_sweep().run(progress=False)
    on_cluster = toy_sweep().run(workers=2, progress=False)
    assert_identical(in_process, on_cluster)
    from analysis.sweep import local_cluster
    with local_cluster(2) as cluster:  # a running cluster, reached by its address
        by_address = toy_sweep().run(scheduler=cluster.scheduler_address, progress=False)
    assert_identical(in_process, by_address)
    marker = str(tmp_path / "crashed")
    survived = toy_sweep(crash_marker=marker, crash_chunk=3).run(workers=2, progress=False)
    assert os.path.exists(marker)  # chunk 1 (points 3-5) killed its worker once
    assert_identical(in_process, survived)


def test_bad_sweeps_are_refused():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        Sweep("x", {"a": []}, None, {})
    with pytest.raises(ValueError, match="chunk_size"):
        Sweep("x", {"a": [1]}, None, toy_sweep().outputs, chunk_size=0)
    with pytest.raises(ValueError, match="outputs must map"):
        Sweep("x", {"a": [1]}, None, {"y": "not an Output"})
    with pytest.raises(ValueError, match="returned no 'draw'"):
        Sweep("x", {"a": [1.0]}, lambda p, s: {}, toy_sweep().outputs).run(progress=False)
    with pytest.raises(ValueError, match="one of client, scheduler and workers"):
        toy_sweep().run(workers=2, scheduler="tcp://localhost:1", progress=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        Sweep("x", {"a": [1]}, None, toy_sweep().outputs, backend="tpu")


def final_states(points, seeds, *, backend):
    """Per point, the last state of a 3-unit RNN of gain ``a`` over 4 steps, on ``backend``."""
    rnn = dynamics.Cell.stack([dynamics.RNN.init(1, 3, init="gaussian", gain=a, seed=s)
                               for a, s in zip(points["a"], seeds)])
    x = np.stack([np.random.default_rng(s).normal(size=(4, 1, 1)) for s in seeds], axis=1)
    return {"state": dynamics.forward(rnn, x, backend=backend).h_n[0, :, 0]}


def states_sweep(backend):
    return Sweep("states", {"a": [0.5, 1.5, 3.0]}, functools.partial(final_states, backend=backend),
                 {"state": Output("final state", "1", ("unit",), {"unit": np.arange(3)})},
                 chunk_size=2, backend=backend)


def test_cuda_backend_gives_the_cpu_result_and_its_store_resumes_on_cpu(tmp_path):
    cpu = states_sweep("cpu").run(progress=False)
    store = str(tmp_path / "states.zarr")
    cuda = states_sweep("cuda").run(store=store, progress=False)
    np.testing.assert_allclose(cuda.state, cpu.state, rtol=1e-12)
    assert (cpu.attrs["backend"], cuda.attrs["backend"]) == ("cpu", "cuda")
    resumed = states_sweep("cpu").run(store=store, progress=False)  # nothing left to compute
    assert_identical(cuda, resumed)


def test_cuda_sweep_on_dask_workers_selects_their_gpu():
    """Each dask worker's chunk selects a GPU (``select_worker_gpu``) before computing; the
    results are the in-process CPU ones (the workers inherit the simulator setting)."""
    pytest.importorskip("distributed")
    from dynamics.gpu import select_worker_gpu

    assert select_worker_gpu() is None  # not on a worker: nothing changes
    cpu = states_sweep("cpu").run(progress=False)
    on_workers = states_sweep("cuda").run(workers=2, progress=False)
    np.testing.assert_allclose(on_workers.state, cpu.state, rtol=1e-12)
    assert on_workers.attrs["backend"] == "cuda"


def test_edge_of_chaos_quick_run(tmp_path):
    """The --quick path with sizes overridden to take seconds (the README's main job is the
    plain --quick run)."""
    from studies import edge_of_chaos

    ds = edge_of_chaos.main(["--quick", "--out", str(tmp_path), "--gains", "0.5,1.5,2.5",
                             "--sigma-x", "0,1", "--units", "40", "--seeds", "2",
                             "--steps", "400", "--burn-in", "100"])
    reopened = xr.open_dataset(tmp_path / "edge_of_chaos.nc", engine="h5netcdf")
    assert (tmp_path / "edge_of_chaos.png").stat().st_size > 10_000
    assert reopened.lyapunov_max.dims == ("sigma_x", "gain", "seed")
    assert reopened.spectral_radius.dims == ("gain", "seed")
    assert reopened.lyapunov_max_meanfield.dims == ("sigma_x", "gain")
    assert reopened.critical_gain.dims == reopened.critical_gain_meanfield.dims == ("sigma_x",)
    for name, variable in {**reopened.data_vars, **reopened.coords}.items():
        assert {"long_name", "units"} <= set(variable.attrs), name
    lam = ds.lyapunov_max.mean("seed")
    assert (lam.diff("gain") > 0).all()  # chaos grows with the gain...
    assert (lam.sel(sigma_x=1.0) < lam.sel(sigma_x=0.0)).all()  # ...and input suppresses it
    np.testing.assert_allclose(ds.critical_gain_meanfield, [1.0, 1.8555894], rtol=1e-6)
    # the gradient's log-slope follows lambda_max
    np.testing.assert_allclose(ds.grad_decay_rate, ds.lyapunov_max, atol=0.1)


def test_edge_of_chaos_refuses_bad_options_with_a_usage_error(tmp_path, capsys):
    from studies import edge_of_chaos

    small = ["--gains", "1,2", "--sigma-x", "0", "--units", "4", "--seeds", "1", "--steps",
             "5", "--burn-in", "0", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        edge_of_chaos.main(small + ["--chunk-size", "0"])
    assert "chunk_size must be" in capsys.readouterr().err
    edge_of_chaos.main(small)
    with pytest.raises(SystemExit):   # the same store, another configuration
        edge_of_chaos.main(small[:-2] + ["--steps", "6", "--out", str(tmp_path)])
    assert "another configuration" in capsys.readouterr().err


def test_edge_of_chaos_points_do_not_depend_on_their_chunk():
    """Each point's W_0, noise, initial state and tangent come from its own seeds."""
    from studies import edge_of_chaos

    sizes = dict(gains=np.array([1.2, 2.0]), sigma_x=np.array([0.0, 1.0]), units=16, seeds=1,
                 steps=40, burn_in=5)
    one, four = (edge_of_chaos.build_sweep(**sizes, chunk_size=n).run(progress=False)
                 for n in (1, 4))
    xr.testing.assert_identical(one.drop_attrs(), four.drop_attrs())


def test_a_study_run_as_a_module_sweeps_on_a_running_cluster(tmp_path):
    """``python -m studies.edge_of_chaos --scheduler ADDR``: the cluster's workers cannot
    import the study's ``__main__``, so its functions must travel by module name."""
    from dask.distributed import LocalCluster

    from conftest import ROOT

    argv = ["--gains", "0.5,2.5", "--sigma-x", "0,1", "--units", "12", "--seeds", "1",
            "--steps", "60", "--burn-in", "10"]
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        done = subprocess.run(
            [sys.executable, "-m", "studies.edge_of_chaos", *argv, "--scheduler",
             cluster.scheduler_address, "--out", str(tmp_path / "cluster")],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
            text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from studies import edge_of_chaos
    in_process = edge_of_chaos.main(argv + ["--out", str(tmp_path / "here")])
    with xr.open_dataset(tmp_path / "cluster" / "edge_of_chaos.nc", engine="h5netcdf") as ds:
        xr.testing.assert_identical(ds.load().drop_attrs(), in_process.drop_attrs())


def test_edge_of_chaos_on_cuda_equals_cpu(tmp_path):
    """--backend cuda (numba's simulator without a GPU) at tiny sizes: the Lyapunov walk and
    the gradient (on a trajectory of its own there) give the CPU's numbers."""
    from studies import edge_of_chaos

    sizes = dict(gains=np.array([0.5, 2.0]), sigma_x=np.array([0.0, 1.0]), units=2, seeds=1,
                 steps=4, burn_in=2)
    cpu = edge_of_chaos.build_sweep(**sizes).run(progress=False)
    cuda = edge_of_chaos.main(["--out", str(tmp_path), "--gains", "0.5,2", "--sigma-x", "0,1",
                               "--units", "2", "--seeds", "1", "--steps", "4", "--burn-in", "2",
                               "--backend", "cuda"])
    assert cuda.attrs["backend"] == "cuda"
    for name in ("lyapunov_max", "grad_decay_rate", "diverged"):
        np.testing.assert_allclose(cuda[name], cpu[name], rtol=1e-10, atol=1e-12, err_msg=name)

"""Data-parallel training on the CPU (gloo, 2 processes under torchrun): 2 processes x half the
batch give the weights of 1 process x the whole batch, a killed 2-process run resumes exactly, a
process that fails ends the job with its error shown once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kzlib.config import config_dict
from kzlib.classify.config import ClassifyConfig
from kzlib.data import labels_table, read_labels_csv
from kzlib.detect.config import DetectConfig
from helpers import tiny_classify, tiny_detect


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun's processes: the same kernels, the same float noise
CLS = tiny_classify(crops_per_page=3, batch_size=4, epochs=1, dropout=0.0, validate_every=100, add_missed_truth=False)
DET = tiny_detect(batch_size=4, box_batch_per_image=64, warmup_epochs=0.0)


def boxes_file(data: Path, path: Path) -> Path:
    t = labels_table(read_labels_csv(data / "train.csv")).rename(columns={"code": "true"}).assign(score=1.0)
    t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(path, index=False)
    return path


def train_cmd(module, data, out, cfg_file, extra=()):
    return ["-m", module, "train", str(data), "--out", str(out), "--config", str(cfg_file), "--fold", "0", *extra]


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pth", weights_only=False)["model"]


def initial(module, cfg, n_classes=None) -> dict:
    """The weights both runs start from (seeded)."""
    from kzlib.classify.model import Classifier
    from kzlib.detect.model import build_model
    from kzlib.training import seed_everything

    seed_everything(cfg.seed)
    return (Classifier(cfg, n_classes) if module == "kzlib.classify" else build_model(cfg)).state_dict()


def assert_same_updates(start: dict, a: dict, b: dict, rel=1e-3, rel_tensor=1e-2):
    """The two runs moved the trained tensors the same way, to float precision: all of them together
    within ``rel`` of how far they moved, and each within ``rel_tensor`` of how far it moved or within
    the weights' own float32 resolution. Per tensor the bound is looser: a tensor that barely moves
    carries its gradient's summation-order noise relative to its own small update (a BatchNorm bias
    moved 100x less than the convolutions differed by 0.16% on a 2-core AMD EPYC without AVX512, the
    convolutions by up to 0.08%); a real divergence (gradients not averaged, or summed, a half batch
    left out) moves tensors by tens of percent."""
    moved, diff, size = 0, 0.0, 0.0
    for k, v in a.items():
        if not v.is_floating_point() or k.endswith(("running_mean", "running_var")):
            continue
        da, db = v - start[k], b[k] - start[k]
        if da.norm() > 0:
            moved += 1
            diff, size = diff + float((da - db).norm()) ** 2, size + float(da.norm()) ** 2
            resolution = 1e-7 * float(v.abs().max()) * v.numel() ** 0.5
            assert float((da - db).norm()) <= rel_tensor * float(da.norm()) + resolution, \
                (k, float((da - db).norm() / da.norm()))
    assert moved > 10
    assert diff ** 0.5 <= rel * size ** 0.5, diff ** 0.5 / size ** 0.5


@pytest.mark.slow
@pytest.mark.parametrize("module", ["kzlib.classify", "kzlib.detect"])
def test_two_processes_equal_one_with_the_whole_batch(tiny, tmp_path, module):
    """Classifier: three steps; detector: one step (its proposal selection, top-k and NMS, is
    discontinuous, so float noise in later steps picks other proposals), from ImageNet-style weights
    (frozen BatchNorm, as the presets train it)."""
    import torchvision

    cfg = CLS
    extra = ["--boxes", str(boxes_file(tiny, tmp_path / "b.csv"))] if module == "kzlib.classify" else []
    if module == "kzlib.detect":
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
        cfg = DetectConfig(**{**config_dict(DET), "anchor_sizes": DET.anchor_sizes, "pretrained": str(tmp_path / "r18.pth")})
    (tmp_path / "cfg.json").write_text(json.dumps(config_dict(cfg)))
    one = subprocess.run([sys.executable] + train_cmd(module, tiny, tmp_path / "one", tmp_path / "cfg.json", extra),
                         capture_output=True, text=True, env=ONE_THREAD)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(TORCHRUN + train_cmd(module, tiny, tmp_path / "two", tmp_path / "cfg.json", extra),
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    classes = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=False).get("classes")
    assert_same_updates(initial(module, cfg, len(classes) if classes else None), weights(tmp_path / "one"),
                        weights(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "split.json").read_text())["world_size"] == 2
    log = pd.read_csv(tmp_path / "two" / "log.csv")
    assert log["world_size"].tolist() == [2]
    assert two.stdout.count("best validation F1") == 1  # process 0 alone reports


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(tiny, tmp_path):
    cfg = DetectConfig(**{**config_dict(DET), "epochs": 3, "crops_per_page": 2, "anchor_sizes": DET.anchor_sizes})
    (tmp_path / "cfg.json").write_text(json.dumps(config_dict(cfg)))
    straight = subprocess.run(TORCHRUN + train_cmd("kzlib.detect", tiny, tmp_path / "a", tmp_path / "cfg.json"),
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(TORCHRUN + train_cmd("kzlib.detect", tiny, tmp_path / "b", tmp_path / "cfg.json"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt, deadline = tmp_path / "b" / "checkpoint.pth", time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["epoch"] < 2
    resumed = subprocess.run(TORCHRUN + train_cmd("kzlib.detect", tiny, tmp_path / "b", tmp_path / "cfg.json",
                                                  ["--resume"]), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(v, b[k]) for k, v in a.items())  # the same processes and threads: bitwise
    assert pd.read_csv(tmp_path / "b" / "log.csv")["epoch"].tolist() == [0, 1, 2]


@pytest.mark.slow
def test_a_failing_process_ends_the_job_with_its_error_once(tiny, tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(config_dict(DET)))
    r = subprocess.run(TORCHRUN + train_cmd("kzlib.detect", tiny, tmp_path / "run", tmp_path / "cfg.json"),
                       capture_output=True, text=True, env={**os.environ, "KZLIB_FAIL_RANK": "1"})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert out.count("error: process 1 failed on purpose (KZLIB_FAIL_RANK)") == 1


def _reductions(rank: int, backend: str, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    from kzlib import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group(backend, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        result = {"sum": distributed.all_sum(rank + 1), "max": distributed.all_max(rank * 5)}
        distributed.barrier()
    except RuntimeError as e:
        result = {"error": str(e).splitlines()[0]}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_reductions_in_a_device_tagged_group_as_on_cuda(tmp_path, monkeypatch):
    """On CUDA the group is "cpu:gloo,cuda:nccl": the kit's CPU numbers (losses, counts, the time
    budget) go through gloo. NCCL needs GPUs, so here the CUDA half is gloo too; a group with a CUDA
    backend alone — what "nccl" gave — cannot reduce a CPU tensor."""
    import torch.multiprocessing as mp

    from kzlib import distributed

    tagged = distributed.backend(torch.device("cuda"))
    assert tagged == "cpu:gloo,cuda:nccl" and distributed.backend(torch.device("cpu")) == "gloo"
    for backend, ok in ((tagged.replace("nccl", "gloo"), True), ("cuda:gloo", False)):
        out = tmp_path / backend.replace(":", "_").replace(",", "-")
        out.mkdir()
        mp.spawn(_reductions, args=(backend, _free_port(), str(out)), nprocs=2)
        results = [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]
        if ok:
            assert results == [{"sum": 3.0, "max": 5.0}] * 2
        else:
            assert all("No backend type associated with device type cpu" in r["error"] for r in results)
    monkeypatch.setenv("KZLIB_DIST_TIMEOUT_MIN", "90")
    assert distributed.timeout().total_seconds() == 90 * 60


def test_the_group_waits_longer_than_nccls_watchdog(monkeypatch):
    """Process 0 validates while the others wait in a barrier: the group's timeout is 2 hours, not
    NCCL's 10 minutes."""
    from kzlib import distributed

    seen = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(distributed, "active", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.init(torch.device("cpu"))
    assert seen == {"backend": "gloo", "timeout": __import__("datetime").timedelta(minutes=120)}


def _uneven_step(rank: int, port: int, out: str, split: int, accumulation: int) -> None:
    """One classifier step on 2 gloo processes whose micro-batches differ: process 0 has boxes [1, 3]
    (split 2: its 1-box chunk joins the other, one part) against [3, 3] (two parts); with
    accumulation 2, process 0's second micro-batch has one box (dropped: BatchNorm needs two)."""
    import datetime
    import faulthandler

    import torch.distributed as dist

    from kzlib import distributed
    from kzlib.classify.model import Classifier
    from kzlib.classify.train import train_one_epoch
    from kzlib.training import Optimisation

    faulthandler.dump_traceback_later(200, exit=True)  # a hang shows its stack before the test's deadline
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    cfg = ClassifyConfig(**{**config_dict(CLS), "batch_size": 4, "accumulation_steps": accumulation, "hidden": 16})
    torch.manual_seed(0)
    model = distributed.sync_batchnorm(Classifier(cfg, 5, load_pretrained=False), cpu)
    ddp = distributed.wrap(model, cpu)
    opt = Optimisation(model, cfg, cpu, 1)
    opt.split = split
    g = torch.Generator().manual_seed(rank)

    def batch(counts):
        boxes = [torch.tensor([[8.0 + 4 * i, 8.0, 40.0 + 4 * i, 48.0] for i in range(n)]) for n in counts]
        return (torch.rand(len(counts), 3, cfg.crop_height, cfg.crop_width, generator=g), boxes,
                [torch.randint(0, 5, (n,), generator=g) for n in counts])

    loader = [batch([1, 3] if rank == 0 else [3, 3])]
    if accumulation > 1:
        loader.append(batch([1, 0] if rank == 0 else [2, 2]))
    try:
        stats = train_one_epoch(ddp, opt, loader, cfg, cpu, 0, "test")
        result = {"boxes": stats["train_boxes"], "weights": float(sum(p.double().sum() for p in model.parameters()))}
    except Exception as e:  # noqa: BLE001  (what went wrong is the test's answer)
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    # DDP goes before its process group, as in the kit's trainings (finish_training runs after
    # train() returned): destroyed after it, DDP's reducer hung now and then in the process's exit
    del ddp, opt, model
    distributed.close()


@pytest.mark.slow
@pytest.mark.parametrize("split,accumulation,boxes", [(2, 1, 10), (1, 2, 14)])
def test_processes_that_split_a_step_differently_still_match_their_collectives(tmp_path, split, accumulation, boxes):
    """Every process runs as many forwards a step (SyncBatchNorm reduces in each): without that,
    gloo reports a collective mismatch or a process waits until the timeout (NCCL: a hang)."""
    import torch.multiprocessing as mp

    context = mp.spawn(_uneven_step, args=(_free_port(), str(tmp_path), split, accumulation), nprocs=2, join=False)
    deadline = time.time() + 240
    try:
        while not context.join(timeout=5):
            assert time.time() < deadline, "the processes did not finish"
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert all("error" not in r for r in results), results
    assert results[0]["boxes"] == results[1]["boxes"] == boxes  # the step counted every box of both
    assert results[0]["weights"] == results[1]["weights"]  # and both stepped alike

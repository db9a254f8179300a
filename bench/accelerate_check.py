"""Would `accelerate` do the Trainer's precision, placement, DDP and checkpoint state as well? Measured on the CPU.

    python bench/accelerate_check.py            # about a minute on 2 cores; prints one line per finding
    python bench/accelerate_check.py --json     # the findings as one JSON object

What it checks, each against what jtcse_lib.train does:
1. fp16 on the CPU: does `Accelerator(cpu=True, mixed_precision="fp16")` autocast and scale (our fp16 path, its
   overflow counting included, is tested on the CPU)?
2. The fp16 optimizer step with a gradient scaler (a CPU GradScaler, as the CUDA one): host reads
   (`aten._local_scalar_dense`, a device sync on CUDA) per step, and whether `optimizer_step_was_skipped` is right on
   an overflowed step, with the unfused and the fused AdamW (fused is what the Trainer uses on CUDA); beside it the
   Trainer's way (the scale before and after, compared on the device) and the public `GradScaler.get_scale()`.
3. The scheduler wrapper under 2 processes (gloo on the CPU): how many scheduler steps per optimizer step.
4. `Accelerator(cpu=True).prepare` + `accelerator.backward` in the smoke profile's simcse_a (MiniLM): the same
   metrics and bit-identical best weights as the Trainer alone?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _reset() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator configuration per check


def fp16_on_cpu() -> dict:
    import torch
    from accelerate import Accelerator

    _reset()
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    layer = torch.nn.Linear(4, 4)
    with acc.autocast():
        dtype = layer(torch.ones(1, 4)).dtype
    with torch.autocast("cpu", dtype=torch.float16):
        ours = layer(torch.ones(1, 4)).dtype
    return {"accelerate_autocast_dtype": str(dtype), "accelerate_grad_scaler": acc.scaler is not None,
            "torch_autocast_dtype (the Trainer)": str(ours)}


class _HostReads:
    """Counts `aten._local_scalar_dense` (`.item()`, `bool(t)`: a device sync on CUDA) below autograd."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ == "_local_scalar_dense":
                    outer.count += 1
                return func(*args, **(kwargs or {}))

        self.count, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def scaler_step() -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    _reset()
    Accelerator(cpu=True)  # the state AcceleratedOptimizer reads

    def one_step(fused: bool, overflow: bool, wrapper: str) -> dict:
        model = torch.nn.Linear(8, 8)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        inner = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
        opt = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler) if wrapper == "accelerate" else inner
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.ones(2, 8)).sum() * (float("inf") if overflow else 1.0)
        before = model.weight.detach().clone()
        if wrapper == "accelerate":
            scaler.scale(loss).backward()
            with _HostReads() as reads:
                opt.step()  # accelerate calls scaler.step and scaler.update itself
            flag = opt.step_was_skipped
        else:  # the Trainer: the scale before the step and after the update, compared on the device
            scaler.scale(loss).backward()
            with _HostReads() as reads:
                scale = scaler._scale.clone()
                scaler.step(opt)
                scaler.update()
                skipped = (scaler._scale < scale).float()
            flag = bool(skipped)
        return {"host_reads": reads.count, "reports_skipped": flag,
                "weights_changed": not torch.equal(before, model.weight.detach())}

    out = {}
    for wrapper in ("accelerate", "trainer"):
        for fused in (False, True):
            name = f"{wrapper} {'fused' if fused else 'unfused'} AdamW"
            good, bad = one_step(fused, False, wrapper), one_step(fused, True, wrapper)
            out[name] = {"host_reads_per_step": good["host_reads"], "skipped_flag_on_overflow": bad["reports_skipped"],
                         "weights_changed_on_overflow": bad["weights_changed"]}
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))  # creates the scale tensor
    with _HostReads() as reads:
        scaler.get_scale()
    out["GradScaler.get_scale() host reads"] = reads.count
    return out


def _scheduler_worker(rank: int, port: int, split_batches: bool, queue) -> None:
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator, DataLoaderConfiguration

    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=split_batches))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    model, opt, sched = acc.prepare(model, opt, sched)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    queue.put((rank, acc.num_processes, sched.scheduler.last_epoch))
    acc.wait_for_everyone()
    acc.end_training()


def scheduler_steps() -> dict:
    import torch.multiprocessing as mp

    out = {}
    for split in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_scheduler_worker, args=(r, port, split, queue)) for r in range(2)]
        for p in procs:
            p.start()
        rows = sorted(queue.get(timeout=300) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        out[f"split_batches={split}"] = {"processes": rows[0][1], "scheduler_steps_per_optimizer_step": rows[0][2]}
    return out


def golden_smoke() -> dict:
    """The smoke profile's simcse_a trained by the Trainer, and again with model, optimizer and scheduler prepared
    by Accelerator(cpu=True) and the backward through accelerator.backward."""
    import torch
    from accelerate import Accelerator

    from jtcse_lib.config import load_profile
    from jtcse_lib.train import Trainer

    cfg = load_profile("smoke")

    def digest(out: Path) -> dict:
        rows = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]
        weights = (out / "best" / "model.safetensors").read_bytes()
        return {"metrics": hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16],
                "best_weights": hashlib.sha256(weights).hexdigest()[:16]}

    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, "simcse_a", Path(tmp) / "plain", progress=False).run()
        _reset()
        acc = Accelerator(cpu=True)
        trainer = Trainer(cfg, "simcse_a", Path(tmp) / "accelerate", progress=False)
        trainer.forward_model, trainer.optimizer, trainer.scheduler = acc.prepare(
            trainer.model, trainer.optimizer, trainer.scheduler)

        class Backward:  # the Trainer's scaler (disabled in fp32) hands the loss to accelerator.backward
            def __init__(self, loss):
                self.loss = loss

            def backward(self):
                acc.backward(self.loss)

        trainer.scaler.scale = Backward
        trainer.run()
        plain, accelerated = digest(Path(tmp) / "plain"), digest(Path(tmp) / "accelerate")
    return {"trainer": plain, "accelerate": accelerated, "identical": plain == accelerated,
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    parser.add_argument("--skip-training", action="store_true", help="skip check 4 (the MiniLM smoke training)")
    args = parser.parse_args(argv)
    try:
        import accelerate
    except ImportError:
        print("accelerate is not installed (pip install accelerate): nothing to measure")
        return 0
    findings = {"accelerate": accelerate.__version__, "1 fp16 on CPU": fp16_on_cpu(),
                "2 fp16 optimizer step": scaler_step(), "3 scheduler under 2 processes": scheduler_steps()}
    if not args.skip_training:
        findings["4 smoke simcse_a with Accelerator(cpu=True)"] = golden_smoke()
    if args.json:
        print(json.dumps(findings, indent=1))
        return 0
    for check, found in findings.items():
        if isinstance(found, dict):
            for key, value in found.items():
                print(f"{check}: {key}: {value}")
        else:
            print(f"{check}: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

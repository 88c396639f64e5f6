"""Distributed plumbing kept out of the loop: the Accelerator, world-size checks,
preemption signals, and fp32 LSTMs under CPU bf16 autocast."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import torch
from torch import nn

__all__ = ["make_accelerator", "check_world", "Preemption", "keep_lstm_fp32",
           "broadcast_from_main", "EXIT_PREEMPTED", "WorldSizeError"]

# Distinct exit status after a preemption checkpoint (EX_TEMPFAIL): sbatch scripts requeue on it.
EXIT_PREEMPTED = 75


class WorldSizeError(RuntimeError):
    pass


def make_accelerator(grad_accum: int, timeout_s: int, find_unused: bool = True) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    # gloo whenever there is no GPU: DeepSpeed on CPU needs it spelled out (its
    # default is nccl), and MULTI_CPU uses it anyway.
    # (Only when launched distributed: a backend makes accelerate init a process group.)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = "gloo" if launched and not torch.cuda.is_available() else None
    handlers = [
        InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=timeout_s)),
        # Stage 1 trains the VRAE and the refine net in turns: the idle half has no grad.
        DistributedDataParallelKwargs(find_unused_parameters=find_unused),
    ]
    # Without a GPU the ranks must be told they are CPU ranks, or each believes it is alone
    # (accelerate's multi-GPU launcher does not forward use_cpu). DeepSpeed is the exception:
    # cpu=True would silently drop it, and it runs on CPU with gloo as set above.
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    cpu = not torch.cuda.is_available() and not use_deepspeed
    return Accelerator(gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers, cpu=cpu)


def check_world(accelerator: Any, expect: int | None) -> None:
    """Fail before training if the world is not the one asked for.

    accelerate can silently start one process, or N processes that each think they
    are alone (DistributedType.NO): both show up here.
    """
    n = accelerator.num_processes
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world != n:
        raise WorldSizeError(
            f"the launcher started {env_world} processes (WORLD_SIZE) but this one sees a world "
            f"of {n}: the processes did not join one group. On CPU use "
            f"launch_configs/cpu_multiprocess.yaml (accelerate's --cpu flag alone starts one "
            f"process per machine and the ranks never meet)."
        )
    if expect is not None and expect != n:
        raise WorldSizeError(
            f"--expect-world-size {expect} but the job runs {n} process(es); check the launch "
            f"config's num_processes/num_machines"
        )


def broadcast_from_main(obj: Any) -> Any:
    """The main process's ``obj`` on every rank (a collective: every rank must call it)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


class Preemption:
    """SIGTERM/SIGUSR1 set a flag; ranks agree on it at step boundaries."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, accelerator: Any) -> bool:
        """True on every rank if any rank got a signal (one tiny all-reduce)."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def keep_lstm_fp32(model: nn.Module) -> int:
    """Run every nn.LSTM outside autocast, in fp32.

    oneDNN has no bf16 LSTM kernel on AVX2 CPUs ("could not create a primitive
    descriptor"); Linear/conv layers still get bf16. Returns how many LSTMs were wrapped.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, nn.LSTM) and not getattr(m, "_ms2dist_fp32", False):
            orig = m.forward

            def fwd(input: Any, hx: Any = None, _orig: Any = orig) -> Any:
                with torch.autocast(device_type="cpu", enabled=False):
                    if isinstance(input, torch.Tensor):
                        input = input.float()
                    if hx is not None:
                        hx = tuple(h.float() for h in hx)
                    return _orig(input, hx)

            m.forward = fwd
            m._ms2dist_fp32 = True
            count += 1
    return count

"""launch_configs/: every accelerate YAML parses with accelerate's own loader, the DeepSpeed
JSON passes DeepSpeed's own validation, and the CPU multi-process config REALLY starts two
ranks that form one gloo world (real `accelerate launch`, nothing mocked)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "launch_configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))
DS_JSON = CONFIGS / "deepspeed_zero2.json"

# accelerate refuses these next to a deepspeed_config_file ("... will be ignored").
DS_FORBIDDEN_IN_YAML = {
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_stage",
    "offload_optimizer_device",
    "offload_param_device",
    "offload_param_nvme_path",
    "offload_optimizer_nvme_path",
    "zero3_save_16bit_model",
}


def _load(path: Path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig), path
    return cfg


def test_expected_configs_present():
    names = {p.name for p in YAMLS}
    for name in (
        "single_gpu_p100.yaml",
        "multi_gpu.yaml",
        "multi_node.yaml",
        "deepspeed_zero2.yaml",
        "cpu_multiprocess.yaml",
    ):
        assert name in names
    assert DS_JSON.is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_loads_with_accelerate(path: Path):
    from accelerate.utils import DistributedType

    cfg = _load(path)
    assert cfg.num_processes >= 1
    assert cfg.num_machines >= 1
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        ds = cfg.deepspeed_config
        ds_file = REPO / ds["deepspeed_config_file"]
        assert ds_file.is_file(), f"{path.name}: {ds_file} missing (path is relative to the repo)"
        assert not DS_FORBIDDEN_IN_YAML & set(ds), f"{path.name}: fields ignored with a JSON file"
        assert cfg.mixed_precision is None, (
            f"{path.name}: mixed_precision next to a deepspeed_config_file is refused; "
            "pass --mixed_precision at launch"
        )


def test_specific_settings():
    from accelerate.utils import DistributedType

    p100 = _load(CONFIGS / "single_gpu_p100.yaml")
    assert p100.distributed_type == DistributedType.NO and p100.mixed_precision == "fp16"
    multi = _load(CONFIGS / "multi_gpu.yaml")
    assert multi.distributed_type == DistributedType.MULTI_GPU and multi.mixed_precision == "bf16"
    node = _load(CONFIGS / "multi_node.yaml")
    assert node.num_machines > 1 and node.main_process_ip is None  # filled by the launcher
    cpu = _load(CONFIGS / "cpu_multiprocess.yaml")
    # MULTI_CPU / --cpu start ONE process with the simple launcher; MULTI_GPU uses torchrun.
    assert cpu.distributed_type == DistributedType.MULTI_GPU
    assert cpu.num_processes == 2 and cpu.mixed_precision == "no" and cpu.use_cpu


def _concrete_ds(world_size: int, micro: int = 4, gas: int = 2, precision: str = "bf16") -> dict:
    """What accelerate.prepare() does to the "auto" fields, with concrete values."""
    cfg = json.loads(DS_JSON.read_text())
    cfg = copy.deepcopy(cfg)
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    assert cfg["train_batch_size"] == "auto"
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = gas
    cfg["train_batch_size"] = micro * gas * world_size
    cfg["gradient_clipping"] = 1.0
    cfg["bf16"]["enabled"] = precision == "bf16"
    cfg["fp16"]["enabled"] = precision == "fp16"

    def no_auto(x):
        if isinstance(x, dict):
            for v in x.values():
                no_auto(v)
        assert x != "auto", "an 'auto' value accelerate does not fill"

    no_auto(cfg)
    return cfg


@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_deepspeed_json_validates(precision: str):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    # Outside a process group DeepSpeedConfig assumes world size 1.
    ds = DeepSpeedConfig(_concrete_ds(world_size=1, precision=precision))
    assert ds.zero_optimization_stage == 2
    assert ds.train_batch_size == 8
    assert ds.gradient_clipping == 1.0
    # DeepSpeed's own checks are live (so the test above means something):
    bad = _concrete_ds(world_size=1)
    bad["zero_optimization"]["stagee"] = 2
    with pytest.raises(Exception, match="stagee"):
        DeepSpeedConfig(bad)
    bad = _concrete_ds(world_size=1)
    bad["train_batch_size"] = 7
    with pytest.raises(AssertionError, match="train_batch_size"):
        DeepSpeedConfig(bad)


RANK_SCRIPT = """
import os, torch.distributed as dist
from accelerate import Accelerator, PartialState
acc = Accelerator()
state = PartialState()
print(f"RANK {state.process_index} num_processes={state.num_processes} "
      f"torch_ws={dist.get_world_size() if dist.is_initialized() else 0} "
      f"backend={dist.get_backend() if dist.is_initialized() else None} "
      f"type={acc.distributed_type.name} END", flush=True)
assert state.num_processes == 2, state.num_processes
assert dist.get_world_size() == 2
assert acc.distributed_type.name == "MULTI_CPU"
t = __import__("torch").tensor([float(state.process_index + 1)])
t = acc.reduce(t, reduction="sum")
assert t.item() == 3.0, t  # 1 + 2: both ranks took part in one all-reduce
# Tear the gloo group down before exit: without it torch 2.13 intermittently aborts at
# interpreter exit ("terminate called without an active exception", SIGABRT).
acc.wait_for_everyone()
acc.end_training()
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _launch(args: list[str], script: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args, str(script)]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ACCELERATE_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_cpu_multiprocess_forms_one_world(tmp_path: Path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = _clean_env()
    env["ACCELERATE_USE_CPU"] = "1"  # the part of the recipe a YAML cannot carry
    res = _launch(
        ["--config_file", str(CONFIGS / "cpu_multiprocess.yaml")], script, env, timeout=180
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    # Two processes share the pipe: their lines can interleave, so match, don't split.
    ranks = sorted(
        re.findall(
            r"RANK (\d) num_processes=(\d) torch_ws=(\d) backend=(\w+) "
            r"type=(\w+?) END",
            res.stdout,
        )
    )
    assert ranks == [
        ("0", "2", "2", "gloo", "MULTI_CPU"),
        ("1", "2", "2", "gloo", "MULTI_CPU"),
    ], out[-4000:]


DS_SCRIPT = """
import torch, torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
ds = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randn(32, 1))
dl = torch.utils.data.DataLoader(ds, batch_size=4)
model, opt, dl = acc.prepare(model, opt, dl)
for i, (x, y) in enumerate(dl):
    loss = torch.nn.functional.mse_loss(model(x), y)
    acc.backward(loss)
    opt.step()
    opt.zero_grad()
    if i == 1:
        break
assert acc.distributed_type.name == "DEEPSPEED"
assert dist.get_world_size() == 2 and acc.num_processes == 2
assert model.zero_optimization_stage() == 2
assert model.train_micro_batch_size_per_gpu() == 4
assert model.train_batch_size() == 8
print(f"DSRANK {acc.process_index} ok", flush=True)
acc.wait_for_everyone()
acc.end_training()
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_deepspeed_zero2_two_cpu_ranks(tmp_path: Path):
    """Two real ZeRO-2 steps on two CPU ranks (first run JIT-builds an op: ~50 s)."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    script = tmp_path / "ds.py"
    script.write_text(DS_SCRIPT)
    res = _launch(
        ["--config_file", str(CONFIGS / "deepspeed_zero2_cpu.yaml")],
        script,
        _clean_env(),
        timeout=540,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert sorted(re.findall(r"DSRANK (\d) ok", res.stdout)) == ["0", "1"], out[-4000:]

"""Training on several processes with PyTorch's own engine: DDP, FSDP2 and accelerate, on one machine.

The launcher side (what a notebook or a test calls):
    launch(job, nprocs)      start `nprocs` processes of `lora_teach.distributed_worker` on 127.0.0.1 with a free
                             port (gloo on the CPU, nccl on GPUs), wait at most `timeout` seconds, kill every process
                             group it started on a timeout or a failure, and return what each rank reported
    run_command(cmd)         one command (`accelerate launch ...`), bounded in time the same way
    torchrun_command(...)    the equivalent `torchrun` command line, for several GPUs or several machines
The worker side (what each process runs): `init_from_env` (refuses a launch without the environment variables
torchrun sets), `build_model`, `rank_batch`, `AllReduceCounter` (a DDP communication hook that counts the bytes
all-reduced), `shard_with_fsdp2` (`torch.distributed.fsdp.fully_shard` per block, then on the root) and
`parameter_bytes` (what one rank holds). On paper: `ring_allreduce_seconds` and `INTERCONNECTS`.

References: PyTorch's DDP (Li et al., 2020, *PyTorch Distributed*), FSDP (Zhao et al., 2023) and its FSDP2
`fully_shard` API; ZeRO (Rajbhandari et al., 2020); ring all-reduce as NCCL runs it (each rank sends and receives
2 (N - 1) / N times the buffer).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .methods import LORA_ALPHA, LORA_R, LORA_TARGETS

LOOPBACK = "127.0.0.1"
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets for each rank
JOBS = ("ddp", "fsdp", "course", "hang", "fail")  # what lora_teach.distributed_worker can run
# the course's two LoRA settings (lora_teach.methods, as notebooks 09 and 10 train them); None: every weight trains
METHODS = {"full": None, "lora q,v": LORA_TARGETS["lora"], "lora all-linear": LORA_TARGETS["lora-all"]}
RANK, ALPHA = LORA_R, LORA_ALPHA
DTYPES = {"float32": torch.float32, "float64": torch.float64}
STEPS, BATCH, BLOCK, LR = 3, 4, 64, 3e-3  # default run: 3 AdamW steps, 4 windows of 64 characters per rank


class LaunchError(RuntimeError):
    """A distributed run that could not start, failed on a rank, or ran out of time (every process is gone)."""


# -------------------------------------------------------------------------------------------------- launcher
def default_backend() -> str:
    """'nccl' when CUDA GPUs are present, else 'gloo' (the CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def max_world_size(backend: str) -> int:
    """How many local processes the machine allows: one per GPU for nccl, one per usable CPU core for gloo."""
    if backend == "nccl":
        return torch.cuda.device_count()
    if backend == "gloo":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (GPUs), got {backend!r}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def check_port(port) -> int:
    """`port` if it is an int in 1024..65535 that is free on 127.0.0.1; a LaunchError naming it otherwise."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        raise ValueError(f"port must be an int from 1024 to 65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError as err:
            raise LaunchError(f"port {port} on {LOOPBACK} is already in use ({err.strerror}); pass another port, "
                              "or port=None to let the system pick a free one") from None
    return port


def _loopback_listener(port: int) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (0: a free one) and listening: the store of a run's rank 0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, port))
        s.listen(128)
    except OSError as err:
        s.close()
        raise LaunchError(f"port {port} on {LOOPBACK} is already in use ({err.strerror}); pass another port, "
                          "or port=None to let the system pick a free one") from None
    return s


def rank_env(rank: int, world_size: int, port: int, backend: str) -> dict:
    """The environment of one rank, as torchrun sets it, on the loopback interface only."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
               MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), LORA_TEACH_BACKEND=backend,
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (it and every child it started), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")  # a rank whose partner died


def _failure(what: str, procs: list[subprocess.Popen], logs: list[Path]) -> str:
    """The message of a failed run: the rank that failed first in its own right (not because a partner died),
    after giving the others a second to exit."""
    end = time.monotonic() + 1.0
    while time.monotonic() < end and any(p.poll() is None for p in procs):
        time.sleep(0.02)
    failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
    cause = min(failed, key=lambda i: any(s in _tail(logs[i], 40) for s in PEER_GONE))
    others = [i for i in failed if i != cause]
    also = f" (then ranks {others} too)" if others else ""
    return (f"{what}: rank {cause} exited with code {procs[cause].returncode}{also}; its last lines:\n"
            f"{_tail(logs[cause])}")


def _wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float, what: str) -> None:
    """Wait until every process exits 0; on a timeout or a failure kill every group and raise LaunchError."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                raise LaunchError(_failure(what, procs, logs))
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                waiting = [i for i, c in enumerate(codes) if c is None]
                raise LaunchError(f"{what}: ranks {waiting} still running after {timeout:g} s (a hung rank, or a "
                                  f"machine too busy): every process was killed. Last lines of rank "
                                  f"{waiting[0]}:\n{_tail(logs[waiting[0]])}")
            time.sleep(0.02)
    except BaseException:
        for p in procs:
            _kill_group(p)
        raise


def launch(job: str = "ddp", nprocs: int = 2, *, timeout: float = 60.0, port: int | None = None,
           backend: str | None = None, options: dict | None = None) -> dict:
    """Run `job` (one of JOBS) of lora_teach.distributed_worker in `nprocs` local processes and return
    {'ranks': [what each rank reported], 'tensors': rank 0's tensors}. Every process starts in its own process
    group on 127.0.0.1; all are killed if one fails or `timeout` seconds pass. `options` go to the job as JSON."""
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}")
    backend = backend or default_backend()
    limit = max_world_size(backend)
    if not isinstance(nprocs, int) or isinstance(nprocs, bool) or not 1 <= nprocs <= limit:
        raise ValueError(f"nprocs must be an int from 1 to {limit} on this machine ({backend}: one process per "
                         f"{'GPU' if backend == 'nccl' else 'CPU core'}), got {nprocs!r}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if port is not None:
        check_port(port)
    options = json.dumps(options or {})  # fails here, before any process starts, if not JSON
    # Rank 0's store listens on a socket bound here, to 127.0.0.1 only (torch's own would listen on every
    # interface), and held from now on, so no other program can take the port in between.
    listener = _loopback_listener(port or 0)
    port = listener.getsockname()[1]
    with listener, tempfile.TemporaryDirectory(prefix="lora_teach_dist_") as out:
        out = Path(out)
        logs = [out / f"rank{r}.log" for r in range(nprocs)]
        procs = []
        try:
            for r in range(nprocs):
                env = rank_env(r, nprocs, port, backend) | {"LORA_TEACH_STORE": "loopback"}
                if r == 0:
                    env["LORA_TEACH_STORE_FD"] = str(listener.fileno())
                with open(logs[r], "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "lora_teach.distributed_worker", job, str(out), options],
                        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True, pass_fds=(listener.fileno(),) if r == 0 else ()))
        except BaseException:
            for p in procs:
                _kill_group(p)
            raise
        listener.close()  # rank 0 holds its own copy
        _wait_all(procs, logs, timeout, f"{job} on {nprocs} processes")
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nprocs)]
        tensors = out / TENSORS
        return {"ranks": ranks, "tensors": load_tensors(tensors) if tensors.exists() else {}}


def run_command(cmd: list[str], *, timeout: float = 120.0, env: dict | None = None) -> str:
    """Run `cmd` in its own process group, bounded by `timeout` seconds; its output (stdout and stderr together).
    On a timeout or a non-zero exit, the whole group is killed and a LaunchError shows the last lines."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:
            _kill_group(proc)
            log.seek(0)
            tail = "\n".join(log.read().decode(errors="replace").strip().splitlines()[-15:])
            raise LaunchError(f"{' '.join(cmd[:3])} ... ran over {timeout:g} s: every process was killed. Last "
                              f"lines:\n{tail}") from None
        _kill_group(proc)  # the launcher has exited; nothing it started may outlive it
        log.seek(0)
        text = log.read().decode(errors="replace")
    if code != 0:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise LaunchError(f"{' '.join(cmd[:3])} ... exited with code {code}. Last lines:\n{tail}")
    return text


def accelerate_command(script: str, nprocs: int = 2, port: int | None = None, *args: str) -> list[str]:
    """`accelerate launch` of `script` on `nprocs` local processes that find each other at 127.0.0.1. On a machine
    without GPUs the processes still use the CPU: the script builds `Accelerator(cpu=True)` (accelerate's own
    `--cpu` flag starts a single process unless an MPI hostfile is given). accelerate starts them through
    torchrun, whose rendezvous store listens on every interface at the given port while the run lasts (torch has
    no option to bind it to one address); `launch` binds everything to 127.0.0.1."""
    port = free_port() if port is None else check_port(port)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(nprocs), "--num_machines", "1",
            "--machine_rank", "0", "--main_process_ip", LOOPBACK, "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", script, *args]


def accelerate_result(out) -> dict:
    """What lora_teach/accelerate_train.py wrote into `out`: losses, world size, distributed type, and 'state'
    (the trained parameters)."""
    out = Path(out)
    return json.loads((out / "accelerate.json").read_text()) | load_tensors(out / "accelerate.safetensors")


def torchrun_command(script: str, nproc_per_node: int = 8, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = LOOPBACK, master_port: int = 29500) -> str:
    """The `torchrun` command line that starts `script` on `nnodes` machines of `nproc_per_node` GPUs each (run
    the same line on every machine with its own `node_rank`)."""
    return (f"torchrun --nnodes {nnodes} --nproc_per_node {nproc_per_node} --node_rank {node_rank} "
            f"--master_addr {master_addr} --master_port {master_port} {script}")


# The accelerate config of an FSDP2 run on two machines of 8 GPUs (write it to a file, pass --config_file).
ACCELERATE_FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 2              # two machines...
num_processes: 16            # ...of 8 GPUs each: 16 processes in all
machine_rank: 0              # 1 in the copy of this file on the second machine
main_process_ip: 10.0.0.1    # the first machine's address on the cluster's network
main_process_port: 29500
rdzv_backend: static
same_network: true
mixed_precision: bf16
use_cpu: false
debug: false
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true    # FULL_SHARD (ZeRO-3); false keeps the weights after forward: SHARD_GRAD_OP
  fsdp_offload_params: false          # true: weights, gradients and optimizer state in CPU memory
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer   # one FSDP unit per block
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_cpu_ram_efficient_loading: true
  fsdp_activation_checkpointing: true
"""


# ---------------------------------------------------------------------------------------------- worker side
TENSORS = "tensors.safetensors"  # what rank 0 sends back: {group: {parameter name: tensor}}, flattened


def save_tensors(groups: dict, path) -> None:
    """Write {group: {name: tensor}} to one safetensors file (keys 'group|name')."""
    from safetensors.torch import save_file

    save_file({f"{g}|{n}": t.contiguous() for g, named in groups.items() for n, t in named.items()}, str(path))


def load_tensors(path) -> dict:
    """{group: {name: tensor}} from a file `save_tensors` wrote."""
    from safetensors.torch import load_file

    groups: dict = {}
    for key, t in load_file(str(path)).items():
        group, name = key.split("|", 1)
        groups.setdefault(group, {})[name] = t
    return groups
def init_from_env(timeout: float = 30.0) -> tuple[int, int, torch.device]:
    """Join the process group the launcher described in ENV_VARS; (rank, world size, device). A collective that
    waits more than `timeout` seconds (a hung rank) raises instead of waiting forever."""
    import torch.distributed as dist

    missing = [k for k in ENV_VARS if k not in os.environ]
    if missing:
        raise RuntimeError(f"environment variables {missing} are not set: this script is one rank of a distributed "
                           "run. Start it with lora_teach.distributed.launch, `torchrun --nproc_per_node N ...` "
                           "or `accelerate launch ...`, which set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
                           "MASTER_PORT for each process")
    backend = os.environ.get("LORA_TEACH_BACKEND") or default_backend()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    wait = datetime.timedelta(seconds=timeout)
    store = None
    if os.environ.get("LORA_TEACH_STORE") == "loopback":  # launch(): rank 0 got a socket bound to 127.0.0.1
        fd = int(os.environ["LORA_TEACH_STORE_FD"]) if rank == 0 else None
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=rank == 0,
                              timeout=wait, master_listen_fd=fd)
    dist.init_process_group(backend, store=store, rank=rank if store else -1, world_size=world if store else -1,
                            timeout=wait, device_id=device if backend == "nccl" else None)
    return rank, world, device


def build_model(method: str, device: torch.device | str = "cpu", dtype: str = "float32"):
    """The course's pretrained GPT for `method` (METHODS) in `dtype` ('float32' or 'float64'): every weight
    trainable ('full'), or LoRA r = 8, alpha = 16 on the named layers with the base frozen; A drawn after the
    course seed, so every process (and the one-process reference) starts from the same numbers."""
    from .lora import LoRAConfig, apply_lora
    from .model import load_base_model
    from .training import seed_everything

    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    model = load_base_model(device).to(DTYPES[dtype])
    seed_everything()
    if METHODS[method] is not None:
        apply_lora(model, LoRAConfig(r=RANK, alpha=ALPHA, target_modules=METHODS[method]))
    return model.train()


_TASK = {}


def global_batch(step: int, batch: int, block: int = BLOCK):
    """The whole batch of step `step`: `batch` Shakespeare windows of `block` characters, (x, y, mask), each
    (batch, block); the same on every process."""
    from .data import LanguageModelingTask
    from .training import SEED

    if block not in _TASK:
        _TASK[block] = LanguageModelingTask("shakespeare", block_size=block)
    return _TASK[block].train_batch(batch, torch.Generator().manual_seed(SEED + step))


def rank_batch(step: int, per_rank: int, rank: int, world: int, device, block: int = BLOCK):
    """Rank `rank`'s rows of step `step`'s whole batch of per_rank * world windows."""
    x, y, mask = global_batch(step, per_rank * world, block)
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return tuple(t[rows].to(device) for t in (x, y, mask))


def trainable_state(model) -> dict:
    """{name: a CPU copy} of the parameters that train (a DTensor is gathered whole first)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name.removeprefix("module.")] = t.detach().cpu().clone()
    return out


def train_single(method: str, steps: int = STEPS, batch: int = 2 * BATCH, lr: float = LR, device="cpu",
                 dtype: str = "float32"):
    """The one-process reference: `steps` AdamW steps on the whole batch of `batch` windows; (losses, trainable
    state)."""
    from .training import train_step

    model = build_model(method, device, dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = [train_step(model, opt, rank_batch(s, batch, 0, 1, device)).item() for s in range(steps)]
    return losses, trainable_state(model)


class AllReduceCounter:
    """A DDP communication hook that all-reduces each gradient bucket as DDP does by default (sum, then divide by
    the world size) and counts its bytes: `ddp.register_comm_hook(counter, AllReduceCounter.hook)`."""

    def __init__(self, group=None):
        self.group = group
        self.bytes = 0  # since the last reset
        self.buckets = 0

    def reset(self) -> None:
        self.bytes = self.buckets = 0

    @staticmethod
    def hook(state: AllReduceCounter, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        buffer = bucket.buffer()  # the bucket's gradients, flattened into one tensor
        state.bytes += buffer.numel() * buffer.element_size()
        state.buckets += 1
        return allreduce_hook(state.group, bucket)


def shard_with_fsdp2(model, device):
    """`fully_shard` on each block, then on the whole model (FSDP2): every parameter becomes a DTensor split along
    its first dimension across the ranks, gathered for a block's forward and backward and freed after."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def parameter_bytes(model) -> dict:
    """Bytes of parameters this process holds: its local shard of a DTensor, or the whole tensor; split into
    'frozen' and 'trainable', with their 'total'."""
    out = {"frozen": 0, "trainable": 0}
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        out["trainable" if p.requires_grad else "frozen"] += local.numel() * local.element_size()
    out["total"] = out["frozen"] + out["trainable"]
    return out


# ------------------------------------------------------------------------------------------------- on paper
# Published bandwidths, bytes per second in one direction.
INTERCONNECTS = {
    "NVLink 4 (H100 SXM)": (450e9, "NVIDIA H100 Tensor Core GPU datasheet: NVLink 900 GB/s, both directions "
                                   "together"),
    "PCIe 4.0 x16": (31.5e9, "PCI-SIG PCIe 4.0 specification: 16 GT/s per lane with 128b/130b coding, 16 lanes: "
                             "31.5 GB/s each way"),
    "InfiniBand NDR 400 Gb/s": (50e9, "NVIDIA ConnectX-7 / Quantum-2 product briefs: 400 Gb/s per port"),
    "Ethernet 100 Gb/s": (12.5e9, "IEEE 802.3 100GBASE: 100 Gb/s = 12.5 GB/s each way"),
}


def ring_allreduce_seconds(nbytes: float, n: int, bandwidth: float) -> float:
    """Seconds a ring all-reduce of `nbytes` takes on `n` devices linked at `bandwidth` bytes/s each way: every
    device sends (and receives) 2 (n - 1) / n * nbytes; latency and overlap with compute ignored."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (devices) must be a positive int, got {n!r}")
    if not bandwidth > 0 or nbytes < 0:
        raise ValueError(f"need bandwidth > 0 and nbytes >= 0, got {bandwidth!r} and {nbytes!r}")
    return 2 * (n - 1) / n * nbytes / bandwidth

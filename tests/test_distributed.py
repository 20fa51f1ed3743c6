"""lora_teach.distributed: the launcher's refusals and limits, and real two-process runs on 127.0.0.1 (gloo on the
CPU): DDP gives the weights of one process with the whole batch, its communication hook counts exactly the
trainable gradients, FSDP2 holds half the base on each rank with DDP's losses, accelerate runs the same training,
a hung or failing rank ends the run within its timeout, and no process is left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import lora_teach
from lora_teach import distributed as D

TWO_CORES = pytest.mark.skipif(D.max_world_size(D.default_backend()) < 2, reason="needs two CPU cores or GPUs")


def workers_alive(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds `marker` (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


# ------------------------------------------------------------------------------------- refusals, no process
def test_an_unknown_job_and_a_bad_timeout_are_refused():
    with pytest.raises(ValueError, match="job must be one of"):
        D.launch("train")
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        D.launch("ddp", 1, timeout=0)


def test_a_world_size_larger_than_the_machine_is_refused_before_anything_starts():
    limit = D.max_world_size("gloo")
    with pytest.raises(ValueError, match=rf"nprocs must be an int from 1 to {limit} on this machine"):
        D.launch("ddp", limit + 1, backend="gloo")
    with pytest.raises(ValueError, match="backend must be 'gloo'"):
        D.launch("ddp", 1, backend="mpi")


def test_a_port_in_use_gets_a_clear_message():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(D.LaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            D.launch("ddp", 1, port=port)
    with pytest.raises(ValueError, match="port must be an int from 1024 to 65535"):
        D.check_port(80)


def test_the_free_port_is_on_the_loopback_interface():
    port = D.free_port()
    assert D.check_port(port) == port
    env = D.rank_env(1, 2, port, "gloo")
    assert (env["MASTER_ADDR"], env["RANK"], env["WORLD_SIZE"], env["GLOO_SOCKET_IFNAME"]) == ("127.0.0.1", "1", "2",
                                                                                                 "lo")


def test_a_rank_without_the_environment_variables_says_how_to_launch_it(monkeypatch):
    for name in D.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"environment variables \['RANK', 'WORLD_SIZE'.*torchrun"):
        D.init_from_env()


def test_the_worker_script_run_by_hand_fails_with_that_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS}
    out = subprocess.run([sys.executable, "-m", "lora_teach.distributed_worker", "ddp", str(tmp_path), "{}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "are not set: this script is one rank of a distributed run" in out.stderr


def test_ring_allreduce_arithmetic_and_named_sources():
    assert D.ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)  # 2 (N - 1) / N = 1 for two devices
    assert D.ring_allreduce_seconds(1e9, 8, 1e9) == pytest.approx(1.75)
    assert D.ring_allreduce_seconds(1e9, 1, 1e9) == 0
    assert all(bandwidth > 0 and len(source) > 20 for bandwidth, source in D.INTERCONNECTS.values())
    with pytest.raises(ValueError, match="n \\(devices\\) must be a positive int"):
        D.ring_allreduce_seconds(1e9, 0, 1e9)


def test_the_written_commands():
    line = D.torchrun_command("train.py", nproc_per_node=8, nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert line == ("torchrun --nnodes 2 --nproc_per_node 8 --node_rank 1 --master_addr 10.0.0.1 "
                    "--master_port 29500 train.py")
    cmd = D.accelerate_command("train.py", 2, None, "out")
    assert cmd[1:3] == ["launch", "--multi_gpu"] and cmd[cmd.index("--main_process_ip") + 1] == "127.0.0.1"
    assert cmd[-2:] == ["train.py", "out"]


def test_the_accelerate_fsdp_config_is_one_accelerate_reads():
    yaml = pytest.importorskip("yaml")
    from accelerate.commands.config import cluster
    from accelerate.commands.config.config_args import ClusterConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fsdp.yaml"
        path.write_text(D.ACCELERATE_FSDP_CONFIG)
        config = ClusterConfig.from_yaml_file(path)  # refuses unknown top-level keys
    assert "FSDP" in str(config.distributed_type) and config.num_processes == 16
    asked = Path(cluster.__file__).read_text()  # the keys `accelerate config` writes for FSDP
    keys = yaml.safe_load(D.ACCELERATE_FSDP_CONFIG)["fsdp_config"]
    assert [k for k in keys if f'fsdp_config["{k}"]' not in asked] == []


# ------------------------------------------------------------------------------------ real two-process runs
@pytest.fixture(scope="module")
def course_run():
    """One launch of notebook 15's job (DDP on three methods in float32, two in float64, then FSDP2)."""
    if D.max_world_size(D.default_backend()) < 2:
        pytest.skip("needs two CPU cores or GPUs")
    return D.launch("course", 2, timeout=180, options={"float64_methods": ["full", "lora q,v"]})


@pytest.mark.slow
@TWO_CORES
@pytest.mark.parametrize("method", ["full", "lora q,v"])
def test_ddp_two_processes_give_the_weights_of_one_process_with_the_whole_batch(course_run, method):
    losses, state = D.train_single(method, dtype="float64")
    ddp = course_run["tensors"][f"ddp float64/{method}"]
    assert ddp.keys() == state.keys()
    start = D.trainable_state(D.build_model(method, dtype="float64"))
    moved = max((state[k] - start[k]).abs().max().item() for k in state)
    apart = max((state[k] - ddp[k]).abs().max().item() for k in state)
    assert moved > 1e-3 and apart < 1e-9, (moved, apart)
    assert course_run["ranks"][0]["ddp float64"][method] == pytest.approx(losses, abs=1e-12)


@pytest.mark.slow
@TWO_CORES
def test_the_comm_hook_counts_the_trainable_gradients_exactly(course_run):
    report = course_run["ranks"][0]["ddp"]
    expected = {"full": 834_560, "lora q,v": 16_384, "lora all-linear": 73_728}
    for method, trainable in expected.items():
        assert report[method]["trainable"] == trainable
        assert report[method]["bytes_per_step"] == [4 * trainable] * D.STEPS
    assert course_run["ranks"][1]["ddp"]["full"]["bytes_per_step"] == report["full"]["bytes_per_step"]


@pytest.mark.slow
@TWO_CORES
def test_fsdp2_holds_half_the_base_on_each_rank_and_trains_as_ddp(course_run):
    ranks = [r["fsdp"] for r in course_run["ranks"]]
    whole = ranks[0]["unsharded_bytes"]
    assert sum(r["rank_bytes"]["total"] for r in ranks) == whole["total"]
    for r in ranks:
        assert abs(r["rank_bytes"]["frozen"] - whole["frozen"] / 2) < 0.001 * whole["frozen"]
    assert ranks[0]["losses"] == pytest.approx(course_run["ranks"][0]["ddp"]["lora q,v"]["losses"], abs=1e-6)
    fsdp, ddp = course_run["tensors"]["fsdp/lora q,v"], course_run["tensors"]["ddp/lora q,v"]
    assert max((fsdp[k] - ddp[k]).abs().max().item() for k in ddp) < 1e-5


@pytest.mark.slow
@TWO_CORES
def test_a_hung_rank_is_killed_within_the_timeout_and_leaves_no_process():
    with pytest.raises(D.LaunchError, match=r"ranks \[(0, )?1\] still running after 15 s"):
        D.launch("hang", 2, timeout=15)
    assert workers_alive("lora_teach.distributed_worker hang") == []


@pytest.mark.slow
@TWO_CORES
def test_a_failing_rank_stops_the_run_with_its_message_and_leaves_no_process():
    with pytest.raises(D.LaunchError, match="(?s)rank 1 exited with code 1.*ValueError: a deliberate failure"):
        D.launch("fail", 2, timeout=60)
    assert workers_alive("lora_teach.distributed_worker fail") == []


ACCELERATE_SCRIPT = str(Path(lora_teach.__file__).with_name("accelerate_train.py"))


@pytest.mark.slow
@TWO_CORES
def test_accelerate_launch_runs_the_same_training_as_ddp(course_run, tmp_path):
    pytest.importorskip("accelerate")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    D.run_command(D.accelerate_command(ACCELERATE_SCRIPT, 2, None, str(tmp_path)), timeout=180, env=env)
    result = D.accelerate_result(tmp_path)
    assert result["world_size"] == 2 and "MULTI_CPU" in result["distributed_type"] or torch.cuda.is_available()
    assert result["losses"] == pytest.approx(course_run["ranks"][0]["ddp"]["lora q,v"]["losses"], abs=1e-6)
    ddp = course_run["tensors"]["ddp/lora q,v"]
    assert max((result["state"][k] - ddp[k]).abs().max().item() for k in ddp) < 1e-6
    assert workers_alive(ACCELERATE_SCRIPT) == []


@pytest.mark.slow
def test_accelerate_cpu_flag_alone_starts_a_single_process(tmp_path):
    """What notebook 15 says of `accelerate launch --cpu --num_processes 2`: without an MPI hostfile it runs one
    process, so the notebook launches with --multi_gpu and the script asks for the CPU itself."""
    pytest.importorskip("accelerate")
    port = str(D.free_port())
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", port,
           "--mixed_precision", "no", "--dynamo_backend", "no", ACCELERATE_SCRIPT, str(tmp_path)]
    D.run_command(cmd, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert D.accelerate_result(tmp_path)["world_size"] == 1


def test_run_command_kills_a_command_that_runs_too_long():
    with pytest.raises(D.LaunchError, match="ran over 1 s: every process was killed"):
        D.run_command([sys.executable, "-c", "import time; time.sleep(30)  # lora-teach-sleeper"], timeout=1)
    assert workers_alive("lora-teach-sleeper") == []


@pytest.mark.slow
@TWO_CORES
def test_a_run_listens_on_the_loopback_interface_only():
    psutil = pytest.importorskip("psutil")
    import threading
    import time

    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(D.LaunchError, D.launch, "hang", 2,
                                                                         timeout=25)))
    thread.start()
    listening, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and len(listening) < 2:
        time.sleep(0.5)
        for pid in workers_alive("lora_teach.distributed_worker hang"):
            try:
                listening += [(pid, c.laddr.ip) for c in psutil.Process(pid).net_connections("inet")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                pass
    thread.join()
    assert len(errors) == 1 and errors[0].match("still running after 25 s")
    assert listening, "no worker was seen listening"
    assert {ip for _, ip in listening} == {"127.0.0.1"}, listening
    assert workers_alive("lora_teach.distributed_worker hang") == []

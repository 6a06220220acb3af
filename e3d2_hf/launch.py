"""`e3d2 launch`: start a stage script as N real processes (gloo ranks on CPU, one per GPU otherwise).

    e3d2 launch --num_processes 2 scripts/ppo.py recipes/tiny.yaml [--field value ...]

`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x, and nothing
in that process can tell that two were asked for. This launcher always starts the N processes
(`torch.distributed.run`, on a free local port), gives each `cores / N` OpenMP threads, and the
stages' Accelerator (`e3d2_hf.trainers.distributed`) joins them into one group: gloo on CPU, NCCL on
GPUs. `accelerate launch --multi_gpu --num_processes N` does the same where accelerate is preferred.
"""

from __future__ import annotations

import argparse
import os
import socket

from e3d2_hf.utils import E3D2Error, available_cpus


def free_port() -> int:
    """A TCP port nothing listens on now (other runs on the machine may hold the default 29500)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_arguments(num_processes: int, script: str, script_args: list[str], port: int) -> list[str]:
    """The `torch.distributed.run` command line for one machine."""
    return ["--nnodes", "1", "--nproc_per_node", str(num_processes), "--master_addr", "127.0.0.1", "--master_port", str(port), script, *script_args]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_processes", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="OpenMP threads per process (default: cores / processes)")
    parser.add_argument("script", help="a stage script, e.g. scripts/ppo.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's arguments (recipe, overrides)")


def run(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise E3D2Error(f"--num_processes must be at least 1, got {args.num_processes}")
    if not os.path.isfile(args.script):
        raise E3D2Error(f"{args.script}: no such script")
    from torch.distributed.run import main as torchrun

    threads = args.threads or max(1, available_cpus() // args.num_processes)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun(launch_arguments(args.num_processes, args.script, list(args.script_args), free_port()))
    except ChildFailedError as exc:
        raise E3D2Error(f"{args.script}: {len(exc.failures)} of {args.num_processes} process(es) failed (their errors are above)") from exc
    return 0


__all__ = ["free_port", "launch_arguments"]

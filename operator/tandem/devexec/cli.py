"""`python -m tandem.devexec`: the local executor's command line.

Not a `tandem` subcommand on purpose: it is a development and test harness that runs arbitrary pod
commands on the developer's machine, and should never look like part of the product's CLI.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from tandem.devexec.nodes import default_nodes


@click.command("executor")
@click.option("--kubeconfig", envvar="KUBECONFIG", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option(
    "--state-dir",
    envvar="TANDEM_DEVEXEC_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".tandem/devexec"),
    show_default=True,
    help="Pod directories, PVC directories and container logs.",
)
@click.option("--gpu-nodes", type=click.IntRange(min=0), default=1, show_default=True, help="Nodes local-gpu-N.")
@click.option("--cpu-nodes", type=click.IntRange(min=0), default=1, show_default=True, help="Nodes local-cpu-N.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--network",
    default="127.77.0.0/16",
    show_default=True,
    help="Loopback network that pod addresses come from.",
)
@click.option(
    "--venv-bin",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(sys.executable).parent,
    show_default="this Python's bin",
    help="Put first on every container's PATH: every image maps to this environment.",
)
@click.option("--pass-env", multiple=True, help="Copy this variable from the executor's environment into pods.")
@click.option("--keep-nodes", is_flag=True, help="Leave the Node objects registered on exit.")
@click.option("--verbose", is_flag=True)
def executor(
    kubeconfig: str,
    state_dir: Path,
    gpu_nodes: int,
    cpu_nodes: int,
    gpus_per_node: int,
    network: str,
    venv_bin: Path,
    pass_env: tuple[str, ...],
    keep_nodes: bool,
    verbose: bool,
) -> None:
    """Run pods bound to local-gpu-N / local-cpu-N nodes as processes on this machine (dev harness)."""
    from kubernetes import config as k8s_config

    from tandem.devexec.executor import Executor, ExecutorConfig
    from tandem.devexec.kubeapi import KubeApi

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s devexec %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    api = KubeApi(k8s_config.new_client_from_config(config_file=kubeconfig))
    config = ExecutorConfig(
        state_dir=state_dir,
        nodes=default_nodes(gpu_nodes, cpu_nodes, gpus_per_node),
        venv_bin=venv_bin.resolve(),
        network=network,
        pass_env=pass_env,
        deregister_on_exit=not keep_nodes,
    )
    runner = Executor(config, api)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("tandem.devexec").info("signal %d: stopping pods and removing nodes", signum)
        runner.stop.set()
        runner.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.run()

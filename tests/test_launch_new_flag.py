"""A flag added to WorkerConfig reaches every launcher with no other edit: ``mvs demo`` and ``mvs local`` take it,
their workers get it, and so do the Kubernetes workers and the scaling bench's worker hosts (deploy.launch)."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from bench.scaling import WorkerFleet
from deploy import demo, k8s_manifests, local_deployment
from deploy.local_deployment import LocalDeployment
from deploy.nats_servers import NatsHubAndLeaves
from deploy.worker_site import worker_config
from edge_worker.service import WorkerConfig
from streaming.config import flag

KnobWorkerConfig = dataclasses.make_dataclass(
    "KnobWorkerConfig",
    [("knob", int, field(default=0, metadata=flag("a setting the workers did not have")))],
    bases=(WorkerConfig,),
)


def _knob(argv: list[str]) -> str | None:
    """The value of ``--knob`` in ``argv`` (None: not there)."""
    return argv[argv.index("--knob") + 1] if "--knob" in argv else None


def test_mvs_demo_passes_a_new_worker_flag_to_its_workers() -> None:
    args = demo.build_parser(KnobWorkerConfig).parse_args(["--knob", "7", "--threads", "2"])
    worker = worker_config(args, "mvs demo", cls=KnobWorkerConfig)
    site = demo.demo_site("nats://127.0.0.1:4222", "demo", worker, "warning")
    command = site.worker_process(site.next_worker_id()).command
    assert _knob(command) == "7" and command[command.index("--threads") + 1] == "2"


def test_mvs_local_passes_a_new_worker_flag_to_its_workers() -> None:
    args = local_deployment.build_parser(KnobWorkerConfig).parse_args(["--region", "knob", "--knob", "7"])
    worker = worker_config(args, "mvs local", cls=KnobWorkerConfig)
    deployment = LocalDeployment(local_deployment.config_from_args(args, worker))
    deployment.nats = NatsHubAndLeaves(["knob"]).start()
    try:
        site = deployment.site(deployment.config.regions[0])
        assert _knob(site.worker_process(site.next_worker_id()).command) == "7"
        assert _knob(site.worker_flags(site.next_worker_id())) == "7"  # the summary's "more worker" command
    finally:
        deployment.nats.stop()


def test_the_manifests_and_the_benches_pass_a_new_worker_flag() -> None:
    template = KnobWorkerConfig(**dataclasses.asdict(k8s_manifests.CLUSTER_WORKER), knob=7)
    for manifest in k8s_manifests.workers("eu", template=template):
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        assert _knob(container["args"]) == "7"
    fleet = WorkerFleet(KnobWorkerConfig(knob=7), count=1)
    assert _knob(fleet.host(0, 1).command) == "7"

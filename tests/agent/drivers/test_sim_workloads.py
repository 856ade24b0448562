"""The workload model driven directly: scheduling, image pulls, crash loops, OOM, usage."""

from __future__ import annotations

from fleetplane.agent.drivers.simmodel.profile import GI, MI
from fleetplane.agent.drivers.simmodel.workloads import (
    CRASH_AFTER_S,
    OOM_AFTER_S,
    PULL_FAIL_S,
    Workload,
    backoff,
    default_image_size,
    image_is_bad,
)
from tests.agent.drivers.conftest import make_site, step

SMALL = {"app:1": 100_000_000}  # 1 s at 100 MB/s


def web(replicas: int = 1, cpu: int = 1000, mem: int = GI, **kw: object) -> Workload:
    return Workload("web", "app:1", replicas, cpu, mem, **kw)  # type: ignore[arg-type]


def test_pods_fit_and_bind_to_nodes() -> None:
    site = make_site(nodes=2, image_sizes=SMALL)
    site.set_workloads([web(replicas=3)])
    pods = site.workloads.pods
    assert sorted(pods) == ["web-0", "web-1", "web-2"]
    assert all(p.node is not None and p.phase == "ContainerCreating" for p in pods.values())
    step(site, 1.0)
    assert all(p.phase == "Running" for p in pods.values())
    assert site.workloads.item_status("web").state == "Applied"


def test_bin_packing_fills_one_node_before_the_next() -> None:
    site = make_site(nodes=3, image_sizes=SMALL)
    site.set_workloads([web(replicas=4, cpu=1000, mem=GI)])
    nodes = [p.node for p in site.workloads.pods.values()]
    assert nodes == ["node-0"] * 4  # best fit: the fullest node that still fits


def test_pending_when_nothing_fits_then_scheduled_when_room_appears() -> None:
    site = make_site(nodes=2, image_sizes=SMALL)
    site.set_workloads([Workload("big", "app:1", 1, 5000, GI), web(replicas=1, cpu=3000)])
    big = site.workloads.pods["big-0"]
    assert big.node is None and big.phase == "Pending"
    assert big.reason == "0/2 nodes are available: 2 Insufficient cpu (requests 5000m CPU, 1Gi memory)"
    assert site.workloads.item_status("big").state == "Failed"
    # memory too: pending names both
    site.set_workloads([Workload("fat", "app:1", 1, 100, 9 * GI)])
    assert "2 Insufficient memory" in (site.workloads.pods["fat-0"].reason or "")
    assert "big-0" not in site.workloads.pods


def test_reservations_lower_what_the_scheduler_may_use() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)
    assert site.reserve(3500, 0) is None
    site.set_workloads([web(cpu=1000)])
    assert site.workloads.pods["web-0"].phase == "Pending"
    assert site.reserve(0, 0) is None  # removing the reservation schedules it
    assert site.workloads.pods["web-0"].node == "node-0"


def test_image_pull_takes_size_over_bandwidth_and_is_cached() -> None:
    site = make_site(nodes=1, image_sizes={"app:1": 500_000_000})  # 5 s
    site.set_workloads([web()])
    step(site, 4.9)
    assert site.workloads.pods["web-0"].phase == "ContainerCreating"
    step(site, 0.1)
    assert site.workloads.pods["web-0"].phase == "Running"
    site.set_workloads([web(replicas=2)])  # same image, same node: no pull
    assert site.workloads.pods["web-1"].phase == "Running"
    assert site.workloads.images["node-0"].cached == {"app:1": 500_000_000}


def test_pulls_on_a_node_run_one_at_a_time() -> None:
    site = make_site(nodes=1, image_sizes={"a:1": 200_000_000, "b:1": 300_000_000})
    site.set_workloads([Workload("a", "a:1", 1, 100, MI), Workload("b", "b:1", 1, 100, MI)])
    step(site, 2.0)
    assert site.workloads.pods["a-0"].phase == "Running"
    assert site.workloads.pods["b-0"].phase == "ContainerCreating"
    step(site, 3.0)
    assert site.workloads.pods["b-0"].phase == "Running"


def test_image_sizes_are_drawn_from_the_name() -> None:
    assert default_image_size("nginx:1.27") == default_image_size("nginx:1.27")
    assert 20 * MI <= default_image_size("x") <= 1600 * MI
    assert image_is_bad("registry:5000/app:bad", frozenset())
    assert not image_is_bad("registry:5000/app", frozenset())
    assert image_is_bad("app:2", frozenset({"app:2"}))


def test_bad_image_crash_loops_with_exponential_back_off() -> None:
    site = make_site(nodes=1, image_sizes={"app:bad": 100_000_000})
    site.set_workloads([Workload("web", "app:bad", 1, 100, MI)])
    pod = site.workloads.pods["web-0"]
    step(site, 1.0)
    assert pod.phase == "Running"
    for n in range(1, 7):
        step(site, CRASH_AFTER_S)
        assert (pod.phase, pod.restarts, pod.last_termination) == ("CrashLoopBackOff", n, "Error")
        step(site, backoff(n) - 0.01)
        assert pod.phase == "CrashLoopBackOff"
        step(site, 0.01)
        assert pod.phase == "Running"
    assert [backoff(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert site.workloads.item_status("web").state in ("Failed", "Applied")


def test_oom_killed_when_usage_exceeds_the_limit() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)
    site.set_workloads(
        [
            Workload("hog", "app:1", 1, 100, 256 * MI, memory_limit=512 * MI, memory_usage=700 * MI),
            Workload("ok", "app:1", 1, 100, 256 * MI, memory_limit=512 * MI, memory_usage=400 * MI),
        ]
    )
    step(site, 1.0 + OOM_AFTER_S)
    hog, ok = site.workloads.pods["hog-0"], site.workloads.pods["ok-0"]
    assert (hog.phase, hog.last_termination, hog.restarts) == ("CrashLoopBackOff", "OOMKilled", 1)
    assert (hog.reason or "").startswith("OOMKilled")
    assert ok.phase == "Running" and ok.restarts == 0
    item = site.workloads.item_status("hog")
    assert item.state == "Failed" and "OOMKilled" in (item.reason or "")


def test_a_missing_image_backs_off_pulling_until_the_workload_changes() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)
    site.set_workloads([Workload("web", "app:missing", 1, 100, MI)])
    pod = site.workloads.pods["web-0"]
    assert pod.phase == "ContainerCreating"
    step(site, PULL_FAIL_S)
    assert pod.phase == "ImagePullBackOff" and "manifest unknown" in (pod.reason or "")
    item = site.workloads.item_status("web")
    assert item.state == "Failed" and "ImagePullBackOff" in (item.reason or "")
    step(site, backoff(1) + PULL_FAIL_S)  # the retry fails again, waits longer
    assert pod.phase == "ImagePullBackOff" and pod.pull_failures == 2 and pod.restarts == 0
    site.set_workloads([Workload("web", "app:1", 1, 100, MI)])  # a tag that exists
    step(site, 1.0)
    assert site.workloads.pods["web-0"].phase == "Running"


def test_removing_a_workload_frees_its_room() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)
    site.set_workloads([web(cpu=3000)])
    site.set_workloads([web(cpu=3000), Workload("other", "app:1", 1, 2000, MI)])
    assert site.workloads.pods["other-0"].phase == "Pending"
    site.set_workloads([Workload("other", "app:1", 1, 2000, MI)])
    assert site.workloads.pods["other-0"].node == "node-0"
    assert "web-0" not in site.workloads.pods


def test_usage_follows_running_pods() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)  # a controller: 10% CPU, 15% memory platform
    idle = site.observation().usage
    assert idle.cpu_millis == 400
    assert idle.memory_bytes == int(0.15 * 8 * GI)
    site.set_workloads([web(replicas=2, cpu=1000, mem=GI, cpu_utilisation=0.5)])
    assert site.observation().usage.cpu_millis == 400  # still pulling
    step(site, 1.0)
    busy = site.observation().usage
    assert busy.cpu_millis == 400 + 2 * 500
    assert busy.memory_bytes == idle.memory_bytes + 2 * GI
    assert busy.disk_bytes == idle.disk_bytes + 100_000_000
    assert busy.cpu_percent == 35.0


def test_usage_noise_is_bounded() -> None:
    site = make_site(nodes=3, noise=0.05)
    for _ in range(50):
        step(site, 10)
        cpu = site.observation().usage.cpu_millis
        base = 400 + 2 * 160
        assert abs(cpu - base) <= 0.05 * 12000 + 3

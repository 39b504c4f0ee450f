"""The pieces of distributed serving that need no second process: the step plan's framing
(sequence number, checksum, token digest), placing a model (the one-line refusals naming the
family), the limits every rank must share, the hosts and each rank's environment, and the
services of a lasting cluster. The ranks themselves are in test_distributed.py."""

from __future__ import annotations

import json
import plistlib
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from engines.distributed.group import (
    LocalFollowers,
    cluster_environment,
    parse_hosts,
    read_hosts,
)
from engines.distributed.plan import PlanChannel, PlanMismatch, StepPlan, TokenDigest
from engines.distributed.shard import place
from engines.distributed.watchdog import StepClock
from engines.llm.distributed import DistributedLLMEngine, DistributedOptions, replicable
from engines.types import ChatLimits, GenerationRequest, SamplingParams
from server.service import ClusterRank, ServiceOptions, plan
from tests.tiny import tiny_config, tiny_model

# -- step plans -----------------------------------------------------------------------------


class Bus:
    """What the group's all_sum carries from rank 0 to a follower, in order; `tamper` rewrites
    the next payload on its way (a corrupted transfer)."""

    def __init__(self) -> None:
        self.frames: deque[Any] = deque()
        self.tamper: Any = None


class FakeGroup:
    def __init__(self, rank: int, size: int = 2) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


class BusChannel(PlanChannel):
    """A PlanChannel whose two broadcasts go through `bus` instead of a collective: the framing
    and its checks are the real ones."""

    def __init__(self, rank: int, bus: Bus, digest: TokenDigest) -> None:
        super().__init__(FakeGroup(rank), digest)
        self.bus = bus

    def _broadcast_header(self, values: list[int] | None) -> list[int]:
        if values is not None:
            self.bus.frames.append(list(values))
            return values
        return list(self.bus.frames.popleft())

    def _broadcast_payload(self, payload: bytes | None, length: int) -> bytes:
        if payload is not None:
            sent = self.bus.tamper(payload) if self.bus.tamper else payload
            self.bus.frames.append(sent)
            return payload
        received = bytes(self.bus.frames.popleft())
        assert len(received) == length
        return received


def channels() -> tuple[BusChannel, BusChannel, Bus]:
    bus = Bus()
    return BusChannel(0, bus, TokenDigest()), BusChannel(1, bus, TokenDigest()), bus


def request(name: str) -> GenerationRequest:
    return GenerationRequest(name, [5, 6, 7], 8, SamplingParams(temperature=1.0, seed=4), n=2)


def test_plans_arrive_in_order_and_empty_ones_carry_no_payload() -> None:
    leader, follower, bus = channels()
    leader.send(StepPlan(config={"max_batch": 4}))
    leader.send(StepPlan())
    assert len(bus.frames) == 3  # header + payload, then a header alone
    leader.send(StepPlan(inserts=[request("a"), request("b")], removals=[3], stop=True))
    assert follower.receive().config == {"max_batch": 4}
    assert follower.receive().empty
    plan = follower.receive()
    assert [r.request_id for r in plan.inserts] == ["a", "b"]
    assert plan.inserts[1].sampling.seed == 4 and plan.inserts[1].n == 2
    assert plan.removals == [3] and plan.stop
    assert leader.sequence == follower.sequence == 3


def test_a_corrupted_payload_is_caught_by_its_checksum() -> None:
    leader, follower, bus = channels()
    bus.tamper = lambda payload: payload[:-1] + bytes([payload[-1] ^ 1])
    leader.send(StepPlan(inserts=[request("a")]))
    with pytest.raises(PlanMismatch, match="checksum"):
        follower.receive()


def test_a_plan_out_of_sequence_is_refused() -> None:
    leader, follower, bus = channels()
    leader.send(StepPlan())
    leader.send(StepPlan())
    bus.frames.popleft()  # plan 0 lost
    with pytest.raises(PlanMismatch, match=r"plan 1 \(magic .*\) arrived where plan 0 was due"):
        follower.receive()


def test_ranks_that_emitted_different_tokens_stop() -> None:
    leader, follower, _ = channels()
    leader.digest.add(0, [11, 12])
    follower.digest.add(0, [11, 13])  # the follower sampled another second token
    leader.send(StepPlan())
    with pytest.raises(PlanMismatch, match="other tokens"):
        follower.receive()


def test_ranks_that_agree_go_on() -> None:
    leader, follower, _ = channels()
    for digest in (leader.digest, follower.digest):
        digest.add(0, [11, 12])
        digest.add(1, [40])
    leader.send(StepPlan())
    assert follower.receive().empty


# -- placing a model ------------------------------------------------------------------------


def gemma() -> Any:
    from mlx_lm.models.gemma import Model, ModelArgs

    config = {**tiny_config("llama"), "model_type": "gemma", "head_dim": 16}
    return Model(ModelArgs.from_dict(config))


def test_a_family_without_either_form_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="model family 'gemma' cannot be sharded tensor parallel"):
        place(gemma(), FakeGroup(0), pipeline=False)
    with pytest.raises(ValueError, match="model family 'gemma' has no pipeline support"):
        place(gemma(), FakeGroup(0), pipeline=True)


def test_a_tensor_parallel_only_family_asked_for_pipeline_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'llama' has no pipeline support.*without --pipeline"):
        place(tiny_model("llama"), FakeGroup(0), pipeline=True)


def test_head_counts_must_divide_by_the_ranks() -> None:
    with pytest.raises(ValueError, match="'llama': 2 attention heads do not divide over 4"):
        place(tiny_model("llama"), FakeGroup(0, size=4), pipeline=False)  # 4 heads, 2 kv heads


def test_more_stages_than_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="2 layers cannot be split over 3 pipeline stages"):
        place(tiny_model("qwen2"), FakeGroup(0, size=3), pipeline=True)


def test_a_group_of_one_leaves_the_model_whole() -> None:
    model = tiny_model("llama")
    place(model, FakeGroup(0, size=1), pipeline=False)
    assert model.model.layers[0].self_attn.n_heads == 4


# -- what every rank must share -------------------------------------------------------------


def test_limits_that_would_let_ranks_differ_are_off_or_refused() -> None:
    limits = replicable(ChatLimits(prefix_disk_dir="/tmp/x", prefix_disk_bytes=1 << 20))
    assert limits.prefix_disk_dir is None and limits.prefix_disk_bytes == 0
    assert limits.warmup_rows == 0
    with pytest.raises(ValueError, match="kv_bits is not supported with --distributed"):
        replicable(ChatLimits(kv_bits=4))
    with pytest.raises(ValueError, match="speculative is not supported with --distributed"):
        replicable(ChatLimits(speculative="prompt_lookup"))


# -- hosts and each rank's environment ------------------------------------------------------


def hostfile(tmp_path: Path, hosts: Any) -> str:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(hosts))
    return str(path)


def test_hosts_as_a_list_or_either_hostfile_form(tmp_path: Path) -> None:
    assert parse_hosts("10.0.0.1, 10.0.0.2") == ["10.0.0.1", "10.0.0.2"]
    listed = [{"ssh": "m1", "ips": ["10.0.0.1"]}, {"ssh": "m2", "ips": ["10.0.0.2"]}]
    assert parse_hosts(hostfile(tmp_path, listed)) == ["10.0.0.1", "10.0.0.2"]
    wrapped = {"backend": "jaccl", "envs": [], "hosts": listed}  # mlx.distributed_config's form
    assert parse_hosts(hostfile(tmp_path, wrapped)) == ["10.0.0.1", "10.0.0.2"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json"):
        parse_hosts(str(tmp_path / "bad.json"))


def test_each_rank_gets_what_mlx_launch_would_give_it(tmp_path: Path) -> None:
    hosts = read_hosts("10.0.0.1,10.0.0.2")
    variables, files = cluster_environment("ring", hosts, 1)
    assert variables == {"MLX_RANK": "1"}
    assert json.loads(files["MLX_HOSTFILE"]) == [["10.0.0.1:32323"], ["10.0.0.2:32324"]]
    two_links = [  # a Thunderbolt ring: an address per cable
        {"ssh": "m1", "ips": ["10.0.1.1", "10.0.2.1"]},
        {"ssh": "m2", "ips": ["10.0.1.2", "10.0.2.2"]},
    ]
    _, files = cluster_environment("ring", read_hosts(hostfile(tmp_path, two_links)), 0)
    assert json.loads(files["MLX_HOSTFILE"]) == [
        ["10.0.1.1:32323", "10.0.2.1:32324"],
        ["10.0.1.2:32325", "10.0.2.2:32326"],
    ]
    variables, files = cluster_environment("nccl", hosts, 0)
    assert variables["NCCL_HOST_IP"] == "10.0.0.1" and variables["MLX_WORLD_SIZE"] == "2"
    rdma = [
        {"ssh": "m1", "ips": ["10.0.0.1"], "rdma": [None, "rdma_en3"]},
        {"ssh": "m2", "ips": ["10.0.0.2"], "rdma": ["rdma_en3", None]},
    ]
    variables, files = cluster_environment("jaccl", read_hosts(hostfile(tmp_path, rdma)), 1)
    assert variables == {"MLX_RANK": "1", "MLX_JACCL_COORDINATOR": "10.0.0.1:32323"}
    assert json.loads(files["MLX_IBV_DEVICES"]) == [[None, "rdma_en3"], ["rdma_en3", None]]


@pytest.mark.parametrize(
    ("backend", "hosts", "rank", "message"),
    [
        ("ring", "10.0.0.1,10.0.0.2", 2, "--rank 2 is not in 0..1"),
        ("ring", "mac1,mac2", 0, "IP address, not a name"),
        ("jaccl", "10.0.0.1,10.0.0.2", 0, "RDMA device to each host"),
        ("mpi", "10.0.0.1,10.0.0.2", 0, "started by mpirun"),
    ],
)
def test_cluster_environments_that_cannot_work_are_refused(
    backend: str, hosts: str, rank: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_environment(backend, read_hosts(hosts), rank)


# -- a lasting cluster: one service per host ------------------------------------------------


def cluster_options(tmp_path: Path, rank: int) -> ServiceOptions:
    return ServiceOptions(
        model="big-model",
        mlxd_home=tmp_path / "home",
        home=tmp_path / "user",
        uid=501,
        cluster=ClusterRank("ring", "10.0.0.1,10.0.0.2", rank, pipeline=True),
    )


def test_rank_zero_serves_and_the_others_follow_under_launchd(tmp_path: Path) -> None:
    for rank, command in ((0, "serve"), (1, "follower")):
        options = cluster_options(tmp_path, rank)
        install = plan("install", options, platform="darwin")
        hostfile = options.mlxd_home / "cluster" / "mlx_hostfile.json"
        assert json.loads(install.writes[hostfile]) == [["10.0.0.1:32323"], ["10.0.0.2:32324"]]
        [plist] = [text for path, text in install.writes.items() if path.suffix == ".plist"]
        agent = plistlib.loads(plist.encode())
        arguments = agent["ProgramArguments"]
        assert arguments[:4] == [sys.executable, "-m", "server", command]
        assert arguments[arguments.index("--distributed") + 1] == "ring"
        assert "--pipeline" in arguments and ("--hosts" in arguments) == (rank == 0)
        environment = agent["EnvironmentVariables"]
        assert environment["MLX_RANK"] == str(rank)
        assert environment["MLX_HOSTFILE"] == str(hostfile)
        assert agent["KeepAlive"] == {"SuccessfulExit": False}  # a lost group exits 3: restarted


def test_a_follower_under_systemd(tmp_path: Path) -> None:
    install = plan("install", cluster_options(tmp_path, 1), platform="linux")
    [unit] = [text for path, text in install.writes.items() if path.suffix == ".service"]
    assert f"ExecStart={sys.executable} -m server follower --model big-model" in unit
    assert 'Environment="MLX_RANK=1"' in unit and "Restart=on-failure" in unit
    assert "@" not in unit  # every placeholder filled


def test_a_follower_service_needs_the_model(tmp_path: Path) -> None:
    options = ServiceOptions(
        mlxd_home=tmp_path, home=tmp_path, cluster=ClusterRank("ring", "10.0.0.1,10.0.0.2", 1)
    )
    with pytest.raises(ValueError, match="needs --model"):
        plan("install", options, platform="linux")


def test_rank_zero_notices_a_collective_that_handed_back_garbage() -> None:
    class Garbage(BusChannel):
        def _broadcast_header(self, values: list[int] | None) -> list[int]:
            super()._broadcast_header(values)
            return [0] * 5  # what a ring that lost a peer handed back in our runs

    leader = Garbage(0, Bus(), TokenDigest())
    with pytest.raises(PlanMismatch, match="plan 0 came back altered: a peer was lost"):
        leader.send(StepPlan())


def test_rank_zero_sees_which_local_follower_died_and_how() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    followers = LocalFollowers([sleeper, quick])
    quick.wait()
    assert followers.first_exited() == f"follower rank 2 (pid {quick.pid}) exited with 3"
    sleeper.kill()
    sleeper.wait()
    assert followers.first_exited() == f"follower rank 1 (pid {sleeper.pid}) killed by signal 9"


def test_a_vision_language_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from engines.kinds import build_chat
    from server.settings import Settings

    (tmp_path / "config.json").write_text(json.dumps({"vision_config": {}}))
    chosen = {"model": str(tmp_path), "distributed": "ring", "home": tmp_path}
    settings = Settings.model_validate(chosen).model_dump()
    with pytest.raises(ValueError, match="vlm is a vision-language model: not served with"):
        build_chat("vlm", tmp_path, {"source": str(tmp_path)}, settings)


def test_pipeline_over_nccl_is_refused() -> None:
    options = DistributedOptions(backend="nccl", hosts=("127.0.0.1",) * 2, pipeline=True)
    with pytest.raises(ValueError, match="NCCL has no send/recv"):
        DistributedLLMEngine("m", Path("/nowhere"), options)


def test_serve_started_by_mlx_launch_as_a_later_rank_runs_a_follower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    import server.__main__ as cli

    ran: list[str] = []

    def recorder(name: str) -> Any:
        def run(settings: object) -> int:
            ran.append(name)
            return 0

        return run

    monkeypatch.setattr(cli, "_follower", recorder("follower"))
    monkeypatch.setattr(cli, "_serve", recorder("serve"))
    serve = argparse.Namespace(command="serve")
    for rank in ("1", "0"):
        monkeypatch.setenv("MLX_RANK", rank)  # what mlx.launch sets
        assert cli._dispatch(serve, object(), None) == 0  # type: ignore[arg-type]
    assert ran == ["follower", "serve"]


# -- the step watchdog's limits -------------------------------------------------------------


def test_a_first_model_step_gets_extra_time_then_the_pace_sets_the_limit() -> None:
    clock = StepClock(grace_s=2.0, heartbeat_s=0.25, leader=True)
    clock.start_step()
    assert clock.step_started is not None
    started = clock.step_started
    assert clock.overdue(started + 30.0) is None  # no pace known: a long first prefill is fine
    assert "no progress for 62.0 s" in str(clock.overdue(started + 63.0))
    clock.step_started = started - 0.5  # the first model step took 0.5 s
    clock.end_step(ran_model=True)
    assert clock.paced and 0.5 <= clock.slowest_step_s < 1.0
    clock.start_step()
    assert clock.step_started is not None
    limit = clock.step_limit_s()  # 2 x 0.5 + 2
    assert 3.0 <= limit < 4.0
    assert clock.overdue(clock.step_started + limit - 0.1) is None
    assert "a peer hung" in str(clock.overdue(clock.step_started + limit + 0.1))


def test_an_idle_plan_unanswered_for_a_second_is_a_lost_peer() -> None:
    clock = StepClock(grace_s=10.0, heartbeat_s=0.25, leader=True)
    clock.start_step()
    clock.start_beat()
    assert clock.beat_started is not None
    assert clock.overdue(clock.beat_started + 0.9) is None
    assert "an idle plan got no answer for 1.0 s" in str(clock.overdue(clock.beat_started + 1.1))
    clock.beat_started -= 0.5  # a slow machine: that plan took 0.5 s, the limit grows to 2 s
    clock.end_beat()
    assert clock.beat_limit_s() >= 2.0


def test_a_follower_also_waits_for_the_next_plan() -> None:
    leader = StepClock(grace_s=2.0, heartbeat_s=0.25, leader=True)
    follower = StepClock(grace_s=2.0, heartbeat_s=0.25, leader=False)
    assert follower.step_limit_s() == leader.step_limit_s() + 0.25

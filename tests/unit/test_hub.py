"""`mlxd pull` against the hub stand-in (tests/hub_fixture.py): only the needed files, resume
across runs, hash checks, complete snapshots only, and one-sentence errors for bad input."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from engines.errors import ModelNotFound
from engines.weights.hub import HubError, RepoNotFound, pull
from engines.weights.hub_cache import HubConfig, complete_snapshot, repo_folder
from engines.weights.hub_files import RepoRef, needed_files
from engines.weights.store import ModelStore
from tests.hub_fixture import FakeHub, FakeRepo, RunningHub
from tests.tiny import save_model_dir, tiny_model

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tiny_model(), "llama", tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def hub(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The stand-in with `org/tiny` (a tiny mlx-lm model plus a pickle that must not be fetched)
    and a gated copy; huggingface_hub allowed online; 16 KiB read chunks (its 10 MiB default
    would buffer the whole tiny file, so a cut connection would leave nothing to resume)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    repo = FakeRepo.from_dir(tiny_dir, **{"pytorch_model.bin": b"pickle" * 1000})
    fake = FakeHub({"org/tiny": repo, "org/gated": FakeRepo(dict(repo.files), gated=True)})
    running = RunningHub(fake)
    yield fake
    running.close()


@pytest.fixture
def config(hub: FakeHub, tmp_path: Path) -> HubConfig:
    return HubConfig(hub.endpoint, tmp_path / "hf" / "hub", token=None, offline=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_fetches_only_the_files_a_model_needs(
    hub: FakeHub, config: HubConfig, tiny_dir: Path
) -> None:
    snapshot = pull(RepoRef("org/tiny"), config)
    names = sorted(p.name for p in snapshot.iterdir())
    assert names == ["config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (snapshot / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert (snapshot / WEIGHTS).is_symlink()  # the HF cache layout: snapshot → blobs/<etag>
    assert (repo_folder(config.cache_dir, "org/tiny") / "refs" / "main").read_text() == (
        snapshot.name
    )
    assert complete_snapshot(config.cache_dir, "org/tiny") == snapshot


def test_a_second_pull_fetches_no_weights(hub: FakeHub, config: HubConfig) -> None:
    pull(RepoRef("org/tiny"), config)
    served = hub.served[WEIGHTS]
    pull(RepoRef("org/tiny"), config)
    assert hub.served[WEIGHTS] == served


def test_a_dropped_connection_resumes_on_the_next_pull(
    hub: FakeHub, config: HubConfig, tiny_dir: Path
) -> None:
    size = (tiny_dir / WEIGHTS).stat().st_size
    hub.drop_after[WEIGHTS] = size // 2
    with pytest.raises(HubError, match="run the pull again to resume"):
        pull(RepoRef("org/tiny"), config)
    # Interrupted: config.json is there, the weights are not: this snapshot must not be served.
    snapshot = next((repo_folder(config.cache_dir, "org/tiny") / "snapshots").iterdir())
    assert (snapshot / "config.json").is_file() and not (snapshot / WEIGHTS).exists()
    assert complete_snapshot(config.cache_dir, "org/tiny") is None
    partial = list((repo_folder(config.cache_dir, "org/tiny") / "blobs").glob("*.incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < size
    kept = partial[0].stat().st_size

    hub.drop_after.clear()
    first_run = hub.served[WEIGHTS]
    pull(RepoRef("org/tiny"), config)
    second_run = hub.served[WEIGHTS] - first_run
    assert second_run == size - kept  # resumed: only the bytes the partial file lacked
    assert _sha256(snapshot / WEIGHTS) == _sha256(tiny_dir / WEIGHTS)
    assert complete_snapshot(config.cache_dir, "org/tiny") == snapshot


def test_a_corrupt_download_is_fetched_again(
    hub: FakeHub, config: HubConfig, tiny_dir: Path
) -> None:
    hub.corrupt_once.add(WEIGHTS)
    snapshot = pull(RepoRef("org/tiny"), config)
    assert _sha256(snapshot / WEIGHTS) == _sha256(tiny_dir / WEIGHTS)
    assert hub.served[WEIGHTS] == 2 * (tiny_dir / WEIGHTS).stat().st_size


def test_a_corrupt_blob_in_the_cache_is_fetched_again(
    hub: FakeHub, config: HubConfig, tiny_dir: Path
) -> None:
    snapshot = pull(RepoRef("org/tiny"), config)
    blob = (snapshot / WEIGHTS).resolve()
    blob.write_bytes(b"\0" * blob.stat().st_size)
    pull(RepoRef("org/tiny"), config)
    assert _sha256(snapshot / WEIGHTS) == _sha256(tiny_dir / WEIGHTS)


def test_a_missing_repo_is_named(config: HubConfig) -> None:
    with pytest.raises(RepoNotFound, match=r"no model repo 'org/nope'.*set HF_TOKEN"):
        pull(RepoRef("org/nope"), config)


def test_a_missing_revision_is_named(config: HubConfig) -> None:
    with pytest.raises(RepoNotFound, match="no revision 'v9'"):
        pull(RepoRef("org/tiny", revision="v9"), config)


def test_a_gated_repo_says_to_set_hf_token(config: HubConfig) -> None:
    with pytest.raises(HubError, match=r"gated.*HF_TOKEN"):
        pull(RepoRef("org/gated"), config)


def test_a_gated_repo_is_pulled_with_a_token(config: HubConfig) -> None:
    with_token = HubConfig(config.endpoint, config.cache_dir, token="hf_test", offline=False)
    assert (pull(RepoRef("org/gated"), with_token) / WEIGHTS).is_file()


def test_an_unreachable_hub_says_so_at_once(tmp_path: Path, hub: FakeHub) -> None:
    down = HubConfig("http://127.0.0.1:9", tmp_path, token=None, offline=False)
    started = time.monotonic()
    with pytest.raises(HubError, match=r"cannot reach http://127\.0\.0\.1:9"):
        pull(RepoRef("org/tiny"), down)
    assert time.monotonic() - started < 5


def test_offline_with_nothing_cached_says_so_at_once(config: HubConfig, hub: FakeHub) -> None:
    offline = HubConfig(config.endpoint, config.cache_dir, token=None, offline=True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        pull(RepoRef("org/tiny"), offline)
    assert hub.requests == []


def test_offline_with_the_model_cached_makes_no_request(config: HubConfig, hub: FakeHub) -> None:
    snapshot = pull(RepoRef("org/tiny"), config)
    hub.requests.clear()
    offline = HubConfig(config.endpoint, config.cache_dir, token=None, offline=True)
    assert pull(RepoRef("org/tiny"), offline) == snapshot
    assert hub.requests == []


def test_a_full_disk_is_refused_with_the_numbers(
    config: HubConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from engines.weights import hub as hub_module

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        hub_module.shutil, "disk_usage", lambda _: usage._replace(free=1000)
    )  # fmt: skip
    with pytest.raises(HubError, match=r"needs \d+ MiB more .* has 0 MiB free"):
        pull(RepoRef("org/tiny"), config)


def test_the_store_resolves_a_complete_snapshot_only(
    config: HubConfig, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(config.cache_dir))
    store = ModelStore(tmp_path / "mlxd")
    hub.drop_after[WEIGHTS] = 1000
    with pytest.raises(HubError):
        pull(RepoRef("org/tiny"), config)
    with pytest.raises(ModelNotFound, match="mlxd pull"):
        store.resolve("org/tiny")
    hub.drop_after.clear()
    snapshot = pull(RepoRef("org/tiny"), config)
    assert store.resolve("org/tiny") == ("org/tiny", snapshot)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", RepoRef("org/name")),
        ("org/name@v1.0", RepoRef("org/name", "v1.0")),
        ("org/name-GGUF:Q4_K_M", RepoRef("org/name-GGUF", quant="Q4_K_M")),
        ("org/name@abc:Q8_0", RepoRef("org/name", "abc", "Q8_0")),
        ("./models/x", None),
        ("smollm2-135m-instruct", None),
        ("a/b/c", None),
    ],
)
def test_repo_references(text: str, expected: RepoRef | None) -> None:
    assert RepoRef.parse(text) == expected


def test_needed_files_skip_pickles_other_quants_and_folders() -> None:
    listing = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "consolidated.safetensors",
        "pytorch_model.bin",
        "original/params.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
    ]
    assert needed_files(listing, None) == [
        "chat_template.jinja",
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    ggufs = ["README.md", "x-Q4_K_M.gguf", "x-Q8_0.gguf", "x-f16.gguf"]
    assert needed_files(ggufs, "Q4_K_M") == ["x-Q4_K_M.gguf"]
    with pytest.raises(ValueError, match=r"REPO:F16 \(offered: F16, Q4_K_M, Q8_0\)"):
        needed_files(ggufs, None)
    with pytest.raises(ValueError, match="offers: F16, Q4_K_M, Q8_0"):
        needed_files(ggufs, "Q5_K_S")
    with pytest.raises(ValueError, match=r"found: README.md, pytorch_model.bin"):
        needed_files(["README.md", "pytorch_model.bin"], None)


def test_an_embedders_pooling_settings_come_along() -> None:
    """Without `1_Pooling/config.json` a mean-pooled MiniLM would be served CLS-pooled."""
    listing = [
        "config.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
        "1_Pooling/config.json",
        "2_Normalize/.gitkeep",
        "onnx/model.onnx",
        "onnx/config.json",
    ]
    assert needed_files(listing, None) == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
    ]

"""Gateway configuration from a plan and from --backend/--route pairs (unit tests, no processes)."""

from __future__ import annotations

import pytest
from gwhelpers import make_plan, planned_service

from gpumix.errors import GpumixError
from gpumix.gateway.config import (
    CHAT,
    EMBEDDINGS,
    MODERATIONS,
    PROXIED_ENDPOINTS,
    TRANSCRIPTIONS,
    build_config,
    load_api_keys,
)


def test_plan_endpoints_come_from_kind_when_empty() -> None:
    plan = make_plan(
        planned_service("chat", "llama-3.1-8b", fallback="small", gbp_per_million_tokens=0.5),
        planned_service("small", "gemma-3-270m", model_path="/m/gemma-3-270m-it-Q4_K_M.gguf"),
        planned_service("guard", "llama-guard-3-1b"),
        planned_service("embed", "bge-small", kind="embedding"),
        planned_service("stt", "whisper-small", kind="audio", endpoints=["/v1/audio/transcriptions"]),
    )
    cfg = build_config(plan, ["chat=http://127.0.0.1:8001/", "chat=http://127.0.0.1:8002", "embed=http://h:3000"])
    chat = cfg.service("chat")
    assert chat.urls == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")  # replicas, trailing slash dropped
    assert chat.endpoints == (CHAT, "/v1/completions")
    assert chat.aliases == ("llama-3.1-8b",) and chat.fallback == "small" and chat.gbp_per_million_tokens == 0.5
    assert cfg.service("small").aliases == ("gemma-3-270m", "gemma-3-270m-it-Q4_K_M")
    assert MODERATIONS in cfg.service("guard").endpoints
    assert cfg.service("embed").endpoints == (EMBEDDINGS,)
    assert cfg.service("stt").endpoints == (TRANSCRIPTIONS,) and cfg.service("stt").urls == ()


def test_backends_without_plan_take_kind_from_name() -> None:
    cfg = build_config(None, ["chat=http://127.0.0.1:1", "embeddings=http://127.0.0.1:2", "big=http://127.0.0.1:3"],
                       ["/v1/embeddings=embeddings"])  # fmt: skip
    assert cfg.service("chat").endpoints == (CHAT, "/v1/completions")
    assert cfg.service("embeddings").endpoints == (EMBEDDINGS,)
    assert cfg.service("big").endpoints == PROXIED_ENDPOINTS
    assert cfg.routes == {EMBEDDINGS: "embeddings"}


@pytest.mark.parametrize(
    ("backends", "routes", "fragment"),
    [
        ([], [], "needs a plan or at least one --backend"),
        (["chat"], [], "not KEY=VALUE"),
        (["chat=ftp://x"], [], r"not an http\(s\) URL"),
        (["chat=http://127.0.0.1:1"], ["/v1/nope=chat"], "unknown endpoint"),
        (["chat=http://127.0.0.1:1"], ["/v1/embeddings=other"], "no service or backend named other"),
    ],
)
def test_bad_flags_raise_gpumix_error(backends: list[str], routes: list[str], fragment: str) -> None:
    with pytest.raises(GpumixError, match=fragment):
        build_config(None, backends, routes)


def test_plan_rejects_unknown_backend_and_bad_fallback() -> None:
    with pytest.raises(GpumixError, match="not services in the plan"):
        build_config(make_plan(planned_service("chat", "m")), ["chta=http://127.0.0.1:1"])
    with pytest.raises(GpumixError, match="fallback 'gone'"):
        build_config(make_plan(planned_service("chat", "m", fallback="gone")), [])


def test_api_keys_from_file_and_env(tmp_path, monkeypatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-one\n\nsk-two\n")
    monkeypatch.setenv("MY_KEYS", "sk-three, sk-one")
    assert load_api_keys(keys, "MY_KEYS") == {"sk-one", "sk-two", "sk-three"}
    monkeypatch.delenv("MY_KEYS")
    assert load_api_keys(None, "MY_KEYS") == frozenset()
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(GpumixError, match="holds no keys"):
        load_api_keys(tmp_path / "empty", "MY_KEYS")
    with pytest.raises(GpumixError, match="cannot read API key file"):
        load_api_keys(tmp_path / "missing", "MY_KEYS")


def test_each_backend_is_health_checked_at_its_engines_own_path() -> None:
    """sd-server has no /health (engines.md §6): the gateway probes /v1/models for image services."""
    from gpumix.gateway.server import Gateway

    plan = make_plan(
        planned_service("chat", "llama-3.1-8b"),
        image := planned_service("images", "sdxl-base", kind="image").model_copy(update={"engine": "image"}),
    )
    assert image.engine == "image"
    cfg = build_config(plan, ["chat=http://127.0.0.1:8001", "images=http://127.0.0.1:8002"])
    gateway = Gateway(cfg)
    paths = {b.service: b.health.path for b in gateway.pool.all()}
    assert paths == {"chat": "/health", "images": "/v1/models"}


def test_replica_shares_weight_the_backends_unless_least_outstanding_is_asked() -> None:
    chat = planned_service("chat", "llama-3-8b", replica_shares=[0.875, 0.125], replica_concurrency=[14, 2],
                           replica_kv_cache_tokens=[114688, 16384])  # fmt: skip
    urls = ["chat=http://127.0.0.1:1", "chat=http://127.0.0.1:2"]
    assert build_config(make_plan(chat), urls).service("chat").weights == (0.875, 0.125)
    assert build_config(make_plan(chat), urls, balance="least-outstanding").service("chat").weights == ()
    # One host's gateway of a plan whose replicas span hosts sees only some of them: equal weights then.
    assert build_config(make_plan(chat), urls[:1]).service("chat").weights == ()
    with pytest.raises(GpumixError, match="--balance"):
        build_config(make_plan(chat), urls, balance="random")


def test_a_backends_files_weights_replace_the_plans_shares(tmp_path) -> None:
    """`up --ray`'s backends file lists the replicas that serve now (a stand-in may replace one) with their
    streams: those weights win over the plan's shares, unless the gateway balances by least outstanding."""
    import json

    chat = planned_service("chat", "llama-3-8b", replica_shares=[0.875, 0.125], replica_concurrency=[14, 2],
                           replica_kv_cache_tokens=[114688, 16384])  # fmt: skip
    path = tmp_path / "backends.json"
    urls = ["http://10.0.0.2:8001", "http://10.0.0.4:8005"]
    path.write_text(json.dumps({"services": {"chat": urls}, "weights": {"chat": [14, 4]}, "dead": []}))
    config = build_config(make_plan(chat), [], backends_file=path)
    assert config.service("chat").urls == tuple(urls) and config.service("chat").weights == (14.0, 4.0)
    assert build_config(make_plan(chat), [], backends_file=path, balance="least-outstanding").service("chat").weights == ()
    path.write_text(json.dumps({"services": {"chat": urls}}))  # no weights: the plan's shares, as for --backend
    assert build_config(make_plan(chat), [], backends_file=path).service("chat").weights == (0.875, 0.125)

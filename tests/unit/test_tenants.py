"""Tenants file loading, validation errors, lookups, labels and the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.api.contracts import Contract
from pipeline.tenants import (
    BUILTIN_LABELS,
    FeedbackMode,
    OutcomeLabel,
    TenantRegistry,
    TenantsConfigError,
    hash_api_key,
    load_tenants,
    main,
    parse_tenants,
)

REPO = Path(__file__).resolve().parents[2]
DEV_FILE = REPO / "deploy" / "tenants.dev.yaml"
TASK = "550e8400-e29b-41d4-a716-446655440000"


def _sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _tenant(tenant_id: str = "acme", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": tenant_id,
        "api_keys": [_sha(f"key-{tenant_id}")],
        "domains": {f"{tenant_id}-domain": {"threshold": 5}},
    }
    base.update(overrides)
    return base


def _config_error(data: Any) -> str:
    with pytest.raises(TenantsConfigError) as info:
        parse_tenants(data, source="t.yaml")
    return str(info.value)


@pytest.fixture(scope="module")
def dev() -> TenantRegistry:
    return load_tenants(DEV_FILE)


# --- the dev file --------------------------------------------------------------------------------


def test_dev_file_tenants(dev: TenantRegistry) -> None:
    assert [t.id for t in dev.tenants] == ["dev", "other"]
    assert len(dev) == 2


def test_dev_keys_authenticate(dev: TenantRegistry) -> None:
    for key, tenant_id in (
        ("fs_dev_key_123", "dev"),
        ("kaizen_abc123", "dev"),
        ("fs_other_key_456", "other"),
    ):
        tenant = dev.authenticate(key)
        assert tenant is not None
        assert tenant.id == tenant_id


@pytest.mark.parametrize(
    "key", ["", "fs_dev_key_124", "FS_DEV_KEY_123", " fs_dev_key_123", _sha("fs_dev_key_123")]
)
def test_wrong_keys_do_not_authenticate(dev: TenantRegistry, key: str) -> None:
    assert dev.authenticate(key) is None


def test_dev_file_stores_no_plain_key() -> None:
    text = DEV_FILE.read_text()
    for key in ("fs_dev_key_123", "kaizen_abc123", "fs_other_key_456"):
        assert key not in text
        assert _sha(key) in text


def test_dev_tenant_settings(dev: TenantRegistry) -> None:
    tenant = dev.tenant("dev")
    assert tenant is not None
    assert (tenant.tier, tenant.rate_limit_rps, tenant.feedback_mode) == (
        "dev",
        200,
        FeedbackMode.TENANT_TUNING,
    )
    assert {d: c.threshold for d, c in tenant.domains.items()} == {
        "dating": 1000,
        "support": 50,
        "llm": 500,
        "search": 200,
    }
    assert tenant.tasks[TASK].threshold == 100
    assert tenant.tasks[TASK].input_fields is None
    assert tenant.resolve_label("super_like") == OutcomeLabel("super_like", 2.5, True)


def test_dev_default_domains(dev: TenantRegistry) -> None:
    tenant = dev.tenant("dev")
    assert tenant is not None
    assert tenant.default_domain(Contract.CORRECTION) == "support"
    assert tenant.default_domain(Contract.INFERENCE_FEEDBACK) == "llm"
    assert tenant.default_domain("search_event") == "search"
    assert tenant.default_domain(Contract.RANKING_OUTCOME) is None
    assert tenant.default_domain(Contract.SCORED_OUTPUT) is None
    assert tenant.default_domain("nonsense") is None


def test_other_tenant(dev: TenantRegistry) -> None:
    other = dev.tenant("other")
    assert other is not None
    assert other.feedback_mode is FeedbackMode.OFF
    assert other.owns_domain("jobs")
    assert not other.owns_domain("dating")
    assert other.threshold_for("jobs") == 10
    assert other.default_domain(Contract.CORRECTION) is None
    assert other.resolve_label("super_like") is None


def test_modes(dev: TenantRegistry) -> None:
    assert dev.mode_for("dev") is FeedbackMode.TENANT_TUNING
    assert dev.mode_for("other") is FeedbackMode.OFF
    assert dev.mode_for("ghost") is None
    assert dev.tenant("ghost") is None


def test_ownership_and_thresholds(dev: TenantRegistry) -> None:
    tenant = dev.tenant("dev")
    assert tenant is not None
    assert tenant.owns_domain("dating")
    assert tenant.owns_domain(TASK)
    assert tenant.owns_domain(TASK.upper())
    assert not tenant.owns_domain("jobs")
    assert tenant.threshold_for("support") == 50
    assert tenant.threshold_for(TASK.upper()) == 100
    with pytest.raises(KeyError, match="does not own domain 'jobs'"):
        tenant.threshold_for("jobs")


def test_registry_thresholds_span_tenants(dev: TenantRegistry) -> None:
    assert dev.threshold_for("dating") == 1000
    assert dev.threshold_for("jobs") == 10
    assert dev.threshold_for(TASK) == 100
    assert dev.threshold_for("6ba7b810-9dad-11d1-80b4-00c04fd430c8") is None
    assert dev.threshold_for("unknown") is None
    assert dev.owner_of("jobs") == "other"
    assert dev.owner_of(TASK.upper()) == "dev"
    assert dev.owner_of("Jobs") is None  # domains are exact names
    assert dev.owner_of("unknown") is None
    tenant = dev.tenant_of("jobs")
    assert tenant is not None and tenant.id == "other"


# --- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "grade", "positive"),
    [("converted", 3.0, True), ("accepted", 2.0, True), ("expired", 1.0, False), ("rejected", 0.0, False)],
)
def test_builtin_labels(dev: TenantRegistry, label: str, grade: float, positive: bool) -> None:
    for tenant in dev.tenants:
        resolved = tenant.resolve_label(label)
        assert resolved == OutcomeLabel(label, grade, positive, builtin=True)
    assert set(BUILTIN_LABELS) == {"converted", "accepted", "expired", "rejected"}


def test_unknown_label(dev: TenantRegistry) -> None:
    tenant = dev.tenant("dev")
    assert tenant is not None
    assert tenant.resolve_label("Accepted") is None
    assert tenant.resolve_label("interview_passed") is None


def test_tenant_label_may_not_redefine_builtin() -> None:
    message = _config_error({"tenants": [_tenant(labels={"accepted": {"grade": 1, "positive": False}})]})
    assert message == "t.yaml: tenants.0.labels: may not redefine built-in label(s) accepted"


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (
            {"grade": 3.5, "positive": True},
            "tenants.0.labels.x.grade: Input should be less than or equal to 3",
        ),
        (
            {"grade": -1, "positive": True},
            "tenants.0.labels.x.grade: Input should be greater than or equal to 0",
        ),
        ({"grade": 1}, "tenants.0.labels.x.positive: Field required"),
        ({"grade": 1, "positive": "yes"}, "tenants.0.labels.x.positive: Input should be a valid boolean"),
    ],
)
def test_bad_labels(label: dict[str, Any], message: str) -> None:
    assert _config_error({"tenants": [_tenant(labels={"x": label})]}) == f"t.yaml: {message}"


# --- validation errors ---------------------------------------------------------------------------


def test_plain_key_is_rejected_with_hint_and_not_echoed() -> None:
    message = _config_error({"tenants": [_tenant(api_keys=["my-very-secret-key"])]})
    assert message.startswith("t.yaml: tenants.0.api_keys.0: must be 'sha256:<64 hex digits>'")
    assert "feedstream tenants hash-key KEY" in message
    assert "my-very-secret-key" not in message


def test_uppercase_hash_is_normalized() -> None:
    registry = parse_tenants({"tenants": [_tenant(api_keys=[_sha("k").upper().replace("SHA256", "sha256")])]})
    tenant = registry.authenticate("k")
    assert tenant is not None
    assert tenant.api_keys == [_sha("k")]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"id": "Acme"}, "tenants.0.id: String should match pattern '^[a-z0-9_-]+$'"),
        ({"id": ""}, "tenants.0.id: String should match pattern '^[a-z0-9_-]+$'"),
        ({"api_keys": []}, "tenants.0.api_keys: List should have at least 1 item after validation, not 0"),
        ({"rate_limit_rps": 0}, "tenants.0.rate_limit_rps: Input should be greater than or equal to 1"),
        ({"rate_limit_rps": "50"}, "tenants.0.rate_limit_rps: Input should be a valid integer"),
        ({"feedback_mode": "training"}, "tenants.0.feedback_mode: Input should be 'off', 'audit_only', "),
        (
            {"domains": {"d": {"threshold": 0}}},
            "tenants.0.domains.d.threshold: Input should be greater than or equal to 1",
        ),
        ({"domains": {"d": {}}}, "tenants.0.domains.d.threshold: Field required"),
        (
            {"domains": {"d": {"threshold": 5, "limit": 1}}},
            "tenants.0.domains.d.limit: Extra inputs are not permitted",
        ),
        (
            {"tasks": {"not-a-uuid": {"threshold": 1}}},
            "tenants.0.tasks.not-a-uuid.[key]: task ids must be UUIDs",
        ),
        (
            {"tasks": {TASK: {"threshold": 1}, TASK.upper(): {"threshold": 2}}},
            f"tenants.0.tasks: task {TASK} is listed twice",
        ),
        (
            {"tasks": {TASK: {"threshold": 1, "input_fields": ["a", "a"]}}},
            f"tenants.0.tasks.{TASK}.input_fields: must not list",
        ),
        (
            {"default_domains": {"ranking_outcome": "x"}},
            "tenants.0.default_domains.ranking_outcome: Extra inputs are not",
        ),
        (
            {"default_domains": {"correction": "support"}},
            "tenants.0: default_domains.correction: domain 'support' is not listed",
        ),
        (
            {"tasks": {TASK: {"threshold": 1}}, "domains": {TASK: {"threshold": 1}}},
            f"tenants.0: '{TASK}' is both a domain and a task",
        ),
        ({"tier": ""}, "tenants.0.tier: String should have at least 1 character"),
        ({"rate_limt_rps": 5}, "tenants.0.rate_limt_rps: Extra inputs are not permitted"),
    ],
)
def test_tenant_field_errors(patch: dict[str, Any], message: str) -> None:
    assert _config_error({"tenants": [_tenant(**patch)]}).startswith(f"t.yaml: {message}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "t.yaml: (top level): Input should be a valid dictionary"),
        ({}, "t.yaml: tenants: Field required"),
        ({"tenants": []}, "t.yaml: tenants: List should have at least 1 item"),
        ({"tenants": [], "extra": 1}, "t.yaml: tenants: List should have at least 1 item"),
    ],
)
def test_file_level_errors(data: Any, message: str) -> None:
    assert _config_error(data).startswith(message)


def test_cross_tenant_uniqueness_reports_every_problem() -> None:
    shared_key = _sha("shared")
    data = {
        "tenants": [
            _tenant(
                "a", api_keys=[shared_key], domains={"jobs": {"threshold": 1}}, tasks={TASK: {"threshold": 1}}
            ),
            _tenant(
                "b",
                api_keys=[shared_key],
                domains={"jobs": {"threshold": 2}},
                tasks={TASK.upper(): {"threshold": 2}},
            ),
            _tenant("a"),
        ]
    }
    assert _config_error(data).splitlines() == [
        "t.yaml: tenants.1.api_keys.0: this key hash is already used by tenant 'a'",
        "t.yaml: tenants.1.domains.jobs: already owned by tenant 'a'",
        f"t.yaml: tenants.1.tasks.{TASK}: already owned by tenant 'a'",
        "t.yaml: tenants.2.id: tenant id 'a' is already used by tenants.0",
    ]


def test_registry_constructor_checks_uniqueness_too() -> None:
    registry = parse_tenants({"tenants": [_tenant("a")]})
    with pytest.raises(TenantsConfigError, match="tenant id 'a' is already used"):
        TenantRegistry([*registry.tenants, *registry.tenants])


def test_defaults() -> None:
    registry = parse_tenants({"tenants": [{"id": "x", "api_keys": [_sha("x")]}]})
    tenant = registry.tenant("x")
    assert tenant is not None
    assert (tenant.tier, tenant.rate_limit_rps, tenant.feedback_mode) == (
        "standard",
        50,
        FeedbackMode.AUDIT_ONLY,
    )
    assert (tenant.domains, tenant.tasks, tenant.labels) == ({}, {}, {})
    assert tenant.default_domain(Contract.CORRECTION) is None


@pytest.mark.parametrize("mode", ["off", "audit_only", "tenant_tuning", "shared_improvement"])
def test_every_feedback_mode(mode: str) -> None:
    assert parse_tenants({"tenants": [_tenant(feedback_mode=mode)]}).mode_for("acme") == FeedbackMode(mode)


def test_bare_yaml_off_means_mode_off(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(f"tenants:\n  - id: x\n    api_keys: ['{_sha('x')}']\n    feedback_mode: off\n")
    assert yaml.safe_load(path.read_text())["tenants"][0]["feedback_mode"] is False
    assert load_tenants(path).mode_for("x") is FeedbackMode.OFF


def test_yaml_true_is_not_a_mode() -> None:
    assert "tenants.0.feedback_mode" in _config_error({"tenants": [_tenant(feedback_mode=True)]})


# --- tasks and inputs ----------------------------------------------------------------------------


def test_inputs_problem() -> None:
    registry = parse_tenants(
        {"tenants": [_tenant(tasks={TASK: {"threshold": 3, "input_fields": ["ticket_text", "priority"]}})]}
    )
    tenant = registry.tenant("acme")
    assert tenant is not None
    assert tenant.tasks[TASK].input_fields == frozenset({"ticket_text", "priority"})
    assert tenant.inputs_problem(TASK, {"ticket_text": "x", "priority": "high"}) is None
    assert tenant.inputs_problem(TASK, None) is None
    assert (
        tenant.inputs_problem(TASK, {"ticket_text": "x"})
        == "inputs do not match the task's fields: missing priority"
    )
    assert tenant.inputs_problem(TASK, {"ticket_text": "x", "priority": "h", "lang": "en"}) == (
        "inputs do not match the task's fields: unexpected lang"
    )
    assert tenant.inputs_problem(TASK, {"a": 1}) == (
        "inputs do not match the task's fields: missing priority, ticket_text; unexpected a"
    )
    assert tenant.inputs_problem("6ba7b810-9dad-11d1-80b4-00c04fd430c8", {"a": 1}) is None


def test_task_without_input_fields_accepts_any_inputs(dev: TenantRegistry) -> None:
    tenant = dev.tenant("dev")
    assert tenant is not None
    assert tenant.inputs_problem(TASK, {"anything": 1}) is None
    assert tenant.task(TASK.upper()) is tenant.tasks[TASK]
    assert tenant.task("not-a-uuid") is None


# --- files ---------------------------------------------------------------------------------------


def test_hash_api_key() -> None:
    assert hash_api_key("fs_dev_key_123") == _sha("fs_dev_key_123")
    assert (
        hash_api_key("fs_dev_key_123")
        == "sha256:12b01608c0a772a486640c3a729391b024361c1d1c941bdb236d6a35cbbc4012"
    )


def test_json_file_loads_like_yaml(tmp_path: Path) -> None:
    data = yaml.safe_load(DEV_FILE.read_text())
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(data))
    registry = load_tenants(path)
    assert [t.id for t in registry.tenants] == ["dev", "other"]
    assert registry.threshold_for("llm") == 500


def test_yml_extension(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yml"
    path.write_text(DEV_FILE.read_text())
    assert load_tenants(str(path)).threshold_for("search") == 200


def test_errors_name_the_file(tmp_path: Path) -> None:
    data = yaml.safe_load(DEV_FILE.read_text())
    broken = copy.deepcopy(data)
    broken["tenants"][0]["domains"]["dating"]["threshold"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(TenantsConfigError) as info:
        load_tenants(path)
    assert (
        str(info.value)
        == f"{path}: tenants.0.domains.dating.threshold: Input should be greater than or equal to 1"
    )


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("")
    with pytest.raises(TenantsConfigError, match=r"unsupported extension '\.toml'"):
        load_tenants(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TenantsConfigError, match="cannot read"):
        load_tenants(tmp_path / "absent.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("tenants: [\n")
    with pytest.raises(TenantsConfigError, match="not valid YAML"):
        load_tenants(path)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{")
    with pytest.raises(TenantsConfigError, match="not valid JSON"):
        load_tenants(path)


def test_empty_yaml(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("")
    with pytest.raises(TenantsConfigError, match=r"\(top level\): Input should be a valid dictionary"):
        load_tenants(path)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_hash_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "kaizen_abc123"]) == 0
    assert capsys.readouterr().out == _sha("kaizen_abc123") + "\n"


def test_cli_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(DEV_FILE)]) == 0
    assert capsys.readouterr().out == f"{DEV_FILE}: ok, 2 tenant(s): dev, other\n"


def test_cli_check_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("tenants: []\n")
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}: tenants: List should have at least 1 item")


def test_cli_as_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.tenants", "hash-key", "fs_other_key_456"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == _sha("fs_other_key_456")


# --- names that could collide (issue 7, Medium 4) ---------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "dating/x", "", "-lead", "sp ace", "x" * 129, "é"])
def test_domain_names_follow_the_pattern(name: str) -> None:
    message = _config_error({"tenants": [_tenant(domains={name: {"threshold": 1}})]})
    assert "tenants.0.domains" in message and "should match pattern" in message


def test_domain_names_that_fit_the_pattern() -> None:
    names = ["dating", "__shared__", "a.b:c-d_e", "x" * 128]
    registry = parse_tenants({"tenants": [_tenant(domains={n: {"threshold": 1} for n in names})]})
    assert all(registry.owner_of(n) == "acme" for n in names)


def test_default_domain_with_a_slash_is_refused() -> None:
    message = _config_error({"tenants": [_tenant(default_domains={"correction": "a/b"})]})
    assert "default_domains.correction" in message


def test_domains_of_two_tenants_may_not_differ_only_in_case() -> None:
    message = _config_error(
        {
            "tenants": [
                _tenant("a", domains={"Dating": {"threshold": 1}}),
                _tenant("b", domains={"dating": {"threshold": 1}}),
            ]
        }
    )
    assert "tenants.1.domains.dating: already owned by tenant 'a' (as 'Dating')" in message


def test_one_tenant_may_not_list_a_domain_twice_in_two_cases() -> None:
    message = _config_error(
        {"tenants": [_tenant(domains={"Dating": {"threshold": 1}, "dating": {"threshold": 1}})]}
    )
    assert "differ only in letter case" in message


@pytest.mark.parametrize(
    "spelling", [TASK.upper(), "{" + TASK + "}", "urn:uuid:" + TASK, TASK.replace("-", "")]
)
def test_tasks_of_two_tenants_collide_in_any_spelling(spelling: str) -> None:
    message = _config_error(
        {
            "tenants": [
                _tenant("a", tasks={TASK: {"threshold": 1}}),
                _tenant("b", tasks={spelling: {"threshold": 1}}),
            ]
        }
    )
    assert f"tenants.1.tasks.{TASK}: already owned by tenant 'a'" in message


def test_a_domain_spelled_as_another_tenants_task_collides() -> None:
    message = _config_error(
        {
            "tenants": [
                _tenant("a", tasks={TASK: {"threshold": 1}}),
                _tenant("b", domains={TASK.upper(): {"threshold": 1}}),
            ]
        }
    )
    assert "already owned by tenant 'a'" in message


def test_task_ids_with_hyphens_anywhere_are_refused() -> None:
    message = _config_error({"tenants": [_tenant(tasks={"550e-8400" + TASK[8:]: {"threshold": 1}})]})
    assert "task ids must be UUIDs" in message


def test_checked_in_tenants_files_stay_valid() -> None:
    for path in (DEV_FILE, REPO / "tests" / "data" / "tenants.test.yaml"):
        assert len(load_tenants(path)) >= 2


def test_a_domain_may_set_a_time_trigger() -> None:
    from pipeline.tenants import TimeTrigger, parse_duration

    assert [parse_duration(v) for v in ("24h", "90m", "30s", "2d", 45, "1.5h")] == [
        86400.0,
        5400.0,
        30.0,
        172800.0,
        45.0,
        5400.0,
    ]
    for bad in ("soon", "0s", True, "-3h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    data = {
        "tenants": [
            {
                "id": "t",
                "api_keys": ["sha256:" + "a" * 64],
                "domains": {
                    "slow": {"threshold": 100, "max_wait": "24h", "min_units": 5},
                    "fast": {"threshold": 3},
                },
            }
        ]
    }
    registry = parse_tenants(data)
    assert registry.time_trigger_for("slow") == TimeTrigger(86400.0, 5)
    assert registry.time_trigger_for("fast") is None and registry.time_trigger_for("nobody") is None
    data["tenants"][0]["domains"]["slow"]["max_wait"] = "whenever"  # type: ignore[index]
    with pytest.raises(TenantsConfigError, match="max_wait"):
        parse_tenants(data)

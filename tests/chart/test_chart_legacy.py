"""A tenant's `legacy` settings (the tutorial client's own scaling) reach its server config, which the
server accepts; the schema refuses settings the server would refuse (issue 13, finding 6)."""

from __future__ import annotations

import pytest
import yaml

from mlserving_server.config import LegacyConfig, parse_config

from chart_support import COMBOS, RELEASE, snake_keys

TWO = COMBOS["two-tenants"]


def tenant_config(rendered, tenant: str) -> dict:
    return snake_keys(yaml.safe_load(rendered.one("ConfigMap", f"{RELEASE}-server-{tenant}")["data"]["server.yaml"]))


def test_legacy_settings_reach_the_tenants_server_config(render, tmp_path):
    values = tmp_path / "legacy.yaml"  # a file: `--set` would pass 21.25 as a string
    values.write_text("tenants:\n  tenant-a:\n    legacy: {mean: 21.25, scale: 4.5}\n")
    rendered = render([*TWO, str(values)])
    config = tenant_config(rendered, "tenant-a")
    assert config["tenants"]["tenant-a"]["legacy"] == {"mean": 21.25, "scale": 4.5}
    config["broker"].pop("password_file", None)  # a file of the pod; the server reads it at start
    assert parse_config(config).tenants["tenant-a"].legacy == LegacyConfig(mean=21.25, scale=4.5)
    assert "legacy" not in tenant_config(rendered, "tenant-b")["tenants"]["tenant-b"]  # unset: refused by the server


@pytest.mark.parametrize(
    "sets, reason",
    [
        (["tenants.tenant-a.legacy.mean=21"], "scale"),
        (["tenants.tenant-a.legacy.mean=21", "tenants.tenant-a.legacy.scale=0"], "scale"),
        (
            ["tenants.tenant-a.legacy.mean=21", "tenants.tenant-a.legacy.scale=1", "tenants.tenant-a.legacy.offset=2"],
            "offset",
        ),
    ],
)
def test_schema_refuses_incomplete_or_bad_legacy_settings(template, sets, reason):
    result = template(TWO, sets=sets)
    assert result.returncode != 0 and "legacy" in result.stderr and reason in result.stderr, result.stderr

"""./inv plan's verdicts, from two real renders: added and removed hosts, file diffs, the services reloaded for
them, the joins that run again, "no changes", and secret values masked wherever they would show."""

from __future__ import annotations

from pathlib import Path

from kiln.lab.change import SCALE_OUT, roles_with
from kiln.model import parse_roles
from kiln.plan import MASK, format_plan, make_plan
from kiln.secrets import SecretStore


def _plan(before: str, after: str, **kw):
    return make_plan(parse_roles(before), 7, parse_roles(after), check=False, **kw)


def test_the_same_roles_plan_no_changes(shipped_roles: Path) -> None:
    text = shipped_roles.read_text()
    plan = _plan(text, text)
    assert plan.changes == [] and format_plan(plan, source="roles.yaml")[-1] == "no changes"


def test_scale_out_adds_hosts_and_reloads_only_what_lists_them(shipped_roles: Path) -> None:
    text = shipped_roles.read_text()
    plan = _plan(text, roles_with(text, add=SCALE_OUT))
    by = {h.name: h for h in plan.hosts}
    assert by["web3"].change == "add" and by["app2"].change == "add"
    lb1 = by["lb1"]
    assert "/etc/haproxy/haproxy.cfg" in lb1.files
    assert any(line.startswith("+") and "web3" in line for line in lb1.diff)
    assert "haproxy.service reload-or-restart" in lb1.services
    assert not any(s.startswith("keepalived") for s in lb1.services), "keepalived's config is the same"
    assert "nftables ruleset reloaded (one transaction)" in by["app1"].services  # it now admits web3
    assert any("nginx.service reload-or-restart" == s for s in by["web1"].services)  # app2 in the upstream
    assert by["db1"].join and "app_hosts" in by["db1"].join[0] and "10.10.0.32" in by["db1"].join[0]
    assert not by["db2"].join, "a replica's join does not change when app hosts do"
    lines = format_plan(plan, source="roles.yaml")
    assert "+ web3 (web, 10.10.0.23): new; power it on: it installs, joins, and its peers admit it" in lines
    assert "/etc/prometheus/prometheus.yml" in by["mon1"].files, "Prometheus scrapes the new hosts"
    assert lines[-1] == "summary: 2 to add, 0 to remove, 8 to change, 0 unchanged"


def test_scale_in_removes_hosts(shipped_roles: Path) -> None:
    text = shipped_roles.read_text()
    plan = _plan(text, roles_with(text, drop=("web2",)))
    assert plan.removed == ["web2"]
    assert any(line.startswith("- web2 (web, 10.10.0.22): removed") for line in format_plan(plan, source="x"))


def test_a_setting_reaches_only_the_hosts_that_use_it(shipped_roles: Path) -> None:
    text = shipped_roles.read_text()
    plan = _plan(text, text.replace("workers: 2", "workers: 4"))
    assert [h.name for h in plan.changes] == ["app1"]
    [app1] = plan.changes
    assert app1.files == ("/etc/systemd/system/kiln-app.service",)  # gunicorn's --workers
    assert app1.services == ("systemd daemon-reload", "kiln-app.service restart (its command line may change)")


def test_secret_values_never_show(shipped_roles: Path, tmp_path: Path) -> None:
    text = shipped_roles.read_text()
    store = SecretStore(tmp_path / "secrets")
    cluster = parse_roles(text)
    store.ensure(cluster)
    password = store.value("db_app_password")
    # a file that would carry the value (a hand-made template could): the plan masks it
    plan = make_plan(cluster, 7, parse_roles(text.replace("workers: 2", "workers: 3")), secrets=store, check=False)
    assert all(password not in line for h in plan.hosts for line in h.diff)
    from kiln.plan import _mask, _masker

    assert _mask(f"KILN_DB_PASSWORD={password}", _masker([password])) == f"KILN_DB_PASSWORD={MASK}"


def test_a_key_change_reaches_the_plan_of_its_roles_hosts_only(shipped_roles: Path) -> None:
    """Keys are no file of the bundle: the plan names them, or an operator removing a key would read 'no changes'."""
    from tests.unit.test_model_access import ALICE, BOB, CAROL

    text = shipped_roles.read_text()
    before = text.replace("\nroles:\n", f"\naccess: {{ssh_keys: ['{ALICE}', '{BOB}']}}\nroles:\n")
    after = before.replace(f"'{BOB}'", f"'{CAROL}'")
    plan = _plan(before, after)
    assert [h.name for h in plan.changes] == [h.name for h in plan.hosts]
    assert all(h.other == ("admin account kiln keys: +carol -bob",) and not h.files for h in plan.changes)
    only_db = before.replace("db:  {database: foobar}", f"db:  {{database: foobar, access: {{ssh_keys: ['{CAROL}']}}}}")
    assert [h.name for h in _plan(before, only_db).changes] == ["db1", "db2"]
    lines = format_plan(_plan(before, only_db), source="roles.yaml")
    assert any("admin account kiln keys: +carol" in line for line in lines)

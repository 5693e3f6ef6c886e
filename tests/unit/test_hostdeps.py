"""The launcher's package check asks dpkg, and knows what is installed and what is not."""

from __future__ import annotations

from kiln import hostdeps


def test_installed_and_absent_packages_are_told_apart():
    assert hostdeps.missing(("dpkg", "kiln-no-such-package")) == ["kiln-no-such-package"]


def test_the_test_task_needs_the_real_checkers():
    assert {"haproxy", "nginx", "keepalived", "nftables", "mariadb-server"} <= set(hostdeps.PACKAGES["test"])


def test_a_task_without_packages_needs_nothing():
    assert hostdeps.needed(["validate"]) == ()
    assert hostdeps.ensure(["validate"]) == 0


def test_tasks_run_together_need_each_package_once():
    both = hostdeps.needed(["lab", "build"])
    assert set(both) == {*hostdeps.PACKAGES["lab"], *hostdeps.PACKAGES["build"]}
    assert len(both) == len(set(both)), "qemu-utils is in both: asked for once"


def test_while_quiet_packages_install_no_daemon_may_start_and_a_machines_own_policy_stays(tmp_path, monkeypatch):
    """Debian's maintainer scripts run policy-rc.d before starting a service; exit 101 means "not now"."""
    import subprocess

    policy = tmp_path / "policy-rc.d"
    monkeypatch.setattr(hostdeps, "POLICY_RC_D", policy)
    with hostdeps._no_daemon_starts():
        assert subprocess.run([str(policy), "ssh", "start"], check=False).returncode == 101
    assert not policy.exists(), "removed once the install is over"
    policy.write_text("#!/bin/sh\nexit 0\n")
    with hostdeps._no_daemon_starts():
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert policy.exists(), "the machine's own is left alone"
    assert "openssh-server" in hostdeps.NOT_STARTED and "openssh-server" in hostdeps.PACKAGES["test"]

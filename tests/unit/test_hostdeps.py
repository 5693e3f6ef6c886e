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

"""What the served command keeps, and the setpriv words that say it (pure: no process)."""

from __future__ import annotations

from warmpool.process.privileges import DEFAULT_SET, kept, names, wrapper

CRIU_ADDED = {"sys_admin", "checkpoint_restore", "sys_ptrace", "net_admin", "sys_time"}


def test_kept_is_the_default_set_plus_two_for_the_program_and_sys_admin_for_criu() -> None:
    assert set(kept(checkpointed=False)) == {*DEFAULT_SET, "ipc_lock", "sys_nice"}
    assert set(kept(checkpointed=True)) - set(kept(checkpointed=False)) == {"sys_admin"}
    assert not CRIU_ADDED - {"sys_admin"} & set(kept(checkpointed=True))
    assert "sys_resource" not in kept(checkpointed=True)


def test_names_follow_the_kernel_numbers() -> None:
    table = names()
    assert len(table) == 64
    assert (table[0], table[21], table[24], table[40], table[41]) == (
        "chown",
        "sys_admin",
        "sys_resource",
        "checkpoint_restore",
        "cap_41",
    )


def test_wrapper_drops_all_but_what_is_kept_and_clears_inheritable_and_ambient() -> None:
    assert wrapper(None) == []
    words = wrapper(("chown", "kill"))
    assert words == [
        "setpriv",
        "--bounding-set",
        "-all,+chown,+kill",
        "--inh-caps",
        "-all",
        "--ambient-caps",
        "-all",
    ]

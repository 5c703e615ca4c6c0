"""Who may see which jobs: a user sees their own jobs; root and members of `[reports] admin_groups` see all.

This is the policy of slurmgpu's commands. It is not a security boundary by itself: the job store is readable by
every user (mode 0644, so that `slurmgpu job` works for them), and Slurm shows accounting data according to its
own PrivateData setting.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from slurmgpu.config import Config
from slurmgpu.errors import SlurmgpuError


class AccessError(SlurmgpuError):
    """The user asked for jobs of another user without being an admin."""


@dataclass(frozen=True)
class Viewer:
    user: str
    uid: int
    admin: bool
    admin_groups: tuple[str, ...] = ()

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.user

    def who_may(self) -> str:
        groups = ", ".join(self.admin_groups)
        return "root" + (f" and members of {groups}" if groups else "")

    def only_user(self, requested: str | None) -> str | None:
        """The user filter a query must apply: the requested one for an admin; for anyone else their own name
        (AccessError if they asked for someone else)."""
        if self.admin:
            return requested
        if requested is not None and requested != self.user:
            raise AccessError(
                f"you may only see your own jobs (you are {self.user}); {self.who_may()} see every user's"
            )
        return self.user

    def require_admin(self, what: str) -> None:
        if not self.admin:
            raise AccessError(f"{what} covers every user's jobs: only {self.who_may()} may run it")


def current_viewer(config: Config, uid: int | None = None) -> Viewer:
    """The user running the command (real uid), and whether they are an admin."""
    uid = os.getuid() if uid is None else uid
    try:
        entry = pwd.getpwuid(uid)
        name, gid = entry.pw_name, entry.pw_gid
    except KeyError:
        name, gid = str(uid), -1
    admin_groups = config.reports.admin_groups
    admin = uid == 0
    if not admin and admin_groups and gid >= 0:
        member_of = set()
        for g in os.getgrouplist(name, gid):
            try:
                member_of.add(grp.getgrgid(g).gr_name)
            except KeyError:
                continue
        admin = bool(member_of & set(admin_groups))
    return Viewer(user=name, uid=uid, admin=admin, admin_groups=admin_groups)

"""Who a kernel runs as inside its container: a uid and gid with a name, groups and a home.

Images know nothing of the host's users. Without a passwd entry for the
kernel's uid, ``getpass.getuser()``, ``~user`` paths and ssh fail; without the
user's supplementary groups, a dataset readable through a group is not. The
plan runs the kernel as the host user's uid:gid with their supplementary
groups, and these pure functions add the matching passwd and group entries to
the image's own files, which the container gets as copies.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """A user as the kernel sees it: ids, a login name, supplementary groups."""

    uid: int
    gid: int
    name: str
    groups: tuple[int, ...] = ()  # supplementary group ids, the primary one left out
    group_names: tuple[tuple[int, str], ...] = ()  # names for gid and groups, where the host has one

    @property
    def user(self) -> str:
        """The ``uid:gid`` that Docker runs the kernel as."""
        return f"{self.uid}:{self.gid}"


def host_identity() -> Identity:
    """This process's user, with its name and supplementary groups as the host knows them."""
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"user{uid}"
    supplementary = tuple(sorted({g for g in os.getgroups() if g != gid}))
    names = []
    for g in (gid, *supplementary):
        try:
            names.append((g, grp.getgrgid(g).gr_name))
        except KeyError:
            pass
    return Identity(uid, gid, name, supplementary, tuple(names))


def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def merge_passwd(image_passwd: str, identity: Identity, home: str) -> str:
    """The image's /etc/passwd with an entry for ``identity``, unless its uid has one already.

    A name the image uses for another uid is not reused: the entry gets a unique one.
    """
    entries = _entries(image_passwd)
    if any(len(e) > 2 and e[2] == str(identity.uid) for e in entries):
        return image_passwd
    taken = {e[0] for e in entries}
    name = _free_name(identity.name, taken)
    line = f"{name}:x:{identity.uid}:{identity.gid}:{identity.name}:{home}:/bin/sh"
    return _append(image_passwd, [line])


def merge_group(image_group: str, identity: Identity) -> str:
    """The image's /etc/group with entries for the identity's groups that it lacks.

    Each group added lists the user as a member, so that tools that read
    /etc/group (``id``, ``groups``) show what the kernel process really has.
    """
    entries = _entries(image_group)
    known = {e[2] for e in entries if len(e) > 2}
    taken = {e[0] for e in entries}
    names = dict(identity.group_names)
    lines = []
    for gid in (identity.gid, *identity.groups):
        if str(gid) in known:
            continue
        name = _free_name(names.get(gid, f"group{gid}"), taken)
        taken.add(name)
        lines.append(f"{name}:x:{gid}:{identity.name if gid != identity.gid else ''}")
    return _append(image_group, lines)


def _free_name(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}{n}"
    return name


def _append(text: str, lines: list[str]) -> str:
    if not lines:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n".join(lines) + "\n"

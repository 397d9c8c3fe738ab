"""A kernel started by an ordinary user runs as that user: ids, name, home, groups, files.

Run as root, as CI does, these checks would pass even if the kernel ignored
the user: so the kernel is started by the ordinary user that tests/run.sh
made, a member of the docker group and of a data group.
"""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import errors

from conftest import IMAGES, PYTHONS, public_tempdir

pytestmark = pytest.mark.docker

DATA_GROUP = "dockerkernel-data"  # tests/run.sh makes it, with the ordinary user in it
NON_ROOT_USER_IMAGE = "dockerkernel-test/py3-user-nobody"

# Python 2 and 3 alike: who the kernel is, as tools in it see it.
IDENTITY_CELLS = [
    "import getpass, os, pwd; e = pwd.getpwuid(os.getuid())\n"
    "print(' '.join([getpass.getuser(), e.pw_name, e.pw_dir, os.environ['HOME'], os.environ['LOGNAME']]))",
    "import os; print(' '.join(map(str, [os.getuid(), os.getgid()] + sorted(os.getgroups()))))",
    "import grp; print(' '.join(sorted(grp.getgrgid(g).gr_name for g in os.getgroups())))",
    "print(open('/datasets/shared/train.csv').read().strip())",  # readable through the group only
    "open('owned.txt', 'w').write('x'); print(os.path.expanduser('~'))",
]


@pytest.fixture
def group_dataset() -> Iterator[Path]:
    """A dataset folder that only root and the data group can read."""
    try:
        gid = grp.getgrnam(DATA_GROUP).gr_gid
    except KeyError:
        pytest.fail(f"the group {DATA_GROUP} is missing: tests/run.sh makes it")
    parent = public_tempdir("dockerkernel-group-")
    folder = parent / "datasets"
    folder.mkdir()
    (folder / "train.csv").write_text("x,y\n")
    for path, mode in ((folder, 0o750), (folder / "train.csv", 0o640)):
        if os.geteuid() == 0:
            os.chown(path, 0, gid)
        os.chmod(path, mode)
    yield folder
    shutil.rmtree(parent)


@pytest.fixture(scope="module")
def non_root_user_image(docker_client: docker.DockerClient) -> str:
    """The py3 test image with a non-root USER, as many published images have."""
    dockerfile = f"FROM {IMAGES['py3']}\nUSER nobody\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=NON_ROOT_USER_IMAGE, rm=True)
    return NON_ROOT_USER_IMAGE


@pytest.mark.parametrize("flavour", ["py3", "py2", "user-nobody"])
def test_the_kernel_is_the_invoking_user_with_a_name_home_and_groups(
    flavour: str,
    ordinary_user: pwd.struct_passwd,
    user_workdir: Path,
    user_session: Any,
    group_dataset: Path,
    non_root_user_image: str,
    docker_client: docker.DockerClient,
    no_leftovers: None,
) -> None:
    assert ordinary_user.pw_uid != 0
    image = non_root_user_image if flavour == "user-nobody" else IMAGES[flavour]
    install = ["--image", image, "--python", PYTHONS.get(flavour, "python3")]
    install += ["--volume", f"{group_dataset}:/datasets/shared:ro"]
    session = user_session(install, IDENTITY_CELLS, keep=True)

    name, home = ordinary_user.pw_name, "/dockerkernel/home"
    who, ids, groups, data, expanded = session.outputs
    assert who.split() == [name, name, home, home, name]
    data_gid = grp.getgrnam(DATA_GROUP).gr_gid
    user_ids = [int(i) for i in ids.split()]
    assert user_ids[:2] == [ordinary_user.pw_uid, ordinary_user.pw_gid]
    assert data_gid in user_ids[2:]
    assert DATA_GROUP in groups.split()
    assert data == "x,y\n"
    assert expanded == home + "\n"
    owned = (user_workdir / "owned.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (ordinary_user.pw_uid, ordinary_user.pw_gid)
    # What the engine was asked for, not only what the kernel says.
    config = docker_client.api.inspect_container(session.container)["Config"]
    assert config["User"] == f"{ordinary_user.pw_uid}:{ordinary_user.pw_gid}"
    session.close()


def test_connection_file_is_readable_by_that_user_only_who_cannot_change_its_accounts(
    ordinary_user: pwd.struct_passwd, user_session: Any, docker_client: Any, no_leftovers: None
) -> None:
    cell = (
        "import errno, json, os, ipykernel; p = ipykernel.get_connection_file(); s = os.stat(p)\n"
        "def change(path):\n"
        "    try:\n"
        "        open(path, 'a').close()\n"
        "        return 'changed'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "print(json.dumps([s.st_uid, oct(s.st_mode & 0o777), change('/etc/passwd'), change('/etc/group')]))"
    )
    session = user_session(["--image", IMAGES["py3"]], [cell])
    # Its passwd and group entries are mounted read-only, from outside the folder it can write.
    assert json.loads(session.outputs[0]) == [ordinary_user.pw_uid, "0o600", "EROFS", "EROFS"]


def test_a_volume_the_user_cannot_reach_is_one_sentence(
    ordinary_user: pwd.struct_passwd, user_session: Any, docker_client: Any, no_leftovers: None
) -> None:
    """Not "does not exist": the folder is there, the user may not enter its parent."""
    private = Path(tempfile.mkdtemp(prefix="dockerkernel-private-"))  # 0700, root's
    (private / "data").mkdir()
    try:
        with pytest.raises(AssertionError) as failed:
            user_session(["--image", IMAGES["py3"], "--volume", f"{private / 'data'}:/data"], ["1"])
        assert errors.PATH_NOT_YOURS.format(path=private / "data") in str(failed.value)
    finally:
        shutil.rmtree(private)

"""The errors a user can cause, each one sentence that names the problem and the fix.

Messages are module constants so that tests can import and compare them, and
so that the same wording reaches the CLI, the server log and the notebook.
"""

from __future__ import annotations


class DockerKernelError(Exception):
    """An error the user can fix; its message says how."""


class PortTaken(DockerKernelError):
    """Another program took a kernel port between its choice and the container's start."""


class NotSignalable(DockerKernelError):
    """The backend cannot reach the kernel's process to signal it."""


class ImageUnavailable(DockerKernelError):
    """A pull failed (IMAGE_UNAVAILABLE); ``reason`` is the registry's or engine's word for why."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(IMAGE_UNAVAILABLE.format(image=image, reason=reason))
        self.reason = reason


class GpusUnavailable(DockerKernelError):
    """The daemon refused a container its GPUs (GPUS_UNAVAILABLE)."""


DOCKER_UNREACHABLE = (
    "Cannot reach the Docker daemon ({reason}): start Docker, or give your user "
    "access to it (for example by adding it to the 'docker' group)."
)
IMAGE_UNAVAILABLE = (
    "Docker image '{image}' could not be pulled ({reason}): check the image name, "
    "log in with `docker login` if the registry needs it, or build the image locally."
)
IMAGE_NOT_PRESENT = (
    "Docker image '{image}' is not present and pull_policy is 'never': "
    "build or pull it first (`docker pull {image}`), or set pull_policy to 'missing'."
)
GPUS_UNAVAILABLE = (
    "GPUs were requested (gpus={gpus}) but the Docker daemon cannot give containers GPUs: "
    "install the NVIDIA Container Toolkit on the Docker host and restart Docker "
    "(`dockerkernel doctor` shows what it found), or use a kernel without GPUs (gpus 'none')."
)
GPUS_MORE_THAN_HOST = (
    "The kernel asks for {count} GPUs but the Docker host has {total}: "
    "reinstall it with --gpus {total} or fewer."
)
GPUS_BUSY = (
    "The kernel asks for {count} GPU(s) but only {free} of the Docker host's {total} are free "
    "({holders}), and its when_gpus_busy setting is 'refuse': shut down a kernel that holds one, "
    "or reinstall it with --when-gpus-busy share to share the least used."
)
GPU_UNKNOWN_DEVICE = (
    "The kernel asks for GPU {unknown} (gpus={gpus}) but the Docker host has no such GPU: "
    "reinstall it with ids it has ({known}), for example --gpus device={first}."
)
GPU_LOCK_TIMEOUT = (
    "Another kernel start has held the GPU allocation lock (container {name}) for over {seconds} s: "
    "start the kernel again, or remove the lock with `docker rm -f {name}` if no kernel is starting."
)
CONTAINER_START_FAILED = (
    "The kernel container for image '{image}' could not be started ({reason}): "
    "check the kernelspec's settings with `dockerkernel list`."
)
UNKNOWN_SETTING = (
    "Unknown dockerkernel setting '{key}' in kernelspec '{kernel}': remove or rename "
    "it; the settings are {valid}."
)
NO_IMAGE = (
    "Kernelspec '{kernel}' names no Docker image: set 'image' in its "
    "kernel_provisioner config, or reinstall it with `dockerkernel install --image IMAGE`."
)
INVALID_SETTING = "Invalid dockerkernel setting in kernelspec '{kernel}': {reason}"
LOOPBACK_ONLY = (
    "dockerkernel chooses each kernel's channels itself (ipc sockets, or tcp on 127.0.0.1), but "
    "the kernel manager asks for {transport} on {ip}: set KernelManager.ip to 127.0.0.1, or leave "
    "it unset."
)
IPC_IMPOSSIBLE = (
    "This kernelspec asks for channels 'ipc', but {reason}: set channels to 'auto' (or "
    "`dockerkernel install --channels auto`) to use tcp on the loopback there."
)
IPC_FOLDER_UNSAFE = (
    "The folder '{path}' for your kernels' private sockets is not safe to use ({reason}): "
    "remove it, or set XDG_RUNTIME_DIR (or TMPDIR) to a folder of your own; dockerkernel "
    "never changes it for you."
)
IPC_FOLDER_UNUSABLE = (
    "The folder '{path}' for your kernels' private sockets cannot be made ({reason}): set "
    "XDG_RUNTIME_DIR (or TMPDIR) to a folder of your own that you can write."
)
IPC_PATH_TOO_LONG = (
    "A kernel's socket paths under {tried} would be longer than the {max} bytes a unix socket "
    "address can hold: set XDG_RUNTIME_DIR (or TMPDIR) to a shorter folder, such as /tmp."
)
POLICY_REFUSED = (
    "Kernel '{kernel}' asks for {asks}, which this machine's policy does not allow ({rule}): "
    "ask your administrator, or remove that setting from the kernelspec."
)
POLICY_FILE_INVALID = (
    "The kernel policy file {path} cannot be read ({reason}): fix it, as a JSON file such as "
    '{{"KernelPolicy": {{"allowed_volume_roots": ["/data"]}}}}.'
)
NETWORK_NONE_NEEDS_IPC = (
    "Kernel '{kernel}' has network 'none', which only ipc channels can reach, but its channels "
    "are tcp ({reason}): use another network, or an engine of this machine."
)
VOLUME_HOST_MISSING = (
    "The host path '{path}' of volume '{volume}' does not exist: create it, "
    "or fix the volume in the kernelspec."
)
NOTEBOOK_DIR_MISSING = (
    "The notebook directory '{path}' does not exist or is not a directory: "
    "open the notebook from an existing directory."
)
KERNELSPEC_EXISTS = (
    "A kernelspec named '{name}' already exists in {path}: pass --replace to "
    "overwrite it, or choose another --name."
)
KERNELSPEC_NOT_FOUND = "No dockerkernel kernelspec named '{name}' is installed: see `dockerkernel list`."
INVALID_KERNEL_NAME = "Invalid kernel name '{name}': use only ASCII letters, digits, '.', '_' and '-'."
UNKNOWN_PRESET = "Unknown preset '{name}': choose one of {presets}, or pass --image."
INSTALL_NEEDS_IMAGE = "Nothing to install: name a preset (see `dockerkernel presets`) or pass --image IMAGE."
INVALID_ENV = "Invalid --env '{value}': write it as NAME=VALUE."
PERMISSION_DENIED = (
    "Permission denied writing to {path}: use --user to install for your user only, "
    "or run as an administrator."
)
IMAGE_NOT_PRESENT_FOR_PROBE = (
    "Docker image '{image}' is not present, so it cannot be checked: pull it first "
    "(`dockerkernel pull {image}`), or install without --no-pull."
)
NO_PYTHON = (
    "Docker image '{image}' has no '{python}' to run the kernel with: pass --python with "
    "the image's Python (for example python or python3.11), or choose another image."
)
PROBE_FAILED = (
    "Running '{python}' in Docker image '{image}' failed ({reason}): pass --python with a "
    "working Python of the image, or choose another image."
)
NO_IPYKERNEL = (
    "Docker image '{image}' has Python {python} but no ipykernel: add --add-ipykernel to "
    "build a kernel-ready image on top of it, or install ipykernel in the image."
)
UNSUPPORTED_LIBC = (
    "Cannot add ipykernel to an image whose C library is {libc}: only glibc images "
    "(Debian, Ubuntu, RHEL and the like) are supported; install ipykernel in the image yourself."
)
PYTHON_TOO_OLD = (
    "Cannot add ipykernel for Python {version}: Python 2.7 and 3.8 or newer are supported; "
    "install ipykernel in the image yourself."
)
WHEELS_UNAVAILABLE = (
    "Could not download ipykernel for Python {python} ({reason}): check that this machine "
    "can reach the Python package index, or configure pip to use a mirror."
)
BUILD_FAILED = "Building {what} failed ({reason}): fix the build, then run the install again."
DOCKERFILE_MISSING = "No Dockerfile at '{path}': pass the path of an existing Dockerfile to --dockerfile."
PORT_TAKEN = (
    "Another program keeps taking the kernel's ports before its container can publish "
    "them ({reason}): start the kernel again, or stop the program that grabs ports."
)
EXITED_DURING_STARTUP = (
    "The kernel in Docker image '{image}' exited during start-up (status {status}: {reason}): "
    "check that the image's Python has ipykernel (`dockerkernel doctor` checks it), that the "
    "kernelspec's kernel_cmd is right, and that the image's ENTRYPOINT runs the command it is given."
)
ENVIRONMENT_TOO_LARGE = (
    "The kernel's environment is too large to start a process with ({count} variables, "
    "{size} bytes, the largest '{largest}'): remove the large variables from the kernelspec's "
    "env or the environment setting."
)
KERNEL_CMD_NOT_FOUND = (
    "Docker image '{image}' has no '{command}' to start the kernel with: install the kernelspec "
    "again with --python naming the image's Python (for example python or python3.11) and --replace."
)
CURVE_UNSUPPORTED = (
    "The ipykernel ({version}) of Docker image '{image}' cannot encrypt kernel channels with "
    "CurveZMQ: install without --curve, or use an image with an ipykernel that supports it."
)
MOUNT_SYSTEM_DIR = (
    "The mount setting '{path}' would hide the image's own system folders: set mount to "
    "'auto', 'notebook', or a folder of your notebooks."
)
MOUNT_TARGET_TWICE = (
    "Two mounts at '{target}' in the container ({first} and {second}): give the volume "
    "another container path, or set mount to 'notebook'."
)
MOUNT_TARGET_OURS = (
    "The mount at '{target}' is inside {dir}, which holds dockerkernel's own files in the "
    "container (its connection file, home and sockets): give the volume another container path."
)
HOME_IN_USE = (
    "The kernel home '{volume}' is in use by a running kernel: shut that kernel down "
    "(see `dockerkernel ps`), then run the command again."
)
NO_PULL_NEEDS_IMAGE = (
    "{flag} needs Docker image '{image}' on this machine to check it, and --no-pull keeps it "
    "from being pulled: pull or build the image first, or leave out --no-pull."
)
MOUNT_MISSING = (
    "The folder '{path}' that kernelspec '{kernel}' mounts does not exist: create it, or set "
    "mount to 'auto' or 'notebook'."
)
PATH_NOT_YOURS = (
    "The host path '{path}' cannot be reached by your user (permission denied), so the kernel, "
    "which runs as you, could not use it: ask for access to it, or mount another folder."
)
SSH_UNREACHABLE = (
    "Cannot reach the Docker host {host} over SSH ({reason}): check that `ssh {host} docker version` "
    "works without a prompt (a key in ssh-agent or ~/.ssh, the host in ~/.ssh/known_hosts)."
)
TLS_FILES_MISSING = (
    "The Docker host {host} is reached over TLS, which needs the CA, a client certificate and "
    "its key: install with --tls-ca, --tls-cert and --tls-key, or reach the host with ssh://."
)
TLS_FILE_UNREADABLE = (
    "Cannot read the TLS file '{path}' for the Docker host {host} ({reason}): give a file "
    "that this user can read."
)
TLS_NEEDS_CURVE = (
    "The kernel's channels to {host} would cross the network unencrypted: the ipykernel of "
    "image '{image}' ({version}) has no CurveZMQ (ipykernel 7.3 or later does); use an image "
    "with a newer ipykernel, or reach the host with ssh://, which carries the channels over SSH."
)
FOLDER_NOT_ON_HOST = (
    "The folder '{path}' is not on the Docker host {host}: put it on storage that the host "
    "shares at the same path, or map it to where the host has it with path_map "
    "(`dockerkernel install --path-map LOCAL=REMOTE`)."
)
TLS_KERNELSPEC_NEEDS_CURVE = (
    "Kernelspec '{kernel}' runs on {host}, whose kernel channels must be encrypted, but it does "
    "not declare CurveZMQ support: install it again with `dockerkernel install --host {host} ...`, "
    "which checks the image, or reach the host with ssh://."
)
INVALID_PATH_MAP = "Invalid --path-map '{value}': write it as LOCAL=REMOTE, two absolute paths."
LAUNCHER_ON_TCP = (
    "Kernelspec '{kernel}' runs on {host}, which this client cannot reach: it starts the "
    "kernelspec's argv and ignores its provisioner. Use a Jupyter server, JupyterLab or nbclient, "
    "or reach the host with ssh://."
)
NOT_A_SWARM_MANAGER = (
    "The Docker host is not a Swarm manager ({reason}): set docker_host to a manager of the "
    "swarm, or install the kernel without --swarm."
)
SWARM_NOT_PLACED = (
    "The swarm did not place the kernel within {timeout} s (it says: {reason}): free GPUs or "
    "memory on a node, relax the kernelspec's constraints, or ask for less."
)
SWARM_TASK_FAILED = (
    "The swarm could not start the kernel of image '{image}' ({reason}): check that every node "
    "that may run it has the image, or can pull it, and the kernel's folders."
)
WARM_POOL_WITH_GPUS = (
    "Kernel '{kernel}' asks for GPUs (gpus {gpus}) and a warm pool of {size}: pooled kernels would "
    "hold GPUs that nobody uses, so GPU kernels are never pooled; drop the warm pool, or the GPUs."
)
SWARM_SETTING_REFUSED = (
    "Kernel '{kernel}' sets {setting} to {value}, which a Docker Swarm service cannot honour: "
    "on a swarm, {setting} can be {instead}; change it, or run the kernel on one engine (without --swarm)."
)
WARM_POOL_NOT_LOCAL = (
    "Kernel '{kernel}' has a warm pool of {size} on {where}: the warm pool works with this "
    "machine's Docker engine only; drop the warm pool, or run the kernel on this machine."
)

# dockerkernel run
RUN_UNKNOWN_KERNEL = (
    "There is no dockerkernel kernelspec named '{kernel}' (installed: {installed}): give one of "
    "those to -k, or install it with `dockerkernel install`."
)
RUN_NO_KERNELS = (
    "No kernel to run on: name one or more installed kernelspecs with -k (see `dockerkernel list`), "
    "or give --reproduce an executed notebook."
)
NOTEBOOK_MISSING = "Notebook '{path}' does not exist: check its path."
NOTEBOOK_INVALID = (
    "'{path}' is not a notebook that can be run ({reason}): open and save it in Jupyter, or "
    "check that it is the .ipynb file you meant."
)
RUN_SAME_STEM = (
    "Notebooks '{first}' and '{second}' have the same name, so their results would overwrite each "
    "other in one output folder: run them one at a time, or give each its own -o."
)
PARAMETERS_UNREADABLE = (
    "The parameters file '{path}' cannot be used ({reason}): give -f a YAML file of names and "
    "values, such as `alpha: 0.5`."
)
PARAMETER_NAME = (
    "'{name}' cannot be a parameter's name: give -p a Python identifier and a value, such as `-p alpha 0.5`."
)
OUTPUT_UNWRITABLE = (
    "The output folder '{path}' cannot be written ({reason}): give -o a folder that you can write."
)
NO_PROVENANCE = (
    "'{path}' has no record of the image it ran on (metadata.dockerkernel): --reproduce needs a "
    "notebook executed by a dockerkernel kernel; run it with -k KERNEL instead."
)
REPRODUCE_IMAGE_GONE = (
    "The image that '{path}' ran on, {image}, is not on the Docker host and cannot be pulled "
    "({reason}): {fix}"
)

# Pinned images
PIN_NEEDS_IMAGE = (
    "Image '{image}' is not on the Docker host, so there is nothing to pin: pull or build it first "
    "(`dockerkernel pull {image}`)."
)
PINNED_IMAGE_GONE = (
    "Kernel '{kernel}' is pinned to image {image}, which was built on the Docker host, is no longer "
    "there and cannot be pulled: rebuild it and pin the new one with `dockerkernel pin {kernel}`, or "
    "run the tag's image with `dockerkernel unpin {kernel}`."
)
REPRODUCE_ALONE = (
    "--reproduce runs one executed notebook on the image it names, without -k or other notebooks: "
    "give it alone, or run notebooks on kernels with -k."
)

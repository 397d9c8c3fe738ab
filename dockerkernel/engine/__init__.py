"""The Docker engine layer: synchronous calls over the Docker SDK, one module per concern.

- connect: clients (local, rootless, TLS, ssh), errors a user can act on, each engine's state;
- kind: Docker or Podman, rootless, SELinux, on this machine;
- images: presence, pins, pulls, an image's accounts;
- containers: the plan as Docker's create arguments, create, list, signal, remove;
- exits: a container's exit, from the engine's events;
- homes: home volumes; networks: each user's isolated network;
- gpus: the GPUs an engine gives, who holds which, the lock on choosing them;
- owners: the process a container belongs to.

Every function takes its client as an argument. Nothing here plans: a plan
comes in finished (see launch.py), and is translated in containers.create_args.
"""

"""Where computation runs: ``distributed`` (JAX devices and hosts: placement of seeds and
envs on a device mesh, multi-process initialisation) and ``ray_cluster`` (connecting to a Ray
cluster for sweeps and environment workers). Imports nothing of teamrl but the config, so the
env edge and the trainers can both use it."""

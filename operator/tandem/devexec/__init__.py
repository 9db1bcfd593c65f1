"""A local executor for the dev cluster: pods bound to its nodes run as local processes.

This is a development and test harness, not a kubelet. It exists so the end-to-end test and the demo can
prove the whole path (a TrainingJob really trains, an InferenceService really serves) on one machine without
Docker. It registers its own Node objects (not kwok nodes, so kwok leaves them and their pods alone), and
for every pod the scheduler binds to them it runs each container's command in the project's Python
environment, with the pod's env, volumes mapped to local directories, a loopback address as pod IP, probes
driving readiness, and pod status written back. What it does not do (images, isolation, cgroups, init
containers, networking beyond loopback) is listed in docs/executor.md.
"""

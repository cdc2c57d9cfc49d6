"""The learning core: the pieces every algorithm is built from, with no knowledge of any one
algorithm. ``nets`` (actor and critic networks, agent-stacked), ``policies`` (action
distributions), ``rollout`` (collecting a batch from compiled or host envs, evaluation
episodes), ``advantages`` (GAE, value normalisation), ``trust_region`` (conjugate gradient and
line search), ``replay`` (replay buffers for the off-policy algorithms)."""

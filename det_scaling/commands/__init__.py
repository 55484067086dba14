"""The work behind each command (train, plan, diff, lr-plot, lr-find, noise-scale, pretrain, env);
their arguments are in :mod:`det_scaling.cli`."""

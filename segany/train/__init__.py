"""The SAM paper's training recipe: data, simulated prompts, losses, optimiser and the training loop.

Entry points: :func:`segany.train.loop.train` and the ``segany train`` command.
"""

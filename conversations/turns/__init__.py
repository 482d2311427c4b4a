"""The turn machine: a turn's state in the database (``state``), waking a session's queue
(``wakeup``), playing one turn (``runner``), running a session's queue (``scheduler``) and the pure
transcript helpers they share (``context``).

Import order, lowest first (no module imports one above it): context, wakeup, state, runner,
scheduler (``delegation``, agent runs, sits between state and runner). ``wakeup`` starts a queue through the callables ``ConversationsConfig.ready()``
registers, so ``state`` and ``delegation`` can schedule work without importing the loop.
"""

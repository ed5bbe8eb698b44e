"""The ``herd`` command: ``serve``, ``api``, ``worker`` and the ``ollama`` CLI's client verbs.

It sits above ``api/`` and ``worker/`` (it starts them); neither imports it.
"""

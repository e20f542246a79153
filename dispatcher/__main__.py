"""``python -m dispatcher …``: the ``dispatcher`` command, where its script is not on the PATH
(``manage.py dispatcher_worker`` starts it this way)."""

from dispatcher.entry import main

main()

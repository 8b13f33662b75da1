"""The benchmark: what the daemon costs on top of the vendor, measured side by side.

``python -m bench`` (see ``python -m bench --help``) runs the daemon as its own process (``python -m
asr_daemon run``), so that its CPU and memory are its own, the vendor emulators in a second process and every
client in a third (``workers.py``); the first one measures and writes the report. For each concurrency level
it runs N Wyoming clients streaming real speech at real-time pace through the daemon, and at the same time N
clients speaking each vendor's protocol directly to the same emulators (the vendor's codec over
``VendorStream``, no session): the difference is what the daemon adds. It writes ``RESULTS.md``,
``results.json`` and PNG plots into ``bench/`` (or ``--out``).
"""

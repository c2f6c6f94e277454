"""The demo of ``make demo``: the support-ticket workflow over sample tickets, under
injected faults (``python -m tasks.demo --help``). See :mod:`tasks.demo.run`."""

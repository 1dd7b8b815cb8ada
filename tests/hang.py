"""The time bound of the tests that feed hostile input (alias bombs, huge integers, long scans).

A liveness limit, not a speed measurement (speed is measured by bench/, never in tests): before
sparseforge's limits existed these inputs ran for 30 s to hours; with them they take milliseconds.
The bound sits far above what a loaded 2-core CI machine needs, so it fails only when a limit is
gone, never because the machine is busy.
"""

HANG_SECONDS = 10.0
